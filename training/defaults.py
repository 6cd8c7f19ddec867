"""Defaults that depend on the data: resolved against the training split just before a
model trains, so the manifest records the number that was used, never "auto".

The rule (training.config.DECAY_AT_DENSITY_1, docs/quality.md): a BPR student's L2 weight
grows as the data gets sparser, 0.015 × density^(-1/4), where density is the share of the
user × item matrix that holds a training interaction.
"""

from __future__ import annotations

from typing import TypeVar

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


def resolve(cfg: C, train: sp.spmatrix) -> C:
    """`cfg` with every "auto" field replaced by its value on this training split."""
    if cfg.decay == "auto":
        return cfg.model_copy(update={"decay": round(density_decay(train), 5)})
    return cfg


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
