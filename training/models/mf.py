"""Matrix factorisation: score(u, i) = <p_u, q_i>."""

from __future__ import annotations

import torch
from torch import nn


class MF(nn.Module):
    """Plain MF scored by a dot product, trained with BPR by training.trainer."""

    def __init__(self, n_users: int, n_items: int, dim: int, *, init_std: float = 0.1) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings, with gradients: (n_users, d), (n_items, d)."""
        return self.user.weight, self.item.weight

    def ego_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameters the weight decay applies to (same as embeddings() for MF)."""
        return self.user.weight, self.item.weight
