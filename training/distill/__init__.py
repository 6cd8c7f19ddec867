"""Distillers: `none` (no teacher), `rd`, `cd`, `rrd` and `unkd`."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from training.config import METHODS, DistillConfig
from training.distill.base import Distiller
from training.distill.baselines import (
    CollaborativeDistillation,
    RankingDistillation,
    RelaxedRankingDistillation,
)
from training.distill.unkd import UnKD
from training.errors import ConfigError
from training.popularity import item_popularity, popularity_groups
from training.scoring import TeacherScorer

_REGISTRY: dict[str, type[Distiller]] = {
    "rd": RankingDistillation,
    "cd": CollaborativeDistillation,
    "rrd": RelaxedRankingDistillation,
    "unkd": UnKD,
}


def build_distiller(
    cfg: DistillConfig,
    teacher: TeacherScorer,
    train: sp.csr_matrix,
    device: torch.device,
    *,
    cache_key: str | None = None,
) -> Distiller | None:
    """The distiller of cfg.method, or None for `none` (a student trained on the data only).

    Args:
        teacher: the teacher as a scorer (training.scoring: EmbeddingScorer for mf,
            lightgcn and als, ItemItemScorer for ease; training.teachers.load_scorer).
        train: (n_users, n_items) CSR of training interactions.
        device: where the student trains.
        cache_key: names the teacher (id, version, data, device): candidate lists built for
            it are kept in this process (training.distill.ranking.CANDIDATE_CACHE).
    """
    if cfg.method not in METHODS:
        raise ConfigError(f"method={cfg.method!r}: expected one of {', '.join(METHODS)}")
    if cfg.method == "none":
        return None
    pop = item_popularity(train.tocoo().col, train.shape[1])
    groups = popularity_groups(pop, cfg.unkd.groups)
    return _REGISTRY[cfg.method](cfg, teacher, train, np.asarray(groups), device, cache_key)
