"""The three jobs of the training core, used by the CLI and by the Celery tasks alike:
train a teacher, distil a student, evaluate a model. Each writes its model directory
atomically: a cancelled or failed job leaves nothing behind."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import ModelArtifact
from training.config import DistillConfig, EvalConfig, TeacherConfig
from training.dataset import Dataset
from training.distill import build_distiller
from training.errors import JobCancelled
from training.evaluation import attach_teacher, evaluate_embeddings
from training.models import build_model
from training.progress import ProgressCallback, ProgressEvent, ShouldStop
from training.trainer import FitResult, fit

logger = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _training_summary(result: FitResult, seconds: float) -> dict[str, Any]:
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "seconds": round(seconds, 3),
        "seconds_per_epoch": round(result.seconds_per_epoch, 4),
        "history": result.history,
    }


def _student_report(dataset: Dataset, user_emb: Any, item_emb: Any, teacher: ModelArtifact,
                    cfg: EvalConfig, device: torch.device) -> dict[str, Any]:
    """A student's report with its teacher's figures, the deltas and list overlap."""
    report = evaluate_embeddings(dataset, user_emb, item_emb, cfg=cfg, device=device,
                                 reference=(teacher.user_emb, teacher.item_emb))
    teacher_report = teacher.report or evaluate_embeddings(
        dataset, teacher.user_emb, teacher.item_emb, cfg=cfg, device=device)
    return attach_teacher(report, teacher_report)


def _emit(on_progress: ProgressCallback | None, stage: str, message: str = "") -> None:
    if on_progress is not None:
        on_progress(ProgressEvent(stage=stage, message=message))


def train_teacher(
    dataset: Dataset,
    cfg: TeacherConfig,
    out_dir: Path,
    *,
    device: torch.device,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    model_id: str | None = None,
    eval_cfg: EvalConfig | None = None,
) -> ModelArtifact:
    """Train an MF or LightGCN teacher with BPR, evaluate it, and save it to `out_dir`."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    train = dataset.csr("train")
    model = build_model(cfg.model, dataset.n_users, dataset.n_items, cfg.dim, train,
                        n_layers=cfg.n_layers, device=device)
    result = fit(model, dataset.train, train, dataset.csr("valid"), cfg, device=device,
                 on_progress=on_progress, should_stop=should_stop, stage="train")
    train_s = time.perf_counter() - t0
    _emit(on_progress, "evaluate")
    report = evaluate_embeddings(dataset, result.user_emb, result.item_emb,
                                 cfg=eval_cfg or EvalConfig(), device=device)
    manifest = {
        "id": model_id or out_dir.name,
        "kind": "teacher",
        "model": cfg.model,
        "method": None,
        "dim": cfg.dim,
        "config": cfg.model_dump(mode="json"),
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint},
        "lineage": {"dataset": dataset.fingerprint, "teacher": None},
        "created_at": _now(),
        "device": str(device),
        "training": _training_summary(result, train_s),
    }
    artifact = ModelArtifact(result.user_emb, result.item_emb, manifest, report)
    if should_stop is not None and should_stop():  # cancelled during evaluation: write nothing
        raise JobCancelled("cancelled before the model was saved")
    artifact.save(out_dir)
    logger.info("teacher %s saved to %s (%.1fs)", manifest["id"], out_dir, train_s)
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
    tm = teacher_art.manifest
    manifest = {
        "id": model_id or out_dir.name,
        "kind": "student",
        "model": cfg.student_model,
        "method": cfg.method,
        "dim": cfg.dim,
        "config": cfg.model_dump(mode="json"),
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint},
        "lineage": {
            "dataset": dataset.fingerprint,
            "teacher": {"id": tm.get("id"), "model": tm.get("model"), "dim": tm.get("dim"),
                        "path": str(teacher_art.path) if teacher_art.path else None},
        },
        "created_at": _now(),
        "device": str(device),
        "training": {**_training_summary(result, train_s), "candidates_seconds": round(candidates_s, 3),
                     "candidate_bytes": distiller.candidate_bytes() if distiller else 0},
    }
    artifact = ModelArtifact(result.user_emb, result.item_emb, manifest, report)
    if should_stop is not None and should_stop():
        raise JobCancelled("cancelled before the model was saved")
    artifact.save(out_dir)
    logger.info("student %s (%s) saved to %s (%.1fs)", manifest["id"], cfg.method, out_dir, train_s)
    return artifact


def evaluate_model(
    dataset: Dataset, model: ModelArtifact | Path, *, device: torch.device | None = None,
    eval_cfg: EvalConfig | None = None,
) -> dict[str, Any]:
    """The quality report of a saved model on `dataset` (its own dataset, checked by fingerprint)."""
    art = model if isinstance(model, ModelArtifact) else ModelArtifact.load(Path(model))
    art.check_dataset(dataset.fingerprint)
    ecfg = eval_cfg or EvalConfig()
    dev = device or torch.device("cpu")
    lineage_teacher = (art.manifest.get("lineage") or {}).get("teacher") or {}
    teacher_dir = Path(lineage_teacher["path"]) if lineage_teacher.get("path") else None
    if teacher_dir is None or not teacher_dir.is_dir():  # a teacher, or its teacher was moved
        return evaluate_embeddings(dataset, art.user_emb, art.item_emb, cfg=ecfg, device=dev)
    return _student_report(dataset, art.user_emb, art.item_emb, ModelArtifact.load(teacher_dir),
                           ecfg, dev)
