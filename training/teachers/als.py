"""ALS teacher: implicit's AlternatingLeastSquares (benfred/implicit, a dependency, not a
re-implementation), on its CUDA build when the job runs on CUDA and implicit has one.

Hu, Koren & Volinsky's weighted matrix factorisation: an observed interaction has
confidence `alpha`, an unobserved pair confidence 1, and the factors minimise
Σ c_ui (p_ui − x_uᵀy_i)² + regularization (|X|² + |Y|²). The result is embeddings,
scored by a dot product like the BPR teachers (training.scoring.EmbeddingScorer).

Progress and cancellation go through implicit's per-iteration `fit(callback=...)`: each
iteration becomes a ProgressEvent, and should_stop() is checked there, so a cancelled job
stops within one iteration. implicit's native solver runs its own threads; BLAS's thread
pool is capped at 1 while it fits, as implicit asks (its OpenBLAS warning).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from training.config import TeacherConfig
from training.errors import JobCancelled, TrainingDivergedError
from training.progress import ProgressCallback, ProgressEvent, ShouldStop
from training.scoring import EmbeddingScorer
from training.validation import VALID_K, scorer_validation

logger = logging.getLogger(__name__)


@dataclass
class ALSFit:
    user_emb: np.ndarray  # (n_users, dim) float32
    item_emb: np.ndarray  # (n_items, dim) float32
    backend: str  # "implicit.gpu" or "implicit.cpu"
    seconds: float  # wall time of the fit (not of the validation)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per iteration
    valid: dict[str, float] = field(default_factory=dict)  # {"recall@20", "ndcg@20"}


def als_backend(device: torch.device) -> tuple[type[Any], bool]:
    """The one place that picks implicit's ALS: (class, on_gpu).

    implicit.gpu when the job's device is CUDA and implicit was built with CUDA, else
    implicit.cpu. Imported here, when a job runs, never at module import: implicit probes
    CUDA when its gpu package loads.
    """
    import implicit.gpu

    if device.type == "cuda" and implicit.gpu.HAS_CUDA:
        import implicit.gpu.als

        return implicit.gpu.als.AlternatingLeastSquares, True
    if device.type == "cuda":
        logger.info(
            "ALS on the CPU: implicit has no CUDA build here (implicit.gpu.HAS_CUDA is False)"
        )
    import implicit.cpu.als

    return implicit.cpu.als.AlternatingLeastSquares, False


def fit_als(
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    cfg: TeacherConfig,
    *,
    device: torch.device,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> ALSFit:
    """Fit ALS factors of size cfg.dim on the training split, measure them on validation.

    Args:
        train, valid: (n_users, n_items) binary CSR of the training and validation splits.
        cfg: cfg.dim, cfg.seed and cfg.als (regularization, alpha, iterations) are used.
    Raises:
        JobCancelled: should_stop() said stop (checked after every iteration).
        TrainingDivergedError: implicit found NaN in the factors.
    """
    from implicit.recommender_base import ModelFitError

    opts = cfg.als
    cls, on_gpu = als_backend(device)
    kwargs: dict[str, Any] = {
        "factors": cfg.dim,
        "regularization": opts.regularization,
        "alpha": opts.alpha,
        "iterations": opts.iterations,
        "calculate_training_loss": True,
        "random_state": cfg.seed,
    }
    if not on_gpu:
        kwargs["num_threads"] = torch.get_num_threads()
    history: list[dict[str, Any]] = []
    started = time.perf_counter()

    def callback(iteration: int, elapsed: float, loss: float | None) -> None:
        history.append(
            {"epoch": iteration + 1, "loss": float(loss or 0.0), "seconds": float(elapsed)}
        )
        logger.info(
            "als iteration %d/%d loss %.5f (%.2fs)",
            iteration + 1,
            opts.iterations,
            loss or 0.0,
            elapsed,
        )
        if on_progress is not None:
            on_progress(
                ProgressEvent(
                    stage="train",
                    epoch=iteration + 1,
                    epochs=opts.iterations,
                    loss=loss,
                    elapsed_s=time.perf_counter() - started,
                )
            )
        if should_stop is not None and should_stop():
            raise JobCancelled(f"cancelled after ALS iteration {iteration + 1}")

    user_items = sp.csr_matrix(train, dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        model = cls(**kwargs)
        try:
            model.fit(user_items, show_progress=False, callback=callback)
        except ModelFitError as exc:
            raise TrainingDivergedError(f"ALS diverged ({exc}); raise als.regularization") from exc
    seconds = time.perf_counter() - started
    if on_gpu:
        model = model.to_cpu()
    user_emb = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    item_emb = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    valid_metrics = scorer_validation(EmbeddingScorer(user_emb, item_emb, device), train, valid)
    metrics = {f"valid_{k}": v for k, v in valid_metrics.items()}
    if history:
        history[-1].update(metrics)
    if on_progress is not None:
        on_progress(
            ProgressEvent(
                stage="train",
                epoch=opts.iterations,
                epochs=opts.iterations,
                loss=history[-1]["loss"] if history else None,
                metrics=metrics,
                elapsed_s=time.perf_counter() - started,
            )
        )
    logger.info(
        "ALS-%d (%s) in %.1fs: valid ndcg@%d=%.4f",
        cfg.dim,
        "gpu" if on_gpu else "cpu",
        seconds,
        VALID_K,
        valid_metrics[f"ndcg@{VALID_K}"],
    )
    return ALSFit(
        user_emb,
        item_emb,
        "implicit.gpu" if on_gpu else "implicit.cpu",
        seconds,
        history,
        valid_metrics,
    )
