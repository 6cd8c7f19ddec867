"""Hyper-parameters. Sent in job payloads, validated at the API edge and again in the
task, and written into every model manifest so a model can be rebuilt without its job.

Defaults work on a new dataset without tuning; they come from `bench/quality.py`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ModelName = Literal["mf", "lightgcn"]  # embedding models: what a student is (and served)
TeacherModelName = Literal["mf", "lightgcn", "als", "ease"]  # training.teachers
TEACHER_MODELS: tuple[str, ...] = ("mf", "lightgcn", "als", "ease")
MethodName = Literal["none", "rd", "cd", "rrd", "unkd"]
METHODS: tuple[str, ...] = ("none", "rd", "cd", "rrd", "unkd")


# The L2 rule for BPR students (docs/quality.md): the validation optimum of the plain
# student's decay was 0.03 on MovieLens-100K (density 6.3 %), 0.03-0.05 on the synthetic data
# (2.6 %) and 0.1 on Amazon-Beauty (0.07 %): 0.015 x density^(-1/4) fits all three.
DECAY_AT_DENSITY_1 = 0.015


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimConfig(_Strict):
    """What every training run shares: optimiser, schedule, early stopping."""

    lr: float = Field(0.005, gt=0, le=1.0, description="Adam learning rate")
    decay: Annotated[float, Field(ge=0, le=1.0)] | Literal["auto"] = Field(
        0.01,
        description="L2 weight on the batch's embeddings; auto: "
        f"{DECAY_AT_DENSITY_1} x density^(-1/4) of the training split (training.defaults)",
    )
    batch_size: int = Field(4096, ge=16, le=1_000_000)
    epochs: int = Field(400, ge=1, le=10_000, description="upper bound; early stopping ends sooner")
    patience: int = Field(4, ge=1, le=1000, description="validation checks without improvement")
    eval_every: int = Field(5, ge=1, le=1000, description="epochs between validation checks")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ALSOptions(_Strict):
    """implicit's AlternatingLeastSquares. Defaults: the best worst case over ML-100K and
    Amazon-Beauty of validation NDCG@20 relative to each dataset's best, at dim 100
    (0.957 and 1.0; implicit's own 0.01 / 1.0 reach 0.75 and 0.64). docs/teachers.md."""

    regularization: float = Field(100.0, ge=0, le=100_000, description="L2 weight on the factors")
    alpha: float = Field(
        40.0,
        gt=0,
        le=100_000,
        description="confidence of an observed interaction; unobserved ones weigh 1",
    )
    iterations: int = Field(15, ge=1, le=1000, description="alternating least-squares sweeps")


class EASEOptions(_Strict):
    """EASE (Steck, WWW 2019), closed form: B = I - P diag(1/diag P), P = (XᵀX + λI)⁻¹.
    λ = 200 is within 1.2 % of the best validation NDCG@20 on ML-100K and Amazon-Beauty."""

    l2: float = Field(200.0, gt=0, le=1e8, description="λ, the L2 weight on B")


class TeacherConfig(OptimConfig):
    """A teacher. mf and lightgcn train with BPR (the OptimConfig fields); als and ease use
    their own options (`als`, `ease`) and ignore the optimiser's; `dim` is the embedding
    size of mf, lightgcn and als (EASE has no embeddings).

    The default model is EASE, the best teacher of bench/quality.py on the dense, the sparse
    and the synthetic data alike; where EASE does not fit (more than EASE_MAX_ITEMS items, or
    over the memory budget) a job that leaves `model` unset gets ALS
    (training.defaults.default_teacher_model, applied by the API and the CLI)."""

    model: TeacherModelName = "ease"
    dim: int = Field(100, ge=1, le=4096)
    n_layers: int = Field(3, ge=1, le=8, description="LightGCN propagation layers")
    als: ALSOptions = Field(default_factory=ALSOptions)
    ease: EASEOptions = Field(default_factory=EASEOptions)


class UnKDOptions(_Strict):
    groups: int = Field(4, ge=1, le=100, description="popularity groups G")
    pairs_per_user: Annotated[int, Field(ge=1, le=10_000)] | Literal["auto"] = Field(
        "auto",
        description="pairs per user per epoch, N; auto: min(30, 2 x the training interactions "
        "per user), at least one per group (training.defaults: an epoch's distillation pairs "
        "at most twice its training pairs)",
    )
    mu: float = Field(20.0, gt=0, description="rank-sampling temperature: P(r) ∝ exp(-r/mu)")
    top_l: int = Field(
        1000,
        ge=2,
        le=100_000,
        description="teacher candidates kept per (user, group), at most: the lists stop "
        "where the rank sampler's chance of reaching further is under 1e-6 (about 14 mu)",
    )

    @property
    def list_length(self) -> int:
        """The candidates ranked per (user, group): top_l, or fewer where P(r) ∝ exp(-r/mu)
        would draw a rank past them with probability under UNKD_RANK_TAIL (mu 20: 277, not
        1000). The law of the drawn ranks moves by at most that much, and the ranking, its
        sorts and the lists' memory shrink in proportion."""
        return min(self.top_l, math.ceil(self.mu * math.log(1.0 / UNKD_RANK_TAIL)))


# The mass of the rank law a UnKD list may leave out: P(r >= L) = exp(-L/mu) < this.
UNKD_RANK_TAIL = 1e-6


class RDOptions(_Strict):
    top_k: int = Field(
        10, ge=1, le=1000, description="teacher top-K unobserved items used as positives"
    )
    rank_lambda: float = Field(5.0, gt=0, description="rank weight w_r ∝ exp(-r/rank_lambda)")


class CDOptions(_Strict):
    samples: int = Field(10, ge=1, le=1000, description="items sampled per user per epoch")
    rank_lambda: float = Field(20.0, gt=0, description="sampling P(r) ∝ exp(-r/rank_lambda)")
    temperature: float = Field(1.0, gt=0, description="soft label sigmoid(t / T)")
    top_l: int = Field(1000, ge=2, le=100_000, description="teacher ranks the sampler can reach")


class RRDOptions(_Strict):
    interesting: int = Field(10, ge=1, le=1000, description="K items from the teacher's top ranks")
    uninteresting: int = Field(40, ge=1, le=10_000, description="L items from below the top ranks")
    top_l: int = Field(100, ge=2, le=100_000, description="the 'top ranks' K items are drawn from")
    rank_lambda: float = Field(
        10.0, gt=0, description="sampling P(r) ∝ exp(-r/rank_lambda) in top_l"
    )


# Per-method defaults (docs/quality.md). Every distillation method starts its MF student
# from ALS factors of the student's size and trains it on with a small learning rate: the
# distillation term then moves an accurate but popularity-biased start (ALS-10 gives the head
# group 98 % of the slots on Amazon-Beauty) towards the teacher's ranking. A distillation
# term already regularises, so UnKD and RRD take little weight decay. UnKD's epoch is chosen
# under its teacher's validation head share: a student that exposes the head group more than
# its teacher is what UnKD exists to avoid.
METHOD_DEFAULTS: dict[str, dict[str, float | str]] = {
    "rd": {"lr": 0.001, "warm_start": "als"},
    "cd": {"lr": 0.001, "warm_start": "als"},
    "rrd": {"lr": 0.001, "decay": 0.003, "warm_start": "als"},
    "unkd": {
        "lr": 0.001,
        "decay": 0.001,
        "lambda_kd": 1.0,
        "warm_start": "als",
        "head_share_cap": "teacher",
    },
}


class DistillConfig(OptimConfig):
    """A student. Fields left unset take their method's METHOD_DEFAULTS; `decay` defaults to
    the density rule (auto) and `warm_start` applies to MF students only."""

    lr: float = Field(0.01, gt=0, le=1.0, description="Adam learning rate")
    decay: Annotated[float, Field(ge=0, le=1.0)] | Literal["auto"] = Field(
        "auto",
        description="L2 weight on the batch's embeddings; auto: "
        f"{DECAY_AT_DENSITY_1} x density^(-1/4) of the training split (training.defaults)",
    )
    method: MethodName = "unkd"
    student_model: ModelName = "mf"
    dim: int = Field(10, ge=1, le=4096)
    n_layers: int = Field(3, ge=1, le=8)
    lambda_kd: float = Field(1.0, ge=0, le=1000, description="weight of the distillation loss")
    warm_start: Literal["none", "als"] = Field(
        "none",
        description="als: start an MF student from ALS factors of its own size, fitted on "
        "the training split (docs/quality.md: keeps ALS-10's accuracy while UnKD lowers its head share)",
    )
    head_share_cap: Literal["none", "teacher"] = Field(
        "none",
        description="teacher: keep the best validation epoch among those whose validation "
        "head share@20 is at most the teacher's",
    )
    cap_rule: Literal["shift", "select"] = Field(
        "shift",
        description="how a head_share_cap is met. shift: after training, lower the head "
        "group's scores by the smallest shift that puts the validation head share@20 "
        "a margin under the teacher's (training.calibration; one more embedding column); "
        "select: keep the best epoch under the cap, or the best overall if none is (may miss it)",
    )
    unkd: UnKDOptions = Field(default_factory=UnKDOptions)
    rd: RDOptions = Field(default_factory=RDOptions)
    cd: CDOptions = Field(default_factory=CDOptions)
    rrd: RRDOptions = Field(default_factory=RRDOptions)

    @model_validator(mode="after")
    def _method_defaults(self) -> DistillConfig:
        """Apply METHOD_DEFAULTS to the fields the caller left unset; explicit values win.
        A LightGCN student has no factors to start from ALS with: it keeps the random start
        and the learning rate that goes with it."""
        for name, value in METHOD_DEFAULTS.get(self.method, {}).items():
            if name in ("warm_start", "lr") and self.student_model != "mf":
                continue
            if name not in self.model_fields_set:
                setattr(self, name, value)
        return self


class EvalConfig(_Strict):
    ks: tuple[int, ...] = (10, 20, 50)
    groups: int = Field(4, ge=1, le=100)
    ips_gamma: float = Field(0.5, ge=0, le=1)
    head_mass: float = Field(0.8, gt=0, lt=1, description="short-head share for APLT/ACLT")
    user_chunk: int = Field(1024, ge=1)


MAX_TRIALS = 200


class TuneOptions(_Strict):
    """Tune a job's hyper-parameters on the validation split (training.tuning, docs/tuning.md):
    `trials` configurations are trained and the best by validation NDCG@20 is kept (for a
    student: among those whose validation head share is at most its teacher's)."""

    trials: int = Field(
        ge=1, le=MAX_TRIALS, description="configurations to train to the end or to pruning"
    )
    prune: bool = Field(
        True,
        description="stop a trial whose validation NDCG trails the median of earlier trials at the same epoch",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the TPE sampler")
