"""How a loss reads embedding rows during training.

MF reads rows through sparse-gradient embedding lookups, so a training step costs
O(batch × d) instead of O(catalogue × d) (SparseAdam updates only the rows a batch
touched). LightGCN propagates over the whole graph first, so its rows come from dense
tensors.
"""

from __future__ import annotations

import torch
from torch import nn


class Lookup:
    """Rows of the user and item embeddings used by one training step."""

    def user(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def item(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DenseLookup(Lookup):
    """Index precomputed (n_users, d) and (n_items, d) tensors."""

    def __init__(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
        self.user_emb, self.item_emb = user_emb, item_emb

    def user(self, idx: torch.Tensor) -> torch.Tensor:
        return self.user_emb[idx]

    def item(self, idx: torch.Tensor) -> torch.Tensor:
        return self.item_emb[idx]


class EmbeddingLookup(Lookup):
    """Call nn.Embedding modules (sparse gradients when they were built with sparse=True)."""

    def __init__(self, user: nn.Embedding, item: nn.Embedding) -> None:
        self._user, self._item = user, item

    def user(self, idx: torch.Tensor) -> torch.Tensor:
        return self._user(idx)

    def item(self, idx: torch.Tensor) -> torch.Tensor:
        return self._item(idx)
