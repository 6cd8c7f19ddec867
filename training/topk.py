"""Exact top-K of a scorer (training.scoring), in user chunks, with the project's tie rule.

The one top-K path of the project: the quality report (`training.evaluation`), validation
during training (`training.trainer`) and the most-popular baseline all rank here, so every
list breaks ties the same way (`topk_from_scorer`; dot-product embeddings are one scorer,
`topk_from_embeddings`): equal scores, lower item index first, exactly, including ties
at the K-th score. Memory is O(chunk · n_items): the score matrix is never built for all
users at once. Excluded items (a CSR per user) get -inf; lists are -1 padded when fewer
than K items remain.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from training.scoring import CPU, EmbeddingScorer, TeacherScorer

__all__ = ["CPU", "TIE_BREAK", "topk_from_embeddings", "topk_from_scorer", "topk_rows"]

TIE_BREAK = "equal scores: lower item index ranks first (exact, incl. ties at the K-th score)"


def _topk_exact(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Exact top-k with the tie rule over full rows (the slow path, for tied or short rows).

    torch.topk picks an arbitrary subset of equal scores, so it only gives the K-th score
    here; the kept set is every item above it plus the lowest-index items equal to it, and
    a stable descending sort of that set (built in ascending item order) orders ties by index.

    Args:
        scores: (b, n_items) float32, -inf for excluded items.
    Returns:
        (b, k) int64 item ids, best first, -1 where fewer than k items are left.
    """
    b, n_items = scores.shape
    kk = min(k, n_items)
    kth = torch.topk(scores, kk, dim=1, sorted=False).values.amin(dim=1, keepdim=True)  # (b, 1)
    finite = scores > float("-inf")
    above = scores > kth
    tied = (scores == kth) & finite
    need = kk - above.sum(dim=1)  # (b,) tied items still to take
    over = tied.sum(dim=1) > need
    if bool(over.any()):  # only rows with surplus ties pay for the cumsum
        r = over.nonzero().squeeze(1)
        t = tied[r]
        tied[r] = t & (t.to(torch.int32).cumsum(dim=1, dtype=torch.int32) <= need[r, None])
    keep = above | tied  # <= kk per row; fewer only when excluded items leave fewer
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: cols ascending within a row
    counts = keep.sum(dim=1)
    pos = torch.arange(len(rows), device=scores.device) - (torch.cumsum(counts, 0) - counts)[rows]
    ids = torch.full((b, k), -1, dtype=torch.int64, device=scores.device)
    vals = torch.full((b, k), float("-inf"), dtype=scores.dtype, device=scores.device)
    ids[rows, pos] = cols
    vals[rows, pos] = scores[rows, cols]
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return ids.gather(1, order)


def topk_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k of one chunk with the tie rule: equal scores, lower item index first.

    Fast path: torch.topk for k + 1 items. Where the k-th score is strictly above the
    (k+1)-th, the chosen set is exact whatever topk did with ties, and only the order
    inside it needs fixing (sort by index, then a stable sort by score). Rows with a tie
    across the cut, or with fewer than k candidates left, go to `_topk_exact`.

    Args:
        scores: (b, n_items) float32, -inf for excluded items.
    Returns:
        (b, k) int64 item ids, best first, -1 padded.
    """
    b, n_items = scores.shape
    if k >= n_items:
        return _topk_exact(scores, k)
    vals, idx = torch.topk(scores, k + 1, dim=1, sorted=True)  # (b, k + 1)
    by_index, perm = torch.sort(idx[:, :k], dim=1)
    order = torch.sort(vals[:, :k].gather(1, perm), dim=1, descending=True, stable=True).indices
    ids = by_index.gather(1, order)
    slow = (vals[:, k - 1] == vals[:, k]) | (vals[:, k - 1] == float("-inf"))
    if bool(slow.any()):
        r = slow.nonzero().squeeze(1)
        ids[r] = _topk_exact(scores[r], k)
    return ids


def topk_from_scorer(
    scorer: TeacherScorer,
    users: np.ndarray,
    exclude_csr: sp.csr_matrix | None,
    k: int,
    *,
    chunk: int = 1024,
) -> np.ndarray:
    """Top-k items of any scorer (training.scoring), excluded items masked, in user chunks.

    Memory is O(chunk · n_items): the score matrix is never built for all users at once.

    Args:
        scorer: scores a block of users against every item, on its own device.
        users: (n,) int user ids.
        exclude_csr: (n_users, n_items) CSR indexed by user id; its items get -inf. None = none.
        k: list length; lists are -1 padded when fewer than k items remain.
    Returns:
        (n, k) int64 item ids, best first; equal scores: lower item index first.
    Raises:
        ValueError: k or chunk < 1, or the scorer returns NaN or inf.
    """
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    users = np.asarray(users, dtype=np.int64)
    device = scorer.device
    out = np.empty((len(users), k), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(users), chunk):
            batch = users[start : start + chunk]
            scores = scorer.score(torch.from_numpy(batch))  # (b, n_items) on device
            # A row's sum is NaN or infinite when any score is: one reduction, 25x cheaper than
            # an elementwise isfinite over (b, n_items) (as long as the matrix product).
            if not bool(torch.isfinite(scores.sum(dim=1)).all()):
                raise ValueError(f"scores hold NaN or inf in users {batch[0]}..{batch[-1]}")
            if exclude_csr is not None:
                sub = exclude_csr[batch]
                r = np.repeat(np.arange(len(batch)), np.diff(sub.indptr))
                scores[
                    torch.as_tensor(r, device=device),
                    torch.as_tensor(sub.indices, dtype=torch.int64, device=device),
                ] = float("-inf")
            out[start : start + len(batch)] = topk_rows(scores, k).cpu().numpy()
    return out


def topk_from_embeddings(
    user_emb: np.ndarray | torch.Tensor,
    item_emb: np.ndarray | torch.Tensor,
    users: np.ndarray,
    exclude_csr: sp.csr_matrix | None,
    k: int,
    *,
    chunk: int = 1024,
    device: torch.device = CPU,
) -> np.ndarray:
    """Top-k items by dot product: `topk_from_scorer` with an EmbeddingScorer (one path).

    Args:
        user_emb: (n_users, d); item_emb: (n_items, d). numpy or torch, cast to float32.
        users: (n,) int user ids (rows of user_emb).
        exclude_csr: (n_users, n_items) CSR indexed by user id; its items get -inf. None = none.
        k: list length; lists are -1 padded when fewer than k items remain.
    Returns:
        (n, k) int64 item ids, best first; equal scores: lower item index first.
    """
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    scorer = EmbeddingScorer(user_emb, item_emb, device=device)
    return topk_from_scorer(scorer, users, exclude_csr, k, chunk=chunk)
