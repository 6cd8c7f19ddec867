"""Pure logic of the serving features on hand-computed cases: the tie rule, the search width,
the fold-in, the fallback quotas."""

from __future__ import annotations

import numpy as np
import pytest

from service.serving.fallback import (
    PopularityTable,
    candidates,
    debiased,
    largest_remainder,
    popular,
)
from service.serving.filters import EXACT_SCAN_ITEMS, MAX_SEARCH_WIDTH, search_width
from service.serving.foldin import fold_in, mean_sq_norm
from service.serving.ranking import exact_topk, settle_hits

NEG = -np.inf


# -- the tie rule -------------------------------------------------------------------------


def test_exact_topk_takes_the_lowest_items_tied_at_the_cut_and_orders_ties_by_index() -> None:
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, NEG, 5.0], dtype=np.float32)
    s, i = exact_topk(scores, None, 5)
    assert i.tolist() == [7, 1, 3, 2, 4]  # 5 > 3 = 3 > 2 = 2 (of items 2, 4, 5: the lowest two)
    assert s.tolist() == [5.0, 3.0, 3.0, 2.0, 2.0]


def test_exact_topk_maps_positions_to_items_and_pads() -> None:
    scores = np.array([0.5, NEG, 0.5], dtype=np.float32)
    s, i = exact_topk(scores, np.array([10, 20, 30]), 4)
    assert i.tolist() == [10, 30, -1, -1]  # -inf is never returned
    assert s[:2].tolist() == [0.5, 0.5] and np.isneginf(s[2:]).all()
    assert exact_topk(np.zeros(0, dtype=np.float32), None, 3)[1].tolist() == [-1, -1, -1]


def test_settle_hits_refuses_a_cut_it_cannot_prove() -> None:
    # faiss-like row: best first, ties in heap order (higher index first)
    s = np.array([4.0, 3.0, 3.0, 2.0], dtype=np.float32)
    i = np.array([9, 5, 2, 7])
    ok = np.ones(4, dtype=bool)
    settled = settle_hits(s, i, ok, 2, searched_all=False)
    assert settled is not None and settled[1].tolist() == [9, 2]  # tie at the cut, both searched
    assert settle_hits(s, i, ok, 3, searched_all=False)[1].tolist() == [9, 2, 5]  # type: ignore[index]
    # k-th kept score equals the lowest searched one: an unsearched item may tie with it
    assert settle_hits(s, i, ok, 4, searched_all=False) is None
    assert settle_hits(s, i, np.array([True, False, False, True]), 2, searched_all=False) is None
    # ... unless every item was searched
    assert settle_hits(s, i, ok, 4, searched_all=True)[1].tolist() == [9, 2, 5, 7]  # type: ignore[index]
    short = settle_hits(s, i, np.array([True, False, False, False]), 2, searched_all=True)
    assert short is not None and short[1].tolist() == [9, -1]


# -- the search width ---------------------------------------------------------------------


def test_search_width_rule() -> None:
    n = 100_000
    assert search_width(n, 20, 30, None) == 51  # k + 1 + banned: exact
    assert search_width(50, 20, 40, None) == 50  # never wider than the catalogue
    assert search_width(n, 20, 0, EXACT_SCAN_ITEMS) is None  # small allow-list: exact scan
    assert search_width(n, 20, 0, 50_000) == 84  # (k + 1) / f * 2
    assert search_width(n, 20, 0, 5_000) == 840  # f = 1/20
    assert search_width(n, 50, 0, 4_100) is None  # 51 / 0.041 * 2 = 2488: wider than a scan
    assert search_width(n, 20, MAX_SEARCH_WIDTH, None) is None  # too wide: exact scan


# -- fold-in --------------------------------------------------------------------------------


def test_fold_in_is_the_ridge_solution() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((30, 6)).astype(np.float32)
    hist = np.array([3, 7, 7, 12, 20])  # 7 twice: counted once
    u = fold_in(q, hist, lam=0.5)
    qs = q[[3, 7, 12, 20]].astype(np.float64)
    want = np.linalg.inv(qs.T @ qs + 0.5 * np.eye(6)) @ qs.T @ np.ones(4)
    np.testing.assert_allclose(u, want, rtol=1e-4)
    # a strong prior leaves the direction of the history's summed item vectors
    far = fold_in(q, hist, lam=1e8)
    direction = qs.sum(axis=0)
    cos = far @ direction / np.linalg.norm(far) / np.linalg.norm(direction)
    assert cos > 0.9999
    assert mean_sq_norm(q, chunk=7) == pytest.approx(
        float((q.astype(np.float64) ** 2).sum(1).mean())
    )
    with pytest.raises(ValueError, match="empty"):
        fold_in(q, np.array([], dtype=np.int64), 1.0)
    with pytest.raises(ValueError, match="lam"):
        fold_in(q, hist, 0.0)


# -- fallback ---------------------------------------------------------------------------------


def test_largest_remainder_quotas() -> None:
    even = np.ones(4)
    assert largest_remainder(even, np.full(4, 99), 10).tolist() == [3, 3, 2, 2]  # ties: head first
    assert largest_remainder(np.array([0.5, 0.3, 0.2]), np.full(3, 99), 7).tolist() == [4, 2, 1]
    # 3.5, 2.1, 1.4 -> 3, 2, 1 and the last slot to the largest remainder (0.5)
    capped = largest_remainder(even, np.array([1, 10, 10, 10]), 10)
    assert capped.tolist() == [1, 3, 3, 3]  # a group's unused slots go to the others
    assert largest_remainder(even, np.array([1, 0, 2, 0]), 10).tolist() == [1, 0, 2, 0]
    assert largest_remainder(np.array([1.0, 0.0]), np.array([1, 5]), 3).tolist() == [1, 2]
    assert largest_remainder(np.array([1.0, 0.0]), np.array([5, 5]), 3).tolist() == [3, 0]
    assert largest_remainder(np.zeros(2), np.array([5, 5]), 3).tolist() == [2, 1]


@pytest.fixture()
def table() -> tuple[PopularityTable, np.ndarray]:
    #            item:   0  1  2  3  4  5  6  7  8  9
    pop = np.array([9, 1, 9, 2, 1, 0, 3, 0, 2, 1])
    groups = np.array([0, 2, 0, 1, 2, 3, 1, 3, 1, 2])
    return PopularityTable.build(pop, groups, 4), groups


def test_popular_is_the_popularity_order_with_the_tie_rule(table) -> None:
    t, groups = table
    assert [g.tolist() for g in t.by_group] == [[0, 2], [6, 3, 8], [1, 4, 9], [5, 7]]
    per_group = candidates(t, groups, 5, np.array([2]), range(4), None)
    assert popular(t, per_group, 5).tolist() == [0, 6, 3, 8, 1]  # item 2 banned
    assert t.share[0] == pytest.approx(9 / 28)


def test_debiased_shares_slots_by_interactions_and_interleaves(table) -> None:
    t, groups = table
    # masses g0 18, g1 7, g2 3, g3 0 of 28; k = 6: 3.86, 1.50, 0.64 -> 3, 1, 0 and two slots by
    # remainder (g0, g2): 4, 1, 1. g0 has 2 items: capped; the 4 slots left go to g1 and g2 by
    # 7 : 3 -> 2.8, 1.2 -> 3, 1. Quotas 2, 3, 1, 0 (g3 has no interactions, so no share).
    per_group = candidates(t, groups, 6, np.zeros(0, dtype=np.int64), range(4), None)
    items = debiased(t, per_group, range(4), 6)
    # slot keys (r + 0.5) / q: g1's 1/6, g0's 1/4, g1's 1/2 = g2's 1/2 (head first), g0's 3/4, g1's 5/6
    assert items.tolist() == [6, 0, 3, 1, 2, 8]
    # the popular list of the same candidates hands the tail nothing
    assert groups[popular(t, per_group, 6)].tolist() == [0, 0, 1, 1, 1, 2]


def test_fallback_filters_restrict_the_candidates(table) -> None:
    t, groups = table
    only_tail = candidates(t, groups, 3, np.array([6]), [1, 2], None)
    assert [c.tolist() for c in only_tail] == [[3, 8], [1, 4, 9]]  # item 6 banned
    included = candidates(
        t, groups, 3, np.zeros(0, dtype=np.int64), range(4), np.array([9, 8, 2, 6])
    )
    assert [c.tolist() for c in included] == [[2], [6, 8], [9], []]  # include, in popularity order
    # 1.93, 0.75, 0.32 -> 2, 1, 0; g0 has 1 item: the 2 slots left go 1.4 : 0.6 -> 1, 1
    assert debiased(t, included, range(4), 3).tolist() == [2, 6, 9]
