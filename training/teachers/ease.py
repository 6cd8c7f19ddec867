"""EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019): an item-item teacher in
closed form, solved in torch on the job's device.

    G = XᵀX + λI,   P = G⁻¹,   B = I − P · diag(1 / diag(P))   (so diag(B) = 0)
    score(u) = X_u B

X is the (n_users, n_items) binary training matrix. G is dense, so memory grows as
n_items² and time as n_items³: catalogues above training.budget.EASE_MAX_ITEMS are refused
before any work, naming `als` as the teacher to use instead. EASE has no embeddings; a
model directory holds B in `ease.npz` (training.checkpoint).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from training.budget import check_ease_items
from training.config import EASEOptions
from training.errors import ConfigError, JobCancelled
from training.progress import ProgressCallback, ProgressEvent, ShouldStop
from training.scoring import ItemItemScorer
from training.validation import VALID_K, scorer_validation

logger = logging.getLogger(__name__)


@dataclass
class EASEFit:
    weights: np.ndarray  # (n_items, n_items) float32 B, zero diagonal
    seconds: float  # wall time of the solve (not of the validation)
    loss: float  # ||X − XB||²_F / n_users on the training split
    valid: dict[str, float]  # {"recall@20", "ndcg@20"} on the validation split


def ease_weights(train: sp.csr_matrix, l2: float, device: torch.device) -> torch.Tensor:
    """B of EASE, on `device`.

    Peak memory is two dense (n_items, n_items) float32 matrices (G and its Cholesky factor;
    P and then B overwrite them in place).

    Args:
        train: (n_users, n_items) CSR of training interactions (values used as given).
        l2: λ > 0.
    Returns:
        (n_items, n_items) float32 B with a zero diagonal.
    Raises:
        EASETooLargeError: n_items > EASE_MAX_ITEMS (before anything is allocated).
        ConfigError: λ too small for XᵀX + λI to factorise in float32.
    """
    n_items = train.shape[1]
    check_ease_items(n_items)
    if l2 <= 0:
        raise ConfigError(f"ease.l2={l2}: must be > 0")
    x = sp.csr_matrix(train, dtype=np.float32)
    gram = torch.from_numpy((x.T @ x).toarray()).to(device)  # (n_items, n_items) XᵀX
    gram.diagonal().add_(l2)
    chol, info = torch.linalg.cholesky_ex(gram)
    del gram
    if int(info) != 0:
        raise ConfigError(
            f"ease.l2={l2}: XᵀX + λI is not positive definite in float32; raise ease.l2"
        )
    p = torch.cholesky_inverse(chol)  # (n_items, n_items) P = G⁻¹, symmetric
    del chol
    b = p.div_(-p.diagonal().clone())  # B_ij = −P_ij / P_jj for i != j
    b.fill_diagonal_(0.0)
    return b


def reconstruction_loss(scorer: ItemItemScorer, chunk: int = 2048) -> float:
    """||X − XB||²_F / n_users over the scorer's history X, in user chunks."""
    total = 0.0
    with torch.inference_mode():
        for start in range(0, scorer.n_users, chunk):
            users = torch.arange(start, min(start + chunk, scorer.n_users))
            rows = scorer.history[users.numpy()]
            dense = torch.from_numpy(rows.toarray()).to(scorer.device)  # (b, n_items)
            total += float((scorer.score(users) - dense).square().sum())
    return total / max(1, scorer.n_users)


def fit_ease(
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    opts: EASEOptions,
    *,
    device: torch.device,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
) -> EASEFit:
    """Solve EASE on the training split and measure it on the validation split.

    The solve is one dense factorisation: cancellation is checked before and after it.

    Raises:
        EASETooLargeError: the catalogue is over EASE_MAX_ITEMS (nothing was computed).
        JobCancelled: should_stop() said stop.
    """
    n_items = train.shape[1]
    check_ease_items(n_items)
    if should_stop is not None and should_stop():
        raise JobCancelled("cancelled before the EASE solve")
    if on_progress is not None:
        on_progress(
            ProgressEvent(
                stage="train",
                epoch=0,
                epochs=1,
                message=f"EASE: solving {n_items:,} x {n_items:,} on {device}",
            )
        )
    t0 = time.perf_counter()
    b = ease_weights(train, opts.l2, device)
    seconds = time.perf_counter() - t0
    if should_stop is not None and should_stop():
        raise JobCancelled("cancelled after the EASE solve")
    scorer = ItemItemScorer(train, b, device)
    valid_metrics = scorer_validation(scorer, train, valid)
    loss = reconstruction_loss(scorer)
    logger.info(
        "EASE over %d items (l2=%g) in %.1fs on %s: valid ndcg@%d=%.4f",
        n_items,
        opts.l2,
        seconds,
        device,
        VALID_K,
        valid_metrics[f"ndcg@{VALID_K}"],
    )
    if on_progress is not None:
        on_progress(
            ProgressEvent(
                stage="train",
                epoch=1,
                epochs=1,
                loss=loss,
                metrics={f"valid_{k}": v for k, v in valid_metrics.items()},
                elapsed_s=seconds,
            )
        )
    return EASEFit(weights=b.cpu().numpy(), seconds=seconds, loss=loss, valid=valid_metrics)
