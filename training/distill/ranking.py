"""One-off teacher rankings, computed in user chunks so memory never grows as users × items,
and the rank sampler every distiller shares."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch


class CandidateLists:
    """For every user, the teacher's best unobserved items of each group, best first.

    All groups live side by side in one (n_users, sum_g L_g) int32 tensor: group g occupies
    columns offsets[g] : offsets[g] + widths[g]. lengths[u, g] says how many of those
    columns are real items for user u (a user who saw most of a small group has fewer);
    the rest hold -1.
    """

    def __init__(self, items: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor,
                 widths: torch.Tensor) -> None:
        self.items = items  # (n_users, sum L_g) int32 item ids, -1 = none
        self.lengths = lengths  # (n_users, G) int64
        self.offsets = offsets  # (G,) int64
        self.widths = widths  # (G,) int64

    @property
    def n_groups(self) -> int:
        return int(self.offsets.numel())

    def nbytes(self) -> int:
        return self.items.element_size() * self.items.numel()


def _seen_mask_rows(train: sp.csr_matrix, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk-relative row, item) index pairs of the training items of `rows`."""
    sub = train[rows]
    r = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
    return torch.from_numpy(r.astype(np.int64)), torch.from_numpy(sub.indices.astype(np.int64))


def teacher_candidates(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    train: sp.csr_matrix,
    groups: np.ndarray,
    top_l: int,
    *,
    chunk: int = 1024,
) -> CandidateLists:
    """Rank every group's unobserved items by teacher score and keep the top L per user.

    Args:
        user_emb: (n_users, d) teacher user embeddings (on the device to compute on).
        item_emb: (n_items, d) teacher item embeddings.
        train: (n_users, n_items) CSR of training interactions (excluded from the lists).
        groups: (n_items,) group of each item; pass zeros for one list over all items.
        top_l: maximum list length per (user, group).
        chunk: users scored at once; peak memory ~ chunk × n_items floats.
    """
    device = user_emb.device
    n_users, n_items = train.shape
    n_groups = int(groups.max()) + 1
    # Lay items out group by group so each group's scores are a contiguous column slice
    # (a view, not a gathered copy of chunk × |group| floats).
    order = np.argsort(groups, kind="stable")
    position = np.empty(n_items, dtype=np.int64)
    position[order] = np.arange(n_items)
    group_sizes = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
    widths = torch.from_numpy(np.minimum(top_l, group_sizes).astype(np.int64))
    offsets = torch.cumsum(widths, 0) - widths
    total = int(widths.sum())
    # int32 ids: the lists are the largest thing UnKD keeps (users × G × L).
    out = torch.full((n_users, total), -1, dtype=torch.int32)

    # Unobserved items per (user, group): group size minus the user's training items in it.
    seen_per_group = np.zeros((n_users, n_groups), dtype=np.int64)
    coo = train.tocoo()
    np.add.at(seen_per_group, (coo.row, groups[coo.col]), 1)
    lengths = torch.from_numpy(np.minimum(group_sizes[None, :] - seen_per_group, widths.numpy()[None, :]))
    group_of_col = torch.repeat_interleave(torch.arange(n_groups), widths)
    rank_of_col = torch.arange(total) - offsets[group_of_col]

    order_t = torch.from_numpy(order).to(device)
    position_t = torch.from_numpy(position).to(device)  # item id -> column in items_by_group
    items_by_group = item_emb[order_t]
    with torch.no_grad():
        for start in range(0, n_users, chunk):
            rows = np.arange(start, min(start + chunk, n_users))
            scores = user_emb[start : start + len(rows)] @ items_by_group.T  # (b, n_items)
            r, c = _seen_mask_rows(train, rows)
            scores[r.to(device), position_t[c.to(device)]] = -math.inf
            block = torch.empty((len(rows), total), dtype=torch.int64, device=device)
            for g in range(n_groups):  # a handful of groups, once per chunk: not per epoch
                w, lo = int(widths[g]), int(starts[g])
                if w == 0:
                    continue
                top = torch.topk(scores[:, lo : lo + int(group_sizes[g])], w, dim=1, sorted=True).indices
                block[:, offsets[g] : offsets[g] + w] = order_t[top + lo]
            # Columns past a user's length point at seen items (scored -inf): blank them out.
            past = rank_of_col.unsqueeze(0) >= lengths[start : start + len(rows)][:, group_of_col]
            block = block.cpu()
            block[past] = -1
            out[start : start + len(rows)] = block.to(torch.int32)
    return CandidateLists(out, lengths, offsets, widths)


def sample_ranks(lengths: torch.Tensor, mu: float, generator: torch.Generator) -> torch.Tensor:
    """Draw ranks r in [0, n) with P(r) ∝ exp(-r/mu), one per entry of `lengths` (n >= 1).

    Inverse CDF of the truncated geometric law: with q = exp(-1/mu),
    F(r) = (1 - q^(r+1)) / (1 - q^n), so r = floor(log(1 - U (1 - q^n)) / log q).
    """
    q = math.exp(-1.0 / mu)
    n = lengths.to(torch.float64)
    u = torch.rand(lengths.shape, generator=generator, dtype=torch.float64)
    r = torch.floor(torch.log1p(-u * (1.0 - q**n)) / math.log(q)).to(torch.int64)
    return torch.minimum(r, lengths.to(torch.int64) - 1).clamp_(min=0)


def rank_probabilities(n: int, mu: float) -> np.ndarray:
    """The exact law sample_ranks draws from, for a list of length n (for tests and docs)."""
    w = np.exp(-np.arange(n) / mu)
    return w / w.sum()
