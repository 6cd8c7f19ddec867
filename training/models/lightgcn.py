"""LightGCN (He et al., SIGIR 2020): the mean of K propagations of the ego embeddings
over the symmetrically normalised user–item graph; scored by a dot product."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from training.models.base import Ranker
from training.models.lookup import DenseLookup, Lookup


def normalized_adjacency(train: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph A = [[0, R], [R^T, 0]] as a sparse tensor.

    Args:
        train: (n_users, n_items) binary CSR of training interactions.
    Returns:
        (n_users + n_items, n_users + n_items) sparse COO float32 tensor.
    """
    n_users, n_items = train.shape
    coo = train.tocoo()
    rows = np.concatenate([coo.row, coo.col + n_users])
    cols = np.concatenate([coo.col + n_users, coo.row])
    deg = np.bincount(rows, minlength=n_users + n_items).astype(np.float64)
    inv_sqrt = np.zeros_like(deg)
    inv_sqrt[deg > 0] = deg[deg > 0] ** -0.5
    vals = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    idx = torch.from_numpy(np.vstack([rows, cols]).astype(np.int64))
    adj = torch.sparse_coo_tensor(
        idx, torch.from_numpy(vals), (n_users + n_items,) * 2, check_invariants=False
    )
    return adj.coalesce().to(device)


class LightGCN(Ranker):
    sparse = False  # propagation touches every row: dense gradients, plain Adam
    propagates = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        train: sp.csr_matrix,
        *,
        n_layers: int = 3,
        device: torch.device | None = None,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        self.adj = normalized_adjacency(train, device or torch.device("cpu"))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> LightGCN:
        # Keep the (non-parameter) adjacency on the same device as the embeddings.
        super()._apply(fn, recurse)
        self.adj = fn(self.adj)
        return self

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated embeddings, with gradients: (n_users, d), (n_items, d)."""
        x = torch.cat([self.user.weight, self.item.weight])
        out = x
        for _ in range(self.n_layers):
            x = torch.sparse.mm(self.adj, x)
            out = out + x
        out = out / (self.n_layers + 1)
        return out[: self.n_users], out[self.n_users :]

    def lookup(self) -> Lookup:
        """Rows for one training step: propagate once, then index."""
        return DenseLookup(*self.embeddings())

    def ego_lookup(self) -> Lookup:
        """Rows the weight decay applies to: the layer-0 (ego) embeddings."""
        return DenseLookup(self.user.weight, self.item.weight)
