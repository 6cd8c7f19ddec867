"""The closed loop's click model and per-round metrics (bench/loop.py), as pure functions.

Everything here takes plain arrays: the served lists as item indices (n_users, k), with -1
where a list is shorter than k; the true preference scores of the synthetic generator
(training.synthetic: score(u, i) = user_factors[u] @ item_factors[i]); a boolean matrix of
what each user has already consumed (their interactions in the round-0 dataset, every
split, plus what they clicked in earlier rounds).

Click model (position-based, the examination hypothesis): a user looks at position p
(1-based) with probability 1 / log2(p + 1) and, having looked, clicks with probability
sigmoid(a * true_score + b); an item the user has already consumed is never clicked.

True-preference NDCG@k (the oracle only synthetic data allows): binary relevance, an item is
relevant to a user when it is among the user's `relevant_top` best items by true score among
the items they have not consumed yet; DCG = sum over positions of rel / log2(p + 1) and the
ideal DCG puts min(k, relevant_top) relevant items first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Chosen so that the base click rate is a few per cent (docs/loop.md). True scores have a
# spread of about 1.1 around 0 on the default synthetic data (1,000 x 800, seed 0), and the
# position discount averages 0.46 over 10 slots: a list of the most popular unconsumed items
# gets 38 clicks per 1,000 slots, a random list 32, the true top-10 196.
CLICK_A = 1.0
CLICK_B = -3.0
RELEVANT_TOP = 50


def examination(k: int) -> np.ndarray:
    """(k,) float64: the probability that position p = 1..k is looked at, 1 / log2(p + 1)."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def click_probability(
    true_scores: np.ndarray, consumed: np.ndarray, a: float = CLICK_A, b: float = CLICK_B
) -> np.ndarray:
    """P(click) of every slot of the served lists.

    Args:
        true_scores: (n_users, k) the true score of the item in each slot.
        consumed: (n_users, k) bool, the slot's item is already consumed (or the slot is empty).
    Returns:
        (n_users, k) float64 sigmoid(a * s + b) / log2(p + 1), 0 where consumed.
    """
    s = np.asarray(true_scores, dtype=np.float64)
    attract = 1.0 / (1.0 + np.exp(-(a * s + b)))
    p = attract * examination(s.shape[1])[None, :]
    return np.where(np.asarray(consumed, dtype=bool), 0.0, p)


def draw_clicks(prob: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_users, k) bool: one Bernoulli draw per slot. The uniforms are drawn for every slot,
    so two arms with the same seed use the same random numbers slot by slot."""
    return rng.random(prob.shape) < prob


def head_share(items: np.ndarray, head: np.ndarray) -> float | None:
    """Share of the shown slots (or clicks) whose item is in the head.

    Args:
        items: item indices, any shape; -1 entries (empty slots) are ignored.
        head: (n_items,) bool, the head group.
    Returns:
        the share, or None when there is no slot.
    """
    flat = np.asarray(items, dtype=np.int64).ravel()
    flat = flat[flat >= 0]
    if len(flat) == 0:
        return None
    return float(np.asarray(head, dtype=bool)[flat].mean())


def exposure_counts(items: np.ndarray, n_items: int) -> np.ndarray:
    """(n_items,) int64: how many slots showed each item (-1 entries ignored)."""
    flat = np.asarray(items, dtype=np.int64).ravel()
    return np.bincount(flat[flat >= 0], minlength=n_items).astype(np.int64)


def coverage(items: np.ndarray, n_items: int) -> float:
    """Distinct items shown / catalogue size."""
    return float((exposure_counts(items, n_items) > 0).sum() / n_items)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of exposure over items (items never shown included, as zeros).

    0 = every item shown equally often, (n - 1) / n = one item takes every slot. With the
    counts sorted ascending x_1 <= ... <= x_n: G = 2 sum_i i x_i / (n sum x) - (n + 1) / n.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64).ravel())
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks * x).sum() / (n * total) - (n + 1) / n)


def per_1000(clicks: int, exposures: int) -> float | None:
    """Clicks per 1,000 exposures; None without exposures."""
    return None if exposures == 0 else 1000.0 * clicks / exposures


def true_ndcg(
    lists: np.ndarray,
    scores: np.ndarray,
    consumed: np.ndarray,
    relevant_top: int = RELEVANT_TOP,
) -> float:
    """Mean true-preference NDCG@k of the served lists (binary relevance; module docstring).

    Args:
        lists: (n_users, k) item indices, -1 = empty slot.
        scores: (n_users, n_items) true preference scores of the same users.
        consumed: (n_users, n_items) bool, what each user has consumed before this round.
        relevant_top: an item is relevant when it is among this many best unconsumed items
            (ties broken by lower item index first).
    Returns:
        NDCG@k averaged over users with at least one unconsumed item.
    """
    lists = np.asarray(lists, dtype=np.int64)
    n_users, k = lists.shape
    open_scores = np.where(consumed, -np.inf, np.asarray(scores, dtype=np.float64))
    discount = examination(k)
    total, counted = 0.0, 0
    for u in range(n_users):  # small n_users in the bench; argsort keeps the tie rule exact
        n_open = int(np.isfinite(open_scores[u]).sum())
        if n_open == 0:
            continue
        order = np.lexsort((np.arange(open_scores.shape[1]), -open_scores[u]))
        relevant = np.zeros(open_scores.shape[1], dtype=bool)
        relevant[order[: min(relevant_top, n_open)]] = True
        shown = lists[u]
        gains = np.where(shown >= 0, relevant[np.maximum(shown, 0)], False)
        ideal = discount[: min(k, relevant_top, n_open)].sum()
        total += float((gains * discount).sum() / ideal)
        counted += 1
    return total / counted if counted else 0.0


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the values not None."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
