"""Hyper-parameter tuning per dataset with Optuna (docs/tuning.md).

A study trains `options.trials` configurations of one job (a teacher, or a student of one
method; the searched fields are in training.tuning_space) and keeps the model of the best.
Selection uses the validation split only; the test split only reports.

- Sampler: TPE (`TPESampler`, constant liar so that trials running in parallel on several
  workers do not all sample the same point). The first trial is the job's own
  configuration (enqueued), so tuning never keeps something worse on validation than
  the defaults; a method with a second default (tuning_space.SECOND_GUESSES: UnKD) tries
  it next.
- Objective: validation NDCG@20 of the trial's kept (best-epoch) model.
- Pruning: the trainer's per-epoch validation NDCG@20 reaches the trial through the
  `on_progress` callback (`trial.report`); a trial the `MedianPruner` judges behind is
  stopped by raising `optuna.TrialPruned` from that callback.
- Constraint (students): validation head share@20 at most the teacher's, set with Optuna's
  `Trial.set_constraint`, which TPE (c-TPE) and `select_best` honour: the best feasible
  trial is kept; when no trial is feasible, the least violating one, and the report says so.

The storage is a parameter (`make_storage`): in memory for one process, a journal file,
or a journal in Redis, which lets the trials of one study run in many processes. Trial
models go to `work_dir/trial-<n>`; `keep_best` writes the chosen one, with the trials in
its report's `tuning` section. Imports nothing of service or worker.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.samplers import TPESampler
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from training.checkpoint import ModelArtifact
from training.config import EvalConfig, TuneOptions
from training.dataset import Dataset
from training.defaults import density_decay, resolve
from training.errors import TrainingDivergedError
from training.evaluation import evaluate_scorer
from training.manifest import TrialRecord, TuningSummary
from training.progress import ProgressCallback, ProgressEvent, ShouldStop
from training.teachers.fit import load_scorer
from training.tuning_space import Config, TuningError, given_params, second_guesses, suggest

logger = logging.getLogger(__name__)

K = 20
VALID_KEY = f"valid_ndcg@{K}"  # the trainer's per-epoch figure, reported for pruning
OBJECTIVE = f"valid ndcg@{K}"
HEAD_CONSTRAINT = f"valid_head_share@{K}"

# (configuration, model directory, on_progress, should_stop) -> the saved model
TrainFn = Callable[[Config, Path, ProgressCallback, ShouldStop | None], ModelArtifact]


# -- the study -----------------------------------------------------------------------------


@dataclass
class StudySetup:
    """What every trial of one study shares.

    Args:
        train: trains one configuration into a directory (training.pipelines, bound to
            the dataset, the teacher and the device by the caller).
        work_dir: where trial models go (trial-<n>); removed by the caller at the end.
        teacher_head_share: a student's bound, its teacher's validation head share@20.
        pruner: overrides the default MedianPruner (tests).
    """

    dataset: Dataset
    base: Config
    options: TuneOptions
    train: TrainFn
    work_dir: Path
    teacher_head_share: float | None = None
    groups: int = 4
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    pruner: BasePruner | None = None

    def __post_init__(self) -> None:
        # "auto" fields as numbers: the first trial is the job's own configuration.
        self.base = resolve(self.base, self.dataset.csr("train"))

    def default_pruner(self) -> BasePruner:
        if not self.options.prune:
            return NopPruner()
        # Pruning starts once two trials have finished, and only past the first fifth of the
        # epoch budget: a slow starter (a low lr) is not cut before it had a chance.
        warmup = max(2, min(10, self.base.epochs // 5))
        return MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)


def make_storage(url: str | None, *, prefix: str = "") -> BaseStorage:
    """An Optuna storage: in memory (None), a journal in Redis (redis://, rediss://,
    unix://; keys under `prefix`), or a journal file (any other string: a path)."""
    if not url:
        return InMemoryStorage()
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if url.startswith(("redis://", "rediss://", "unix://")):
            return JournalStorage(JournalRedisBackend(url, prefix=prefix))
        return JournalStorage(JournalFileBackend(url))


def open_study(
    setup: StudySetup, storage: BaseStorage, name: str, *, create: bool = True, seed_offset: int = 0
) -> optuna.Study:
    """Create (or load) the study. Creating enqueues the job's own configuration as trial 0.

    Args:
        seed_offset: added to the sampler seed, so processes sharing one study do not draw
            the same random startup points.
    """
    n_startup = max(2, min(10, setup.options.trials // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = TPESampler(
            seed=setup.options.seed + seed_offset, n_startup_trials=n_startup, constant_liar=True
        )
    pruner = setup.pruner or setup.default_pruner()
    if not create:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(
            given_params(setup.base), user_attrs={"note": "the job's own configuration"}
        )
        auto_decay = density_decay(setup.dataset.csr("train"))
        for params in second_guesses(setup.base, auto_decay):
            study.enqueue_trial(params, user_attrs={"note": "the method's second default"})
    return study


def finished(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count towards the study's budget: completed or pruned."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def max_trials(options: TuneOptions) -> int:
    """Trials a study may create at most, failed ones included, before it gives up."""
    return 2 * options.trials + 3


# -- one trial -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidFigures:
    ndcg: float  # NDCG@20 on the validation split
    head_share: float  # share of top-20 slots given to the head popularity group


def validation_figures(
    dataset: Dataset,
    artifact: ModelArtifact,
    *,
    groups: int = 4,
    device: torch.device | None = None,
) -> ValidFigures:
    """NDCG@20 and head share@20 of any model (embeddings or EASE) on the validation split,
    training items excluded: the figures the study selects on."""
    scorer = load_scorer(artifact, dataset.csr("train"), device or torch.device("cpu"))
    report = evaluate_scorer(dataset, scorer, cfg=EvalConfig(ks=(K,), groups=groups), split="valid")
    metrics = report["metrics"]
    return ValidFigures(float(metrics[f"ndcg@{K}"]), float(metrics[f"head_share@{K}"]))


def trial_dir(setup: StudySetup, number: int) -> Path:
    return setup.work_dir / f"trial-{number}"


def _taken(study: optuna.Study, trial: Trial) -> FrozenTrial | None:
    """The trial, when another process finished it meanwhile (failed it as stale)."""
    frozen = study.get_trials(deepcopy=False)[trial.number]
    return frozen if frozen.state.is_finished() else None


def run_trial(
    study: optuna.Study,
    trial: Trial,
    setup: StudySetup,
    *,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> FrozenTrial:
    """Train the configuration `trial` samples, measure it on validation, tell the study.

    A pruned trial ends PRUNED and a diverged one FAIL; any other error (a cancelled job,
    a bug) fails the trial and propagates.
    """
    cfg = suggest(trial, setup.base)
    out = trial_dir(setup, trial.number)
    t0 = time.perf_counter()
    last_epoch = 0

    def progress(event: ProgressEvent) -> None:
        nonlocal last_epoch
        if on_progress is not None:
            on_progress(event)
        value = event.metrics.get(VALID_KEY)
        if event.stage != "train" or not event.epoch or value is None or not math.isfinite(value):
            return
        last_epoch = event.epoch
        trial.report(value, event.epoch)
        # Never on the last epoch: the model is trained by then (ALS and EASE report only there).
        if event.epoch < event.epochs and trial.should_prune():
            raise optuna.TrialPruned(
                f"{VALID_KEY} {value:.4f} behind the median at epoch {event.epoch}"
            )

    def attrs(**values: Any) -> None:
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        for key, value in values.items():
            trial.set_user_attr(key, value)

    try:
        artifact = setup.train(cfg, out, progress, should_stop)
    except optuna.TrialPruned as exc:
        if (taken := _taken(study, trial)) is not None:
            return taken
        attrs(epochs=last_epoch, note=str(exc))
        logger.info("trial %d pruned: %s", trial.number, exc)
        return study.tell(trial, state=TrialState.PRUNED)
    except TrainingDivergedError as exc:
        if (taken := _taken(study, trial)) is not None:
            return taken
        attrs(epochs=last_epoch, note=f"diverged: {exc}")
        logger.warning("trial %d diverged: %s", trial.number, exc)
        return study.tell(trial, state=TrialState.FAIL)
    except BaseException as exc:
        if _taken(study, trial) is None:
            attrs(epochs=last_epoch, note=f"stopped: {type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)  # lost: failed already
        raise
    figures = validation_figures(setup.dataset, artifact, groups=setup.groups, device=setup.device)
    if (taken := _taken(study, trial)) is not None:
        shutil.rmtree(out, ignore_errors=True)
        return taken
    training = artifact.manifest.training
    # A student that met its cap in its own job carries both figures of the one measure the
    # job, its status and the publish gate read (training.calibration): the constraint is its.
    capped = training.head_share_cap if training is not None else None
    head = capped.student if capped is not None else figures.head_share
    bound = capped.teacher if capped is not None else setup.teacher_head_share
    attrs(
        valid_ndcg=figures.ndcg,
        valid_head_share=head,
        epochs=training.epochs_run if training is not None else last_epoch,
    )
    if bound is not None and setup.teacher_head_share is not None:
        trial.set_constraint(HEAD_CONSTRAINT, head - bound)
    frozen = study.tell(trial, figures.ndcg)
    logger.info(
        "trial %d: %s %.4f, head share %.4f (%s)",
        frozen.number,
        OBJECTIVE,
        figures.ndcg,
        figures.head_share,
        frozen.params,
    )
    best = select_best(study.get_trials(deepcopy=False))
    if best is not None and best.number != frozen.number:
        shutil.rmtree(out, ignore_errors=True)  # never the best again: the order is fixed
    return frozen


def retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Enqueue the configuration of a trial that was lost (its worker died or stopped), once:
    a configuration that kills its worker twice is not tried a third time, and a trial
    already retried (by another process that found it stale) is not enqueued again."""
    params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params") or {})
    if "retry_of" in trial.user_attrs or not params:
        return False
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    note = f"retry of trial {trial.number}: {reason}"
    study.enqueue_trial(params, user_attrs={"retry_of": trial.number, "note": note})
    return True


# -- choosing and keeping ------------------------------------------------------------------


def violation(trial: FrozenTrial) -> float:
    """How far a trial is outside its constraints (0: feasible or unconstrained)."""
    return float(sum(v for v in trial.constraints.values() if v > 0))


def select_best(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The completed trial with the highest validation NDCG among the feasible ones; with
    none feasible, the least violating. Ties go to the earlier trial. None: none completed."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None

    def key(t: FrozenTrial) -> tuple[bool, float, int]:
        v = violation(t)
        return (v <= 0, float(t.value or 0.0) if v <= 0 else -v, -t.number)

    return max(done, key=key)


_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "fail",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def _figure(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def trial_record(t: FrozenTrial, constrained: bool) -> TrialRecord:
    attrs = t.user_attrs
    head = _figure(attrs.get("valid_head_share"))
    return TrialRecord(
        number=t.number,
        state=_STATES[t.state],  # type: ignore[arg-type]
        params={k: v for k, v in t.params.items() if isinstance(v, int | float | str | bool)},
        valid_ndcg=_figure(
            attrs.get("valid_ndcg", t.value if t.state == TrialState.PRUNED else None)
        ),
        valid_head_share=head,
        feasible=(violation(t) <= 0) if constrained and head is not None else None,
        epochs=attrs.get("epochs"),
        seconds=_figure(attrs.get("seconds")),
        # A trial failed by another process (found stale) has no note of its own.
        note=attrs.get("note") or ("its worker was lost" if t.state == TrialState.FAIL else None),
    )


def summarize(
    study: optuna.Study, setup: StudySetup, best: FrozenTrial, seconds: float | None = None
) -> TuningSummary:
    """The report's `tuning` section: every trial, the chosen one, how it was chosen."""
    bound = setup.teacher_head_share
    pruner = study.pruner
    return TuningSummary(
        objective=OBJECTIVE,
        constraint=None if bound is None else f"valid head_share@{K} <= teacher's {bound:.4f}",
        teacher_valid_head_share=bound,
        trials_requested=setup.options.trials,
        best_trial=best.number,
        best_feasible=violation(best) <= 0,
        sampler=f"TPE (seed {setup.options.seed}, constant liar)",
        pruner=None if isinstance(pruner, NopPruner) else type(pruner).__name__,
        seconds=None if seconds is None else round(seconds, 3),
        trials=[
            trial_record(t, bound is not None)
            for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.WAITING
        ],  # enqueued retries never run
    )


def keep_best(
    setup: StudySetup,
    study: optuna.Study,
    out_dir: Path,
    *,
    model_id: str | None = None,
    seconds: float | None = None,
) -> ModelArtifact:
    """Write the best trial's model to `out_dir` (atomically), its report carrying the trials."""
    best = select_best(study.get_trials(deepcopy=False))
    if best is None:
        raise TuningError(
            f"no trial of {len(study.get_trials(deepcopy=False))} completed; "
            "see the trials' notes (diverged? lower the learning rate range)"
        )
    artifact = ModelArtifact.load(trial_dir(setup, best.number))
    if artifact.report is None:
        raise TuningError(f"trial {best.number}'s model has no report")
    summary = summarize(study, setup, best, seconds)
    kept = dataclasses.replace(
        artifact,
        manifest=artifact.manifest.model_copy(update={"id": model_id or Path(out_dir).name}),
        report=artifact.report.model_copy(update={"tuning": summary}),
    )
    kept.save(Path(out_dir))
    return kept


def tune(
    setup: StudySetup,
    out_dir: Path,
    *,
    storage: BaseStorage | None = None,
    study_name: str = "unkd-tune",
    model_id: str | None = None,
    on_trial: Callable[[FrozenTrial, int], None] | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> ModelArtifact:
    """Run the whole study in this process (the offline CLI), then keep the best model.

    Args:
        on_trial: called after each trial with it and the number of finished trials.
    """
    t0 = time.perf_counter()
    study = open_study(setup, storage or InMemoryStorage(), study_name)
    try:
        while (n := finished(trials := study.get_trials(deepcopy=False))) < setup.options.trials:
            if len(trials) >= max_trials(setup.options):
                raise TuningError(f"{len(trials)} trials created, only {n} finished: giving up")
            frozen = run_trial(
                study, study.ask(), setup, on_progress=on_progress, should_stop=should_stop
            )
            if on_trial is not None:
                on_trial(frozen, finished(study.get_trials(deepcopy=False)))
        return keep_best(setup, study, out_dir, model_id=model_id, seconds=time.perf_counter() - t0)
    finally:
        shutil.rmtree(setup.work_dir, ignore_errors=True)
