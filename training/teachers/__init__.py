"""Teachers: mf and lightgcn (BPR, training.models + training.trainer), als (implicit's
AlternatingLeastSquares) and ease (closed form). Fitting any of them gives a `FittedModel`;
using one (distillation, evaluation) goes through training.scoring's TeacherScorer only.

implicit is imported when an ALS teacher is fitted, never by importing this package.
"""

from training.teachers.fit import FittedModel, fit_teacher, load_scorer, summary_of

__all__ = ["FittedModel", "fit_teacher", "load_scorer", "summary_of"]
