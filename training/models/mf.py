"""Matrix factorisation: score(u, i) = <p_u, q_i>."""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import Ranker
from training.models.lookup import EmbeddingLookup, Lookup

# Up to this many parameters, dense gradients and plain Adam are faster than sparse ones and
# SparseAdam (Amazon-Beauty, dim 10, 345k parameters: a UnKD epoch 0.55-0.80 s against
# 1.0-1.07 s), and as accurate (plain BPR-10 test NDCG@20 0.0446 against 0.0445). Above it,
# a dense step's cost grows with the whole table while a sparse one's stays O(batch x d);
# bench/scale.py's 100k x 50k table at dim 10 (1.5 M) stays sparse, as measured there.
DENSE_MAX_PARAMS = 1_000_000


class MF(Ranker):
    """Plain MF scored by a dot product, trained with BPR by training.trainer.

    Small tables train with dense gradients and Adam; large ones with sparse gradients and
    SparseAdam (`sparse`; DENSE_MAX_PARAMS).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        *,
        init_std: float = 0.1,
        sparse: bool | None = None,
    ) -> None:
        super().__init__()
        self.sparse = (n_users + n_items) * dim > DENSE_MAX_PARAMS if sparse is None else sparse
        self.user = nn.Embedding(n_users, dim, sparse=self.sparse)
        self.item = nn.Embedding(n_items, dim, sparse=self.sparse)
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
        """Rows for one training step (sparse gradients on a large table)."""
        return EmbeddingLookup(self.user, self.item)

    def ego_lookup(self) -> Lookup:
        """Rows the weight decay applies to (the same parameters for MF)."""
        return EmbeddingLookup(self.user, self.item)
