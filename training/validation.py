"""Validation Recall@K and NDCG@K of any scorer (teachers, and the trainer's embeddings):
users with a validation positive, training items excluded, lists from training.topk."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.metrics import discounts, row_membership
from training.scoring import TeacherScorer
from training.topk import topk_from_scorer

VALID_K = 20  # the figure teachers and students are selected on
VALID_BLOCK_USERS = 65536


def scorer_validation(
    scorer: TeacherScorer,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    k: int = VALID_K,
    chunk: int = 2048,
    head_items: np.ndarray | None = None,
) -> dict[str, float]:
    """{"recall@k", "ndcg@k"} on the validation split (binary gain, IDCG over min(k, |T_u|)).

    Args:
        train, valid: (n_users, n_items) CSR; training items are excluded from the lists.
        head_items: (n_items,) bool head-group mask: adds head_share@k as the trainer does.
    """
    users = np.flatnonzero(np.diff(valid.indptr) > 0)
    if len(users) == 0:
        return {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0}
    disc = discounts(k)
    recall, ndcg = np.empty(len(users)), np.empty(len(users))
    head_slots, slots = 0, 0
    for start in range(0, len(users), VALID_BLOCK_USERS):  # memory O(block · k), not O(users · k)
        block = users[start : start + VALID_BLOCK_USERS]
        top = topk_from_scorer(scorer, block, train, k, chunk=chunk)  # (b, k)
        sub = valid[block]
        hit = row_membership(top, sub, valid.shape[1])  # (b, k) bool
        n_pos = np.diff(sub.indptr)
        idcg = np.cumsum(disc)[np.minimum(n_pos, k) - 1]
        recall[start : start + len(block)] = hit.sum(1) / n_pos
        ndcg[start : start + len(block)] = (hit * disc).sum(1) / idcg
        if head_items is not None:
            shown = top[top >= 0]
            head_slots, slots = head_slots + int(head_items[shown].sum()), slots + len(shown)
    out = {f"recall@{k}": float(recall.mean()), f"ndcg@{k}": float(ndcg.mean())}
    if head_items is not None:
        out[f"head_share@{k}"] = head_slots / slots if slots else 0.0
    return out
