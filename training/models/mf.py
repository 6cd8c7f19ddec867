"""Matrix factorisation: score(u, i) = <p_u, q_i>."""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import Ranker
from training.models.lookup import EmbeddingLookup, Lookup


class MF(Ranker):
    """Plain MF scored by a dot product, trained with BPR by training.trainer.

    Embeddings have sparse gradients: train with torch.optim.SparseAdam.
    """

    sparse = True

    def __init__(self, n_users: int, n_items: int, dim: int, *, init_std: float = 0.1) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim, sparse=True)
        self.item = nn.Embedding(n_items, dim, sparse=True)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings, with gradients: (n_users, d), (n_items, d)."""
        return self.user.weight, self.item.weight

    def set_embeddings(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
        """Start from given factors: (n_users, d) and (n_items, d)."""
        if user_emb.shape != self.user.weight.shape or item_emb.shape != self.item.weight.shape:
            raise ValueError(
                f"factors {tuple(user_emb.shape)}, {tuple(item_emb.shape)} do not fit "
                f"{tuple(self.user.weight.shape)}, {tuple(self.item.weight.shape)}"
            )
        with torch.no_grad():
            self.user.weight.copy_(user_emb)
            self.item.weight.copy_(item_emb)

    def lookup(self) -> Lookup:
        """Rows for one training step (sparse gradients)."""
        return EmbeddingLookup(self.user, self.item)

    def ego_lookup(self) -> Lookup:
        """Rows the weight decay applies to (the same parameters for MF)."""
        return EmbeddingLookup(self.user, self.item)
