"""Defaults that depend on the data: resolved against the training split just before a
model trains, so the manifest records the number that was used, never "auto".

The rule (training.config.DECAY_AT_DENSITY_1, docs/quality.md): a BPR student's L2 weight
grows as the data gets sparser, 0.015 × density^(-1/4), where density is the share of the
user × item matrix that holds a training interaction.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import scipy.sparse as sp

from training.config import DECAY_AT_DENSITY_1, OptimConfig, TeacherModelName

C = TypeVar("C", bound=OptimConfig)

# Kept inside what the rule was measured on (densities 0.07 % to 6.3 %) and a little beyond.
DECAY_RANGE = (0.003, 0.3)


def density_decay(train: sp.spmatrix) -> float:
    """The L2 weight for a BPR model trained on `train` ((n_users, n_items), nnz observed)."""
    n_users, n_items = train.shape
    density = train.nnz / max(1, n_users * n_items)
    if density <= 0:
        return DECAY_RANGE[1]
    low, high = DECAY_RANGE
    return float(min(high, max(low, DECAY_AT_DENSITY_1 * density**-0.25)))


# UnKD's pairs per user (Chen et al. use N = 30): where users have few training interactions,
# 30 pairs per user outnumber the training pairs several times over (Amazon-Beauty: 7.2 per
# user, so 4.2 x) and make a UnKD epoch cost 4 x a BPR epoch. At most PAIRS_PER_INTERACTION
# pairs per training interaction keeps it near 2.5 x; on Amazon-Beauty (EASE teacher) N = 12
# gave the same validation NDCG@20 as N = 30 (0.0569) in 51 s against 84 s (docs/quality.md).
MAX_PAIRS_PER_USER = 30
PAIRS_PER_INTERACTION = 2.0


def unkd_pairs_per_user(train: sp.spmatrix, groups: int) -> int:
    """N for `pairs_per_user: auto`: min(30, 2 x training interactions per user), >= groups."""
    n_users = max(1, train.shape[0])
    per_user = PAIRS_PER_INTERACTION * train.nnz / n_users
    return int(min(MAX_PAIRS_PER_USER, max(groups, math.floor(per_user))))


def resolve(cfg: C, train: sp.spmatrix) -> C:
    """`cfg` with every "auto" field replaced by its value on this training split."""
    update: dict[str, Any] = {}
    if cfg.decay == "auto":
        update["decay"] = round(density_decay(train), 5)
    unkd = getattr(cfg, "unkd", None)
    if unkd is not None and unkd.pairs_per_user == "auto":
        pairs = unkd_pairs_per_user(train, unkd.groups)
        update["unkd"] = unkd.model_copy(update={"pairs_per_user": pairs})
    return cfg.model_copy(update=update) if update else cfg


def decay_of(cfg: OptimConfig, train: sp.spmatrix) -> float:
    """The L2 weight `cfg` trains with on `train`."""
    return density_decay(train) if cfg.decay == "auto" else float(cfg.decay)


def default_teacher_model(
    n_users: int, n_items: int, limit_bytes: int | None = None
) -> TeacherModelName:
    """The teacher a job gets when it names none: EASE (the best teacher of bench/quality.py on
    MovieLens-100K, Amazon-Beauty and the synthetic data), or ALS where EASE does not fit: a
    catalogue over EASE_MAX_ITEMS items, or an EASE solve over `limit_bytes`."""
    from training.budget import EASE_MAX_ITEMS, teacher_bytes
    from training.config import TeacherConfig

    if n_items > EASE_MAX_ITEMS:
        return "als"
    if limit_bytes is not None and teacher_bytes(n_users, n_items, TeacherConfig()) > limit_bytes:
        return "als"
    return "ease"
