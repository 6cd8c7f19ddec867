"""Validation Recall@K and NDCG@K of any scorer (teachers, and the trainer's embeddings):
users with a validation positive, training items excluded, lists from training.topk."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.metrics import discounts, row_membership
from training.scoring import TeacherScorer
from training.topk import topk_from_scorer

VALID_K = 20  # the figure teachers and students are selected on


def scorer_validation(scorer: TeacherScorer, train: sp.csr_matrix, valid: sp.csr_matrix,
                      k: int = VALID_K, chunk: int = 2048,
                      head_items: np.ndarray | None = None) -> dict[str, float]:  # fmt: skip
    """{"recall@k", "ndcg@k"} on the validation split (binary gain, IDCG over min(k, |T_u|)).

    Args:
        train, valid: (n_users, n_items) CSR; training items are excluded from the lists.
        head_items: (n_items,) bool head-group mask: adds head_share@k as the trainer does.
    """
    users = np.flatnonzero(np.diff(valid.indptr) > 0)
    if len(users) == 0:
        return {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0}
    top = topk_from_scorer(scorer, users, train, k, chunk=chunk)  # (n, k)
    sub = valid[users]
    hit = row_membership(top, sub, valid.shape[1])  # (n, k) bool
    n_pos = np.diff(sub.indptr)
    disc = discounts(k)
    idcg = np.cumsum(disc)[np.minimum(n_pos, k) - 1]
    out = {
        f"recall@{k}": float((hit.sum(1) / n_pos).mean()),
        f"ndcg@{k}": float(((hit * disc).sum(1) / idcg).mean()),
    }
    if head_items is not None:
        slots = top[top >= 0]
        out[f"head_share@{k}"] = float(head_items[slots].mean()) if len(slots) else 0.0
    return out
