"""Fold a new user's history into a user vector with the served item embeddings.

The MF fold-in in closed form: the ridge regression of "the user likes every item of the
history" on those items' embeddings,

    u = (Q_S^T Q_S + lam I)^-1 Q_S^T 1        Q_S: (|S|, d) embeddings of the history S

solved as one d x d system (d = 10..100: microseconds, no iterations, no torch). The score
of item i is then u . q_i, as for a trained user.

lam sets how far u moves from least squares (lam -> 0: fit every history item to score 1,
unstable when |S| < d) towards the sum of the history's item vectors (lam -> inf: the
direction of Q_S^T 1). It is given in units of the catalogue's mean squared item norm, so
one value fits every model whatever scale its training left the embeddings at; it acts as
a prior worth FOLD_IN_LAMBDA "average items", so a history much longer than that is trusted
towards least squares. A BPR-trained student ranks by score differences and never learned
to score a liked item at 1, so least squares overfits the history: bench/fold_in.py on
MovieLens-100K finds NDCG@20 rising from lam 0.1 to a plateau from 30 to 10^4 (the folded
vector then matches the trained one) and puts 100 at its top (docs/service.md).

A student with a head-shift column (training.calibration; the bundle's meta names it) scores
p_u . q_i - beta_u [i in head]. That column is no learned coordinate: regressed on like the
others it would take a coefficient from the history (negative when the history holds head
items, which would lift every head item for this visitor, against the cap the shifts met).
So the regression runs on the learned columns only, lam is in their units, and the visitor
gets the shift of a user without a trained vector (new_user_shift, the mean over users).
"""

from __future__ import annotations

import numpy as np

from service.serving.filters import sorted_unique

# In units of mean ||q_i||^2; bench/fold_in.py: best of 0.1 .. 10^6 on MovieLens-100K, warm and cold.
FOLD_IN_LAMBDA = 100.0


def mean_sq_norm(
    item_emb: np.ndarray, chunk: int = 65536, shift_column: int | None = None
) -> float:
    """Mean squared L2 norm of the item embeddings, read in chunks (item_emb may be a memory map).

    Args:
        item_emb: (n_items, d) float32.
        shift_column: a column left out of the norm (a head-shift column), or None.
    """
    total = 0.0
    for start in range(0, len(item_emb), chunk):
        block = np.asarray(item_emb[start : start + chunk], dtype=np.float64)
        if shift_column is not None:
            block = np.delete(block, shift_column, axis=1)
        total += float(np.einsum("ij,ij->", block, block))
    return total / max(1, len(item_emb))


def fold_in(
    item_emb: np.ndarray,
    history: np.ndarray,
    lam: float,
    shift_column: int | None = None,
    new_user_shift: float = 0.0,
) -> np.ndarray:
    """The user vector of a history: ridge regression of ones on the history's item vectors.

    Args:
        item_emb: (n_items, d) float32 item embeddings of the served model.
        history: (s,) int item indices, s >= 1 (duplicates count once).
        lam: ridge strength in absolute units (callers scale FOLD_IN_LAMBDA by mean_sq_norm).
        shift_column: the head-shift column, kept out of the regression, or None.
        new_user_shift: the value the user vector holds in shift_column.
    Returns:
        (d,) float32 user vector.
    Raises:
        ValueError: empty history or lam <= 0.
    """
    items = sorted_unique(history)
    if len(items) == 0:
        raise ValueError("history is empty: nothing to fold in")
    if not lam > 0:
        raise ValueError(
            f"lam={lam} must be > 0 (the system is singular for histories shorter than d)"
        )
    q = np.asarray(item_emb[items], dtype=np.float64)  # (s, d); float64: the d x d solve is tiny
    if shift_column is not None:
        q = np.delete(q, shift_column, axis=1)  # (s, d - 1): the learned columns
    gram = q.T @ q
    gram.flat[:: gram.shape[0] + 1] += (
        lam  # the diagonal (a view: no index arrays built per request)
    )
    u = np.linalg.solve(gram, q.sum(axis=0))
    if shift_column is not None:
        u = np.insert(u, shift_column, new_user_shift)
    return u.astype(np.float32)
