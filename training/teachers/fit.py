"""Fit any teacher: mf and lightgcn with our BPR trainer, als through implicit, ease in
closed form. One result type, whatever the model, for training.pipelines to evaluate and save."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from training.budget import check_ease_items
from training.checkpoint import ModelArtifact
from training.config import TeacherConfig
from training.dataset import Dataset
from training.errors import ConfigError
from training.manifest import EpochRecord, TrainingSummary
from training.models import build_model
from training.progress import ProgressCallback, ShouldStop
from training.scoring import EmbeddingScorer, ItemItemScorer, TeacherScorer
from training.trainer import FitResult, fit
from training.validation import VALID_K


@dataclass
class FittedModel:
    """A fitted model: embeddings (mf, lightgcn, als, a student) or EASE's B, and how it was fitted."""

    training: TrainingSummary
    user_emb: np.ndarray | None = None  # (n_users, d) float32
    item_emb: np.ndarray | None = None  # (n_items, d) float32
    item_item: np.ndarray | None = None  # (n_items, n_items) float32 B (ease)

    def scorer(self, train: sp.csr_matrix, device: torch.device) -> TeacherScorer:
        """The teacher as a scorer on `device` (train: the CSR EASE scores from)."""
        if self.item_item is not None:
            return ItemItemScorer(train, self.item_item, device)
        if self.user_emb is None or self.item_emb is None:
            raise ValueError("a FittedModel holds embeddings or item_item weights")
        return EmbeddingScorer(self.user_emb, self.item_emb, device)


def summary_of(
    result: FitResult,
    seconds: float,
    *,
    candidates_s: float | None = None,
    candidate_bytes: int | None = None,
) -> TrainingSummary:
    """The manifest's TrainingSummary of one run of training.trainer.fit."""
    return TrainingSummary(
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        seconds=round(seconds, 3),
        seconds_per_epoch=round(result.seconds_per_epoch, 4),
        history=[EpochRecord.model_validate(row) for row in result.history],
        candidates_seconds=None if candidates_s is None else round(candidates_s, 3),
        candidate_bytes=candidate_bytes,
    )


def fit_teacher(
    dataset: Dataset,
    cfg: TeacherConfig,
    *,
    device: torch.device,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> FittedModel:
    """Fit the teacher cfg.model on the dataset's training split (validation selects).

    Raises:
        EASETooLargeError: ease over more than EASE_MAX_ITEMS items, before any work.
        JobCancelled: should_stop() said stop.
    """
    from training.teachers.als import fit_als  # imports implicit: only when it is used
    from training.teachers.ease import fit_ease

    if cfg.model == "ease":
        check_ease_items(dataset.n_items)
    t0 = time.perf_counter()
    train, valid = dataset.csr("train"), dataset.csr("valid")
    if cfg.model == "als":
        als = fit_als(
            train, valid, cfg, device=device, on_progress=on_progress, should_stop=should_stop
        )
        n = len(als.history)
        summary = TrainingSummary(
            best_epoch=n,
            epochs_run=n,
            seconds=round(als.seconds, 3),
            seconds_per_epoch=round(als.seconds / max(1, n), 4),
            history=[EpochRecord.model_validate(row) for row in als.history],
            backend=als.backend,
        )
        return FittedModel(summary, user_emb=als.user_emb, item_emb=als.item_emb)
    if cfg.model == "ease":
        ease = fit_ease(
            train, valid, cfg.ease, device=device, on_progress=on_progress, should_stop=should_stop
        )
        row = {
            "epoch": 1,
            "loss": ease.loss,
            "seconds": ease.seconds,
            **{f"valid_{k}": v for k, v in ease.valid.items()},
        }
        summary = TrainingSummary(
            best_epoch=1,
            epochs_run=1,
            seconds=round(ease.seconds, 3),
            seconds_per_epoch=round(ease.seconds, 4),
            history=[EpochRecord.model_validate(row)],
            backend="torch",
        )
        return FittedModel(summary, item_item=ease.weights)
    if cfg.model not in ("mf", "lightgcn"):
        raise ConfigError(f"model={cfg.model!r}: expected mf, lightgcn, als or ease")
    torch.manual_seed(
        cfg.seed
    )  # the initial embeddings: cfg.seed, not whatever ran before in the process
    model = build_model(
        cfg.model,
        dataset.n_users,
        dataset.n_items,
        cfg.dim,
        train,
        n_layers=cfg.n_layers,
        device=device,
    )
    result = fit(
        model,
        dataset.train,
        train,
        valid,
        cfg,
        device=device,
        on_progress=on_progress,
        should_stop=should_stop,
        stage="train",
    )
    return FittedModel(
        summary_of(result, time.perf_counter() - t0),
        user_emb=result.user_emb,
        item_emb=result.item_emb,
    )


def load_scorer(
    artifact: ModelArtifact, train: sp.csr_matrix, device: torch.device
) -> TeacherScorer:
    """A saved teacher (or student) as a scorer on `device`.

    Args:
        train: (n_users, n_items) CSR of the training split of the model's dataset (EASE
            scores a user from it; embedding models ignore it).
    """
    if artifact.item_item is not None:
        return ItemItemScorer(train, artifact.item_item, device)
    return EmbeddingScorer(*artifact.embeddings(), device=device)


__all__ = ["VALID_K", "FittedModel", "fit_teacher", "load_scorer", "summary_of"]
