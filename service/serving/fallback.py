"""Answers for users the model has never seen: the popular list and the debiased list.

Both read the training popularity (interactions per item) and the popularity groups of the
served bundle, and never search the index.

- popular: the k most popular items (equal popularity: lower item index first, the tie rule
  of service.serving.ranking). That is the list that hands every slot to the head group.
- debiased: every allowed popularity group gets slots in proportion to its share of the
  training interactions, by largest remainder (equal remainders: the more popular group
  first); a group with fewer qualifying items than its quota is capped at what it has and
  the others share the slots left, again by largest remainder (a group without training
  interactions fills only what the others cannot). Within a group the most popular items
  come first. Groups are
  cut so that each holds about 1/G of the interactions (training.popularity), so the
  quotas are about k/G each: the tail gets as many slots as the head, where `popular`
  gives it none. The slots are interleaved so that every prefix of the list keeps the
  proportions too: an item of rank r (0-based) in a group with quota q sits at (r + 0.5)/q.

Filters apply as to any answer: banned items (exclude) never appear, and only allowed items
(include, groups) do. The score of a fallback item is its share of training interactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PopularityTable:
    """What fallbacks need, built once per bundle.

    Attributes:
        pop: (n_items,) int64 training interactions per item.
        share: (n_items,) float32 pop / total pop (the score of a fallback item).
        by_group: per group g, (n_g,) int64 items of g by popularity, most popular first
            (equal popularity: lower index first).
        group_mass: (G,) float64 training interactions of each group.
    """

    pop: np.ndarray
    share: np.ndarray
    by_group: tuple[np.ndarray, ...]
    group_mass: np.ndarray

    @classmethod
    def build(cls, pop: np.ndarray, groups: np.ndarray, n_groups: int) -> PopularityTable:
        pop = np.asarray(pop, dtype=np.int64)
        order = np.lexsort((np.arange(len(pop)), -pop))  # popularity desc, then index asc
        by_group = tuple(order[groups[order] == g] for g in range(n_groups))
        mass = np.bincount(groups, weights=pop.astype(np.float64), minlength=n_groups)[:n_groups]
        share = (pop / max(1, int(pop.sum()))).astype(np.float32)
        return cls(pop, share, by_group, mass)


def _hamilton(weights: np.ndarray, slots: int) -> np.ndarray:
    """Largest remainder: floors of slots * w / sum(w), the rest to the largest remainders
    (equal remainders: lower index first). weights: (m,) positive."""
    raw = slots * weights / weights.sum()
    quota = np.floor(raw).astype(np.int64)
    order = np.lexsort((np.arange(len(weights)), -(raw - quota)))
    quota[order[: slots - int(quota.sum())]] += 1
    return quota


def _capped(weights: np.ndarray, available: np.ndarray, slots: int) -> np.ndarray:
    """_hamilton, where a group whose quota exceeds its items is capped at them and the slots
    left are shared again, from scratch, by the others. slots <= available.sum()."""
    capped = available == 0
    while True:
        free = np.flatnonzero(~capped)
        quota = np.where(capped, available, 0)
        if len(free):
            quota[free] = _hamilton(weights[free], slots - int(available[capped].sum()))
        over = quota > available
        if not over.any():
            return quota
        capped |= over


def largest_remainder(weights: np.ndarray, available: np.ndarray, k: int) -> np.ndarray:
    """Integer quotas summing to min(k, sum(available)), proportional to `weights`.

    Largest remainder over the groups; a group whose quota exceeds what it has is capped
    at that, and the slots left are shared again by the groups not capped. Groups of zero
    weight share, evenly, only the slots the weighted groups cannot fill.

    Args:
        weights: (G,) non-negative floats (a group's share of interactions).
        available: (G,) int items each group can give.
        k: slots to fill.
    Returns:
        (G,) int64 quotas, quota[g] <= available[g].
    """
    weights = np.asarray(weights, dtype=np.float64)
    available = np.asarray(available, dtype=np.int64)
    slots = min(int(k), int(available.sum()))
    quota = np.zeros(len(weights), dtype=np.int64)
    weighted = weights > 0
    take = min(slots, int(available[weighted].sum()))
    if take:
        quota[weighted] = _capped(weights[weighted], available[weighted], take)
    if slots > take:
        quota[~weighted] = _capped(
            np.ones(int((~weighted).sum())), available[~weighted], slots - take
        )
    return quota


def _qualifying(items: np.ndarray, banned: np.ndarray, need: int) -> np.ndarray:
    """The first `need` of `items` (in order) that are not banned. banned: sorted int64."""
    head = items[: need + len(banned)]  # at most len(banned) of these are dropped
    if len(banned):
        pos = np.minimum(np.searchsorted(banned, head), len(banned) - 1)
        head = head[banned[pos] != head]
    return head[:need]


def candidates(
    table: PopularityTable,
    item_groups: np.ndarray,
    k: int,
    banned: np.ndarray,
    allowed_groups: Sequence[int],
    include: np.ndarray | None,
) -> list[np.ndarray]:
    """Per allowed group, its first k qualifying items by popularity (fewer if it has fewer).

    Args:
        item_groups: (n_items,) popularity group of each item.
        banned: sorted int64 items never returned.
        allowed_groups: group numbers the answer may draw from.
        include: int64 allow-list of items, or None for every item.
    """
    out = []
    inc_groups = item_groups[include] if include is not None else None
    for g in allowed_groups:
        if include is None:
            items = table.by_group[g]
        else:  # the allow-list's items of g, in popularity order: O(|include|), not O(n_g)
            items = include[inc_groups == g]
            items = items[np.lexsort((items, -table.pop[items]))]
        out.append(_qualifying(items, banned, k))
    return out


def popular(table: PopularityTable, per_group: list[np.ndarray], k: int) -> np.ndarray:
    """The k most popular of the candidates: (<= k,) int64 items, most popular first."""
    pool = np.concatenate(per_group) if per_group else np.zeros(0, dtype=np.int64)
    order = np.lexsort((pool, -table.pop[pool]))
    return pool[order[:k]]


def debiased(
    table: PopularityTable, per_group: list[np.ndarray], groups: Sequence[int], k: int
) -> np.ndarray:
    """k slots shared by the groups in proportion to their interactions (module docstring).

    Returns:
        (<= k,) int64 items, interleaved so that every prefix keeps the proportions.
    """
    weights = table.group_mass[list(groups)]
    quota = largest_remainder(weights, np.array([len(c) for c in per_group]), k)
    picked, keys, group_of = [], [], []
    for j, (items, q) in enumerate(zip(per_group, quota.tolist(), strict=True)):
        if q:
            picked.append(items[:q])
            keys.append((np.arange(q) + 0.5) / q)
            group_of.append(np.full(q, j))
    if not picked:
        return np.zeros(0, dtype=np.int64)
    items_all = np.concatenate(picked)
    order = np.lexsort((np.concatenate(group_of), np.concatenate(keys)))
    return items_all[order]
