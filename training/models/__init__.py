"""Rankers. Every model exposes embeddings() -> (user_emb, item_emb) and scores by dot product."""

from __future__ import annotations

import scipy.sparse as sp
import torch

from training.errors import ConfigError
from training.models.base import Ranker
from training.models.lightgcn import LightGCN
from training.models.mf import MF

__all__ = ["MF", "LightGCN", "Ranker", "build_model"]


def build_model(
    name: str,
    n_users: int,
    n_items: int,
    dim: int,
    train: sp.csr_matrix,
    *,
    n_layers: int = 3,
    device: torch.device,
) -> Ranker:
    """Model factory: "mf" or "lightgcn", placed on `device`."""
    if dim <= 0:
        raise ConfigError(f"dim={dim}: the embedding dimension must be > 0")
    if name == "mf":
        return MF(n_users, n_items, dim).to(device)
    if name == "lightgcn":
        return LightGCN(n_users, n_items, dim, train, n_layers=n_layers, device=device).to(device)
    raise ConfigError(f"model={name!r}: expected 'mf' or 'lightgcn'")
