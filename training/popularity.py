"""Item popularity and the UnKD popularity groups (DESIGN.md, METRICS.md)."""

from __future__ import annotations

import numpy as np


def item_popularity(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """pop(i): number of training interactions of item i.

    Args:
        train_items: (n_train,) int item index of every (deduplicated) training interaction.
    Returns:
        (n_items,) int64 counts; items never seen in training have 0.
    """
    return np.bincount(np.asarray(train_items, dtype=np.int64), minlength=n_items).astype(np.int64)


def popularity_groups(pop: np.ndarray, n_groups: int = 4) -> np.ndarray:
    """Cut items, sorted by popularity (descending), into groups of equal interaction mass.

    Item k of the sorted order goes to group floor(G * (mass before k) / total mass), so
    group 0 (the head) holds the few most popular items and each group about 1/G of all
    training interactions. Items with pop 0 have the whole mass before them and land in
    the tail group G-1. Ties are broken by item index so the result is deterministic.

    Returns:
        (n_items,) int64 group index, 0 = head ... G-1 = tail.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups={n_groups} must be >= 1")
    pop = np.asarray(pop, dtype=np.int64)
    order = np.lexsort((np.arange(len(pop)), -pop))  # by pop desc, then index asc
    total = pop.sum()
    groups = np.full(len(pop), n_groups - 1, dtype=np.int64)
    if total == 0:
        return groups
    mass_before = np.cumsum(pop[order]) - pop[order]
    groups[order] = np.minimum(n_groups - 1, (n_groups * mass_before) // total)
    return groups


def head_tail_split(pop: np.ndarray, head_mass: float = 0.8) -> np.ndarray:
    """Short head Φ: the smallest prefix of the pop-sorted items whose pop sums to >= head_mass.

    Returns:
        (n_items,) bool, True for short-head items.
    """
    pop = np.asarray(pop, dtype=np.int64)
    order = np.lexsort((np.arange(len(pop)), -pop))
    cum = np.cumsum(pop[order])
    head = np.zeros(len(pop), dtype=bool)
    if cum[-1] == 0:
        return head
    n_head = int(np.searchsorted(cum, head_mass * cum[-1], side="left")) + 1
    head[order[:n_head]] = True
    return head
