"""What the trainer and the evaluation need of a ranker: dot-product embeddings and the
rows one training step reads."""

from __future__ import annotations

import torch
from torch import nn

from training.models.lookup import Lookup


class Ranker(nn.Module):
    """Base of the models: scored by <user_emb[u], item_emb[i]>.

    `sparse` says how the embeddings are trained: True for sparse-gradient lookups
    (torch.optim.SparseAdam), False for dense gradients (Adam).
    """

    sparse: bool = False
    # True when the scored embeddings are computed from the parameters (LightGCN's
    # propagation): the weight decay then reads the parameter (ego) rows separately.
    propagates: bool = False

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings, with gradients: (n_users, d), (n_items, d)."""
        raise NotImplementedError

    def lookup(self) -> Lookup:
        """Rows for one training step, read by the BPR and distillation losses."""
        raise NotImplementedError

    def ego_lookup(self) -> Lookup:
        """Rows the weight decay applies to."""
        raise NotImplementedError
