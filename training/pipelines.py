"""The three jobs of the training core, used by the CLI and by the Celery tasks alike:
train a teacher, distil a student, evaluate a model. Each writes its model directory
atomically: a cancelled or failed job leaves nothing behind."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import ModelArtifact
from training.config import DistillConfig, EvalConfig, TeacherConfig
from training.dataset import Dataset
from training.distill import build_distiller
from training.errors import JobCancelled
from training.evaluation import attach_teacher, evaluate_embeddings
from training.manifest import (
    DatasetInfo,
    EpochRecord,
    Lineage,
    QualityReport,
    TeacherInfo,
    TrainingSummary,
    build_manifest,
)
from training.models import build_model
from training.progress import ProgressCallback, ProgressEvent, ShouldStop
from training.trainer import FitResult, fit

logger = logging.getLogger(__name__)


def _training_summary(result: FitResult, seconds: float, *, candidates_s: float | None = None,
                      candidate_bytes: int | None = None) -> TrainingSummary:  # fmt: skip
    return TrainingSummary(
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        seconds=round(seconds, 3),
        seconds_per_epoch=round(result.seconds_per_epoch, 4),
        history=[EpochRecord.model_validate(row) for row in result.history],
        candidates_seconds=None if candidates_s is None else round(candidates_s, 3),
        candidate_bytes=candidate_bytes,
    )


def _report(dataset: Dataset, user_emb: np.ndarray, item_emb: np.ndarray, cfg: EvalConfig,
            device: torch.device) -> QualityReport:  # fmt: skip
    return QualityReport.model_validate(
        evaluate_embeddings(dataset, user_emb, item_emb, cfg=cfg, device=device))


def _student_report(dataset: Dataset, user_emb: np.ndarray, item_emb: np.ndarray,
                    teacher: ModelArtifact, cfg: EvalConfig, device: torch.device) -> QualityReport:  # fmt: skip
    """A student's report with its teacher's figures, the deltas and list overlap."""
    report = evaluate_embeddings(dataset, user_emb, item_emb, cfg=cfg, device=device,
                                 reference=(teacher.user_emb, teacher.item_emb))
    teacher_report = teacher.report or _report(dataset, teacher.user_emb, teacher.item_emb, cfg, device)
    return QualityReport.model_validate(
        attach_teacher(report, teacher_report.model_dump(mode="json")))


def _emit(on_progress: ProgressCallback | None, stage: str, message: str = "") -> None:
    if on_progress is not None:
        on_progress(ProgressEvent(stage=stage, message=message))


def _save(
    cfg: TeacherConfig | DistillConfig,
    dataset: Dataset,
    result: FitResult,
    report: QualityReport,
    out_dir: Path,
    *,
    training: TrainingSummary,
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
        teacher_info = TeacherInfo(model=tm.model, dim=tm.dim, path=str(teacher.path) if teacher.path else None)
    manifest = build_manifest(
        cfg,
        model_id=model_id or out_dir.name,
        dataset=DatasetInfo(name=dataset.name, fingerprint=dataset.fingerprint),
        lineage=lineage,
        training=training,
        device=str(device),
        created_at=datetime.now(timezone.utc).replace(microsecond=0),
        teacher=teacher_info,
    )
    artifact = ModelArtifact(result.user_emb, result.item_emb, manifest, report)
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
    """Train an MF or LightGCN teacher with BPR, evaluate it, and save it to `out_dir`.

    model_id and dataset_id are the registry's ids in the service (manifest id, lineage);
    offline the id is the directory's name and the dataset has none.
    """
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    train = dataset.csr("train")
    model = build_model(cfg.model, dataset.n_users, dataset.n_items, cfg.dim, train,
                        n_layers=cfg.n_layers, device=device)
    result = fit(model, dataset.train, train, dataset.csr("valid"), cfg, device=device,
                 on_progress=on_progress, should_stop=should_stop, stage="train")
    train_s = time.perf_counter() - t0
    _emit(on_progress, "evaluate")
    report = _report(dataset, result.user_emb, result.item_emb, eval_cfg or EvalConfig(), device)
    artifact = _save(cfg, dataset, result, report, out_dir, training=_training_summary(result, train_s),
                     device=device, model_id=model_id, dataset_id=dataset_id, should_stop=should_stop)  # fmt: skip
    logger.info("teacher %s saved to %s (%.1fs)", artifact.manifest.id, out_dir, train_s)
    return artifact


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
) -> ModelArtifact:
    """Distil `teacher` into a small student with cfg.method and save it to `out_dir`."""
    out_dir = Path(out_dir)
    teacher_art = teacher if isinstance(teacher, ModelArtifact) else ModelArtifact.load(Path(teacher))
    teacher_art.check_dataset(dataset.fingerprint)
    t0 = time.perf_counter()
    train = dataset.csr("train")
    t_user = torch.from_numpy(teacher_art.user_emb)
    t_item = torch.from_numpy(teacher_art.item_emb)
    distiller = build_distiller(cfg, t_user, t_item, train, device)
    candidates_s = 0.0
    if distiller is not None:
        _emit(on_progress, "candidates", "ranking the teacher's candidates")
        tc = time.perf_counter()
        distiller.prepare()
        candidates_s = time.perf_counter() - tc
    student = build_model(cfg.student_model, dataset.n_users, dataset.n_items, cfg.dim, train,
                          n_layers=cfg.n_layers, device=device)
    result = fit(student, dataset.train, train, dataset.csr("valid"), cfg, device=device,
                 distiller=distiller, lambda_kd=cfg.lambda_kd, on_progress=on_progress,
                 should_stop=should_stop, stage="train")
    train_s = time.perf_counter() - t0
    _emit(on_progress, "evaluate")
    report = _student_report(dataset, result.user_emb, result.item_emb, teacher_art,
                             eval_cfg or EvalConfig(), device)
    training = _training_summary(result, train_s, candidates_s=candidates_s,
                                 candidate_bytes=distiller.candidate_bytes() if distiller else 0)  # fmt: skip
    artifact = _save(cfg, dataset, result, report, out_dir, training=training, device=device,
                     model_id=model_id, dataset_id=dataset_id, should_stop=should_stop,
                     teacher=teacher_art)  # fmt: skip
    logger.info("student %s (%s) saved to %s (%.1fs)", artifact.manifest.id, cfg.method, out_dir, train_s)
    return artifact


def evaluate_model(
    dataset: Dataset, model: ModelArtifact | Path, *, device: torch.device | None = None,
    eval_cfg: EvalConfig | None = None,
) -> QualityReport:
    """The quality report of a saved model on `dataset` (its own dataset, checked by fingerprint)."""
    art = model if isinstance(model, ModelArtifact) else ModelArtifact.load(Path(model))
    art.check_dataset(dataset.fingerprint)
    ecfg = eval_cfg or EvalConfig()
    dev = device or torch.device("cpu")
    teacher = art.manifest.teacher
    teacher_dir = Path(teacher.path) if teacher is not None and teacher.path else None
    if teacher_dir is None or not teacher_dir.is_dir():  # a teacher, or its teacher was moved
        return _report(dataset, art.user_emb, art.item_emb, ecfg, dev)
    return _student_report(dataset, art.user_emb, art.item_emb, ModelArtifact.load(teacher_dir),
                           ecfg, dev)
