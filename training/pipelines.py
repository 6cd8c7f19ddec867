"""The three jobs of the training core, used by the CLI and by the Celery tasks alike:
train a teacher, distil a student, evaluate a model. Each writes its model directory
atomically: a cancelled or failed job leaves nothing behind."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from training.calibration import Exposure, exposure, head_shifts
from training.checkpoint import ModelArtifact
from training.config import ALSOptions, DistillConfig, EvalConfig, TeacherConfig
from training.dataset import Dataset
from training.defaults import resolve
from training.distill import build_distiller
from training.distill.ranking import CANDIDATE_CACHE, candidates_key
from training.distill.shards import PrecomputedCandidates, candidate_options
from training.errors import ConfigError, JobCancelled
from training.evaluation import attach_teacher, evaluate_scorer
from training.manifest import (
    DatasetInfo,
    HeadShareCap,
    Lineage,
    QualityReport,
    TeacherInfo,
    build_manifest,
)
from training.models import build_model
from training.models.base import Ranker
from training.models.mf import MF
from training.process_cache import ProcessCache
from training.progress import ProgressCallback, ProgressEvent, ShouldStop
from training.scoring import EmbeddingScorer, TeacherScorer
from training.teachers import FittedModel, fit_teacher, load_scorer, summary_of
from training.teachers.als import ALSFit, fit_als
from training.trainer import FitResult, fit
from training.validation import VALID_K, scorer_validation

logger = logging.getLogger(__name__)


def _report(dataset: Dataset, scorer: TeacherScorer, cfg: EvalConfig) -> QualityReport:
    return QualityReport.model_validate(evaluate_scorer(dataset, scorer, cfg=cfg))


def _student_report(
    dataset: Dataset,
    student: TeacherScorer,
    teacher: ModelArtifact,
    cfg: EvalConfig,
    device: torch.device,
) -> QualityReport:
    """A student's report with its teacher's figures, the deltas and list overlap."""
    teacher_scorer = load_scorer(teacher, dataset.csr("train"), device)
    report = evaluate_scorer(dataset, student, cfg=cfg, reference=teacher_scorer)
    return with_teacher(dataset, report, teacher, cfg, device)


def with_teacher(
    dataset: Dataset,
    report: dict[str, object],
    teacher: ModelArtifact,
    cfg: EvalConfig,
    device: torch.device,
) -> QualityReport:
    """A student's report (training.evaluation's dict) with its teacher's figures attached."""
    teacher_report = teacher.report or _report(
        dataset, load_scorer(teacher, dataset.csr("train"), device), cfg
    )
    return QualityReport.model_validate(
        attach_teacher(report, teacher_report.model_dump(mode="json"))
    )


# A student's quality report computed elsewhere (worker/fanout.py: in shards of users):
# (dataset, user_emb, item_emb, teacher, eval config, device) -> the report.
StudentReportFn = Callable[
    [Dataset, np.ndarray, np.ndarray, ModelArtifact, EvalConfig, torch.device], QualityReport
]


def _emit(on_progress: ProgressCallback | None, stage: str, message: str = "") -> None:
    if on_progress is not None:
        on_progress(ProgressEvent(stage=stage, message=message))


def _save(
    cfg: TeacherConfig | DistillConfig,
    dataset: Dataset,
    fitted: FittedModel,
    report: QualityReport,
    out_dir: Path,
    *,
    device: torch.device,
    model_id: str | None,
    dataset_id: str | None,
    should_stop: ShouldStop | None,
    teacher: ModelArtifact | None = None,
) -> ModelArtifact:
    """Build the manifest of a teacher or a student, and save the model unless cancelled."""
    lineage, teacher_info = Lineage(dataset_id=dataset_id), None
    if teacher is not None:  # a student: where its teacher is, to compare against later
        tm = teacher.manifest
        lineage.teacher_id = tm.id
        teacher_info = TeacherInfo(
            model=tm.model, dim=tm.dim, path=str(teacher.path) if teacher.path else None
        )
    manifest = build_manifest(
        cfg,
        model_id=model_id or out_dir.name,
        dataset=DatasetInfo(name=dataset.name, fingerprint=dataset.fingerprint),
        lineage=lineage,
        training=fitted.training,
        device=str(device),
        created_at=datetime.now(timezone.utc).replace(microsecond=0),
        teacher=teacher_info,
        n_items=dataset.n_items,
    )
    artifact = ModelArtifact(
        fitted.user_emb, fitted.item_emb, manifest, report, item_item=fitted.item_item
    )
    if should_stop is not None and should_stop():  # cancelled during evaluation: write nothing
        raise JobCancelled("cancelled before the model was saved")
    artifact.save(out_dir)
    return artifact


def train_teacher(
    dataset: Dataset,
    cfg: TeacherConfig,
    out_dir: Path,
    *,
    device: torch.device,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    model_id: str | None = None,
    dataset_id: str | None = None,
    eval_cfg: EvalConfig | None = None,
) -> ModelArtifact:
    """Fit a teacher (mf, lightgcn, als or ease; training.teachers), evaluate it, and save
    it to `out_dir`.

    model_id and dataset_id are the registry's ids in the service (manifest id, lineage);
    offline the id is the directory's name and the dataset has none.

    Raises:
        EASETooLargeError: an ease teacher over more than EASE_MAX_ITEMS items (before any work).
    """
    out_dir = Path(out_dir)
    cfg = resolve(cfg, dataset.csr("train"))  # "auto" fields become the numbers used
    t0 = time.perf_counter()
    fitted = fit_teacher(
        dataset, cfg, device=device, on_progress=on_progress, should_stop=should_stop
    )
    train_s = time.perf_counter() - t0
    _emit(on_progress, "evaluate")
    report = _report(dataset, fitted.scorer(dataset.csr("train"), device), eval_cfg or EvalConfig())
    artifact = _save(
        cfg,
        dataset,
        fitted,
        report,
        out_dir,
        device=device,
        model_id=model_id,
        dataset_id=dataset_id,
        should_stop=should_stop,
    )
    logger.info("teacher %s saved to %s (%.1fs)", artifact.manifest.id, out_dir, train_s)
    return artifact


# The ALS fits a warm start chooses from, by validation NDCG@20: ALS's best regularization at
# a student's size differs by orders of magnitude between datasets (ALS-10 on MovieLens-100K:
# 0.01 and alpha 1 beat the teacher defaults 100 and 40 by 13 %; docs/quality.md).
WARM_START_GRID: tuple[tuple[float, float], ...] = (
    (0.01, 1.0),
    (0.01, 10.0),
    (1.0, 10.0),
    (100.0, 40.0),
)


# What every trial of a tuning study would otherwise recompute (same teacher, data, size and
# seed; only learning rates or λ differ): the chosen ALS warm start (4 ALS fits, about 6 s on
# Amazon-Beauty) and the teacher's head-group exposure (about 1.3 s). Two entries each: a
# study compares two sizes at most. set_embeddings copies, so the shared factors stay intact.
WARM_START_CACHE: ProcessCache[ALSFit] = ProcessCache(max_entries=2)
EXPOSURE_CACHE: ProcessCache[Exposure] = ProcessCache(max_entries=2)


def _data_key(dataset: Dataset, train: sp.csr_matrix) -> tuple[object, ...]:
    return (dataset.fingerprint, train.shape, train.nnz)


def _warm_start_from_als(
    student: Ranker,
    cfg: DistillConfig,
    dataset: Dataset,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    device: torch.device,
    on_progress: ProgressCallback | None,
    should_stop: ShouldStop | None,
) -> None:
    """Set an MF student's embeddings to the ALS factors of its size that do best on
    validation among WARM_START_GRID (cfg.seed; a few seconds per fit, once per process)."""
    if not isinstance(student, MF):
        raise ConfigError(f"warm_start='als' needs student_model='mf', not {cfg.student_model!r}")
    key = (*_data_key(dataset, train), cfg.dim, cfg.seed, str(device))
    best = WARM_START_CACHE.get_or_build(
        key, lambda: _best_als(cfg, train, valid, device, on_progress, should_stop)
    )
    student.set_embeddings(torch.from_numpy(best.user_emb), torch.from_numpy(best.item_emb))


def _best_als(
    cfg: DistillConfig,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    device: torch.device,
    on_progress: ProgressCallback | None,
    should_stop: ShouldStop | None,
) -> ALSFit:
    best = None
    for reg, alpha in WARM_START_GRID:
        _emit(
            on_progress,
            "warm_start",
            f"fitting ALS-{cfg.dim} (regularization {reg}, alpha {alpha})",
        )
        als_cfg = TeacherConfig(
            model="als", dim=cfg.dim, seed=cfg.seed, als=ALSOptions(regularization=reg, alpha=alpha)
        )
        fitted = fit_als(train, valid, als_cfg, device=device, should_stop=should_stop)
        if best is None or fitted.valid[f"ndcg@{VALID_K}"] > best.valid[f"ndcg@{VALID_K}"]:
            best = fitted
    assert best is not None
    logger.info(
        "warm start: ALS-%d with validation ndcg@%d %.4f",
        cfg.dim,
        VALID_K,
        best.valid[f"ndcg@{VALID_K}"],
    )
    return best


def _seed_candidates(
    pre: PrecomputedCandidates, cfg: DistillConfig, train: sp.csr_matrix, cache_key: str
) -> None:
    """Put precomputed lists where the distiller's prepare() finds them: the process's
    candidate cache, under the key it will ask for."""
    want = candidate_options(cfg, train)
    got = pre.options
    if (
        want is None
        or (want.top_l, want.with_scores) != (got.top_l, got.with_scores)
        or not np.array_equal(want.groups, got.groups)
    ):
        raise ValueError(
            f"precomputed candidate lists (top_l={got.top_l}) are not the lists "
            f"method={cfg.method!r} ranks"
        )
    key = candidates_key(cache_key, train, got.groups, got.top_l, got.with_scores)
    CANDIDATE_CACHE.clear()
    CANDIDATE_CACHE.get_or_build(key, lambda: pre.lists)


def distill_student(
    dataset: Dataset,
    teacher: ModelArtifact | Path,
    cfg: DistillConfig,
    out_dir: Path,
    *,
    device: torch.device,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    model_id: str | None = None,
    dataset_id: str | None = None,
    eval_cfg: EvalConfig | None = None,
    candidates: PrecomputedCandidates | None = None,
    student_report: StudentReportFn | None = None,
) -> ModelArtifact:
    """Distil `teacher` (any teacher: used through its scorer) into a small student with
    cfg.method and save it to `out_dir`.

    candidates: the teacher's lists ranked beforehand (a fanned-out job's shards,
    training.distill.shards); they must be the lists cfg.method asks for.
    student_report: computes the trained student's report instead of this process (a
    fanned-out job's evaluation shards); it must give what _student_report gives.
    """
    out_dir = Path(out_dir)
    teacher_art = (
        teacher if isinstance(teacher, ModelArtifact) else ModelArtifact.load(Path(teacher))
    )
    teacher_art.check_dataset(dataset.fingerprint)
    t0 = time.perf_counter()
    train = dataset.csr("train")
    cfg = resolve(cfg, train)  # "auto" fields become the numbers used
    scorer = load_scorer(teacher_art, train, device)
    # The teacher's candidate lists depend on the teacher, the data and the method's list
    # options only: the trials of a tuning study in one process build them once.
    tm = teacher_art.manifest
    cache_key = f"{tm.id}@{tm.created_at}@{teacher_art.path}@{dataset.fingerprint}@{device}"
    distiller = build_distiller(cfg, scorer, train, device, cache_key=cache_key)
    candidates_s = 0.0
    if distiller is not None:
        _emit(on_progress, "candidates", "ranking the teacher's candidates")
        tc = time.perf_counter()
        try:
            if candidates is not None:
                _seed_candidates(candidates, cfg, train, cache_key)
            hits = CANDIDATE_CACHE.hits
            distiller.prepare(should_stop)
            if candidates is not None and CANDIDATE_CACHE.hits == hits:
                raise RuntimeError(
                    "the distiller ranked its own candidates beside the precomputed ones"
                )
        finally:
            if candidates is not None:  # the lists' files belong to the job, not to this process
                CANDIDATE_CACHE.clear()
        candidates_s = time.perf_counter() - tc
    valid = dataset.csr("valid")
    head_items, teacher_exposure, select_cap = None, None, None
    if cfg.head_share_cap == "teacher":
        head_items = np.asarray(dataset.groups(cfg.unkd.groups)) == 0
        head_digest = hashlib.sha1(np.packbits(head_items).tobytes()).hexdigest()
        teacher_exposure = EXPOSURE_CACHE.get_or_build(
            (cache_key, *_data_key(dataset, train), head_digest),
            lambda: exposure(scorer, train, head_items),
        )
        logger.info("the teacher's head share@%d: %.4f", VALID_K, teacher_exposure.share)
        if cfg.cap_rule == "select":  # epochs are selected on validation's own lists
            valid_figures = scorer_validation(scorer, train, valid, head_items=head_items)
            select_cap = valid_figures[f"head_share@{VALID_K}"]
    # The initial embeddings: cfg.seed, not whatever ran before in the process.
    torch.manual_seed(cfg.seed)
    student = build_model(
        cfg.student_model,
        dataset.n_users,
        dataset.n_items,
        cfg.dim,
        train,
        n_layers=cfg.n_layers,
        device=device,
    )
    if cfg.warm_start == "als":
        _warm_start_from_als(student, cfg, dataset, train, valid, device, on_progress, should_stop)
    result = fit(
        student,
        dataset.train,
        train,
        valid,
        cfg,
        device=device,
        distiller=distiller,
        lambda_kd=cfg.lambda_kd,
        on_progress=on_progress,
        should_stop=should_stop,
        stage="train",
        head_items=head_items,
        max_head_share=select_cap,
    )
    capped = None
    if teacher_exposure is not None and head_items is not None:
        capped = _meet_cap(result, cfg, train, head_items, teacher_exposure, device, on_progress)
    train_s = time.perf_counter() - t0
    _emit(on_progress, "evaluate")
    if student_report is not None:
        report = student_report(
            dataset, result.user_emb, result.item_emb, teacher_art, eval_cfg or EvalConfig(), device
        )
    else:
        report = _student_report(
            dataset,
            EmbeddingScorer(result.user_emb, result.item_emb, device),
            teacher_art,
            eval_cfg or EvalConfig(),
            device,
        )
    training = summary_of(
        result,
        train_s,
        candidates_s=candidates_s,
        candidate_bytes=distiller.candidate_bytes() if distiller else 0,
    )
    training.head_share_cap = capped
    fitted = FittedModel(training, user_emb=result.user_emb, item_emb=result.item_emb)
    artifact = _save(
        cfg,
        dataset,
        fitted,
        report,
        out_dir,
        device=device,
        model_id=model_id,
        dataset_id=dataset_id,
        should_stop=should_stop,
        teacher=teacher_art,
    )
    if capped is not None and not capped.met:
        logger.warning(
            "student %s is above its teacher's head share@%d over every user's list: %.4f > %.4f",
            artifact.manifest.id,
            VALID_K,
            capped.student,
            capped.teacher,
        )
    logger.info(
        "student %s (%s) saved to %s (%.1fs)", artifact.manifest.id, cfg.method, out_dir, train_s
    )
    return artifact


def _meet_cap(
    result: FitResult,
    cfg: DistillConfig,
    train: sp.csr_matrix,
    head_items: np.ndarray,
    teacher: Exposure,
    device: torch.device,
    on_progress: ProgressCallback | None,
) -> HeadShareCap:
    """Make the trained student meet its teacher's head share (cfg.cap_rule): `shift` folds
    per-user head shifts into result's embeddings (training.calibration), so that no user's
    list holds more head items than the teacher's list for that user.
    Returns the figures the job, its status and the publish gate read: the teacher's head
    share and the kept student's, after any shift, in the one measure of
    training.calibration.exposure."""
    unshifted, shifted, new_user = None, 0.0, 0.0
    if cfg.cap_rule == "shift":
        _emit(on_progress, "calibrate", "meeting the teacher's head share, user by user")
        shifts = head_shifts(result.user_emb, result.item_emb, teacher, train, head_items)
        unshifted, shifted, new_user = (
            shifts.head_share_before,
            shifts.users_shifted,
            shifts.new_user,
        )
        result.user_emb, result.item_emb = shifts.apply(
            result.user_emb, result.item_emb, head_items
        )
    scorer = EmbeddingScorer(result.user_emb, result.item_emb, device)
    student = exposure(scorer, train, head_items).share
    return HeadShareCap(
        teacher=teacher.share,
        student=student,
        met=student <= teacher.share,
        rule=cfg.cap_rule,
        unshifted=unshifted,
        users_shifted=shifted,
        shift_column=cfg.dim if shifted > 0 else None,
        new_user_shift=new_user,
    )


def evaluate_model(
    dataset: Dataset,
    model: ModelArtifact | Path,
    *,
    device: torch.device | None = None,
    eval_cfg: EvalConfig | None = None,
) -> QualityReport:
    """The quality report of a saved model on `dataset` (its own dataset, checked by fingerprint)."""
    art = model if isinstance(model, ModelArtifact) else ModelArtifact.load(Path(model))
    art.check_dataset(dataset.fingerprint)
    ecfg = eval_cfg or EvalConfig()
    dev = device or torch.device("cpu")
    teacher = art.manifest.teacher
    teacher_dir = Path(teacher.path) if teacher is not None and teacher.path else None
    scorer = load_scorer(art, dataset.csr("train"), dev)
    if teacher_dir is None or not teacher_dir.is_dir():  # a teacher, or its teacher was moved
        return _report(dataset, scorer, ecfg)
    return _student_report(dataset, scorer, ModelArtifact.load(teacher_dir), ecfg, dev)
