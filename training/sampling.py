"""Uniform item draws that avoid a user's training items (and, for RRD, other excluded
items): the negatives of BPR and RRD's uninteresting items. Vectorised rejection."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

# Rejections shrink geometrically; the bound only matters for a user who has seen (almost)
# every item, whose last draws may then stay training items.
REDRAW_ROUNDS = 32


class TrainingPairs:
    """Membership test for (user, item) training pairs: sorted int64 codes, searched in bulk."""

    def __init__(self, train: sp.csr_matrix) -> None:
        coo = train.tocoo()
        self.n_items = int(train.shape[1])
        codes = coo.row.astype(np.int64) * self.n_items + coo.col.astype(np.int64)
        self.codes = torch.from_numpy(np.unique(codes))  # sorted

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """bool tensor shaped like `items` (users broadcast against it)."""
        codes = users * self.n_items + items
        if len(self.codes) == 0:
            return torch.zeros_like(codes, dtype=torch.bool)
        at = torch.searchsorted(self.codes, codes.reshape(-1)).clamp_(max=len(self.codes) - 1)
        return (self.codes[at] == codes.reshape(-1)).reshape(codes.shape)


def draw_unobserved(
    pairs: TrainingPairs,
    users: torch.Tensor,
    shape: tuple[int, ...],
    generator: torch.Generator,
    also_excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform items that are not training items of their user.

    Args:
        users: broadcastable against `shape` (e.g. (n, 1) for shape (n, L)).
        also_excluded: (n, W) items also to avoid per row (e.g. the teacher's top list).
    Returns:
        int64 tensor of `shape`.
    """
    items = torch.randint(0, pairs.n_items, shape, generator=generator)
    users = users.expand(shape)
    bad = pairs.contains(users, items)
    if also_excluded is not None:
        bad |= (items.unsqueeze(-1) == also_excluded.unsqueeze(-2)).any(-1)
    where = bad.nonzero(as_tuple=True)
    for _ in range(REDRAW_ROUNDS):  # only the rejected draws are drawn and checked again
        if len(where[0]) == 0:
            break
        fresh = torch.randint(0, pairs.n_items, where[0].shape, generator=generator)
        items[where] = fresh
        still = pairs.contains(users[where], fresh)
        if also_excluded is not None:
            still |= (fresh.unsqueeze(-1) == also_excluded[where[0]]).any(-1)
        where = tuple(w[still] for w in where)
    return items
