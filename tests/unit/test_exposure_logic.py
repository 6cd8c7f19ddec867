"""The pure logic of live exposure and experiments, on hand-computed cases: the counts of a
flush, bucket summing, the figures (head share, ARP, coverage, Gini, latency quantiles),
and the sticky arm assignment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.serving.experiment import assignment_point, cumulative_weights, pick_arm
from service.serving.exposure.counts import (
    LATENCY_BINS,
    LATENCY_EDGES_S,
    Counts,
    aggregate,
    decode_items,
    latency_bins,
    latency_quantile_ms,
    scope_figures,
    window_buckets,
)

# Four items: 0 and 1 in the head group (popularity 10 and 6), 2 in group 1, 3 in group 2.
GROUPS = np.array([0, 0, 1, 2])
POP = np.array([10, 6, 2, 1])


def two_answers() -> Counts:
    """A single GET showing items 0, 1 (k=3, one slot empty) after 1 ms, and a batch of two
    users (k=2) after 2 ms: one shown item 2, the other nothing."""
    return aggregate(
        [(np.array([0, 1, -1]), 0.001), (np.array([[2, -1], [-1, -1]]), 0.002)], GROUPS, POP, 3
    )


# -- a flush's counts --------------------------------------------------------------------------


def test_aggregate_counts_answers_slots_groups_items_and_per_list_popularity() -> None:
    c = two_answers()
    assert c.requests == 3  # lists: the batch counts two
    assert c.slots == 3 and c.lists == 2  # the empty list has no popularity
    assert c.groups.tolist() == [2, 1, 0]
    assert c.items is not None and c.items.tolist() == [1, 1, 1, 0]
    # ARP sums each list's mean: (10 + 6) / 2 + 2 / 1 = 10; per slot it would be 18 / 3 = 6.
    assert c.pop_mean_sum == pytest.approx(10.0)
    assert c.latency.sum() == 2 and len(c.latency) == LATENCY_BINS
    assert latency_bins(np.array([0.001, 0.002])).tolist() == np.flatnonzero(c.latency).tolist()


def test_counts_survive_a_redis_hash_round_trip_and_add_up() -> None:
    c = two_answers()
    raw = {k.encode(): str(v).encode() for k, v in c.fields().items()}
    raw[b"pop_mean_sum"] = repr(c.pop_mean_sum).encode()
    back = Counts.from_hash(raw, 3)
    assert (back.requests, back.slots, back.lists, back.pop_mean_sum) == (3, 3, 2, 10.0)
    assert back.groups.tolist() == [2, 1, 0] and back.latency.tolist() == c.latency.tolist()
    assert "g:2" not in c.fields()  # zeros are not written
    total = Counts.zero(3, 4)
    total.add(c)
    total.add(c)
    assert total.requests == 6 and total.groups.tolist() == [4, 2, 0]
    assert total.items is not None and total.items.tolist() == [2, 2, 2, 0]


def test_item_pairs_are_little_endian_item_count_pairs() -> None:
    c = Counts.zero(1, 6)
    assert c.items is not None
    c.items[[1, 5]] = [3, 70000]
    pairs = np.frombuffer(c.item_pairs(), dtype="<u4").reshape(-1, 2)
    assert pairs.tolist() == [[1, 3], [5, 70000]]


# -- buckets ---------------------------------------------------------------------------------


def test_window_buckets_are_those_begun_in_the_last_600_s() -> None:
    on_edge = window_buckets(1000.0, 600, 10)  # buckets 40 (400-410 s) .. 100 (1000 s, current)
    assert (on_edge.start, on_edge.stop) == (40, 101) and len(on_edge) == 61
    mid = window_buckets(1005.0, 600, 10)  # bucket 40 began 605 s ago: out
    assert (mid.start, mid.stop) == (41, 101)


def test_decode_items_sums_dense_big_endian_strings() -> None:
    a = np.array([1, 0, 2], dtype=">u4").tobytes()
    b = np.array([0, 5], dtype=">u4").tobytes()  # a shorter string: the rest counts zero
    assert decode_items([a, None, b, a], 4).tolist() == [2, 5, 4, 0]
    assert decode_items([np.array([1, 1, 1, 1, 9], dtype=">u4").tobytes()], 4).tolist() == [
        1,
        1,
        1,
        1,
    ]


# -- figures -----------------------------------------------------------------------------------


def test_scope_figures_on_a_hand_case() -> None:
    c = two_answers()
    f = scope_figures(c, 4, [0.5, 0.3, 0.2])
    assert f.requests == 3 and f.slots == 3
    assert f.head_share == pytest.approx(2 / 3)
    assert [g.share for g in f.groups] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert [g.offline_share for g in f.groups] == [0.5, 0.3, 0.2]
    assert f.arp == pytest.approx(5.0)  # (8 + 2) / 2 lists
    assert f.coverage == pytest.approx(3 / 4) and f.distinct_items == 3
    # RecBole Gini of counts (0, 1, 1, 1): sorted c_j, sum (2j - n - 1) c_j / (n N)
    assert f.gini == pytest.approx(((-1) * 1 + 1 * 1 + 3 * 1) / (4 * 3))
    assert f.latency_ms.p50 is not None and f.latency_ms.p99 is not None
    assert f.latency_ms.p50 == pytest.approx(1.0, rel=0.07) and f.latency_ms.p99 == pytest.approx(
        2.0, rel=0.07
    )


def test_gini_and_coverage_at_the_extremes() -> None:
    one = Counts.zero(1, 4)
    assert one.items is not None
    one.items[2], one.slots, one.groups[0] = 8, 8, 8
    f = scope_figures(one, 4, None)
    assert f.gini == pytest.approx(3 / 4) and f.coverage == pytest.approx(
        1 / 4
    )  # one item takes every slot
    even = Counts.zero(1, 4)
    assert even.items is not None
    even.items[:], even.slots, even.groups[0] = 5, 20, 20
    f = scope_figures(even, 4, None)
    assert f.gini == pytest.approx(0.0) and f.coverage == pytest.approx(1.0)
    assert f.groups[0].offline_share is None


def test_an_empty_span_has_counts_and_no_figures() -> None:
    f = scope_figures(Counts.zero(3, 4), 4, None)
    assert (f.requests, f.slots, f.distinct_items) == (0, 0, 0)
    assert f.head_share is None and f.arp is None and f.coverage is None and f.gini is None
    assert [g.share for g in f.groups] == [None, None, None]
    assert f.latency_ms.p50 is None and f.latency_ms.p99 is None


def test_latency_quantiles_are_nearest_rank_within_the_bin_width() -> None:
    fast, slow = 0.0008, 0.120
    hist = np.bincount(latency_bins(np.array([fast] * 98 + [slow] * 2)), minlength=LATENCY_BINS)
    ratio = math.sqrt(LATENCY_EDGES_S[1] / LATENCY_EDGES_S[0])  # half a bin, geometrically
    assert latency_quantile_ms(hist, 0.5) == pytest.approx(fast * 1e3, rel=ratio - 1)
    assert latency_quantile_ms(hist, 0.99) == pytest.approx(slow * 1e3, rel=ratio - 1)
    hist = np.bincount(latency_bins(np.array([fast] * 99 + [slow])), minlength=LATENCY_BINS)
    assert latency_quantile_ms(hist, 0.99) == pytest.approx(
        fast * 1e3, rel=ratio - 1
    )  # rank 99 of 100
    assert latency_quantile_ms(np.zeros(LATENCY_BINS, dtype=np.int64), 0.5) is None
    extremes = np.bincount(latency_bins(np.array([1e-7, 1e4])), minlength=LATENCY_BINS)
    assert latency_quantile_ms(extremes, 0.5) == pytest.approx(LATENCY_EDGES_S[0] * 1e3)
    assert latency_quantile_ms(extremes, 1.0) == pytest.approx(LATENCY_EDGES_S[-1] * 1e3)


# -- arm assignment ----------------------------------------------------------------------------


def test_assignment_point_is_pinned_blake2b_of_salt_and_user() -> None:
    # Pinned values: other processes, restarts and offline analyses must find the same arm.
    assert assignment_point("s1", "u42") == 0xAFA17D012F74BDBD / 2**64
    assert assignment_point("s1", "u42") == pytest.approx(0.6860578658956511)
    assert assignment_point("salt", "ü/ser") == pytest.approx(0.9352898111586844)
    assert assignment_point("s2", "u42") != assignment_point("s1", "u42")
    # the separator keeps ("ab", "c") and ("a", "bc") apart
    assert assignment_point("ab", "c") != assignment_point("a", "bc")


def test_pick_arm_takes_the_first_cumulative_weight_above_u() -> None:
    cum = cumulative_weights([0.25, 0.5, 0.25])
    assert cum == (0.25, 0.75, 1.0)
    assert [pick_arm(u, cum) for u in (0.0, 0.2499, 0.25, 0.7499, 0.75, 0.999999)] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    ten = cumulative_weights([0.1] * 10)  # float sums fall short of 1: the last is set to 1
    assert ten[-1] == 1.0 and pick_arm(0.9999999999, ten) == 9


def test_split_follows_the_weights_within_binomial_noise() -> None:
    n, weights = 200_000, [0.2, 0.5, 0.3]
    cum = cumulative_weights(weights)
    arms = np.bincount(
        [pick_arm(assignment_point("split-test", f"user-{i}"), cum) for i in range(n)], minlength=3
    )
    for count, w in zip(arms.tolist(), weights, strict=True):
        sd = math.sqrt(n * w * (1 - w))
        assert abs(count - n * w) < 5 * sd, (
            arms,
            weights,
        )  # 5 sd: a false alarm ~ 1 in 1.7 million
