"""training.metrics against hand-computed answers (METRICS.md).

The shared example: 3 users, 6 items, K = 2 and 3.

    item        0  1  2  3  4  5
    φ (pop)     5  3  2  1  1  0        Σφ = 12
    group       0  0  1  1  1  1        (G = 2, group 0 = head)
    head Φ      T  T  F  F  F  F

    user  list L_u       test T_u   hits by slot
    u0    [0, 1, 2]      {0, 5}     1 0 0
    u1    [3, 4, -1]     {4}        0 1 -      (-1 = padding)
    u2    [5, 0, 1]      {1}        0 0 1

disc(1) = 1, disc(2) = 1/log2(3) = 0.63093, disc(3) = 1/log2(4) = 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from training.metrics import (
    bootstrap_ci,
    compute_metrics,
    list_membership,
    oracle_metrics,
    overlap_metrics,
    row_membership,
)
from training.metrics_popularity import gini_index, shannon_entropy

D2 = 1 / math.log2(3)  # 0.63093
D3 = 0.5

TOPK = np.array([[0, 1, 2], [3, 4, -1], [5, 0, 1]], dtype=np.int64)
TEST = sp.csr_matrix(
    (np.ones(4), ([0, 0, 1, 2], [0, 5, 4, 1])),
    shape=(3, 6),
)
POP = np.array([5, 3, 2, 1, 1, 0])
GROUPS = np.array([0, 0, 1, 1, 1, 1])
HEAD = np.array([True, True, False, False, False, False])


def _run(**kw):
    args = dict(pop=POP, groups=GROUPS, head=HEAD, n_train_users=5, ks=(2, 3), n_groups=2)
    args.update(kw)
    return compute_metrics(TOPK, TEST, **args)


@pytest.fixture(scope="module")
def res():
    return _run()


def test_membership_ignores_padding():
    assert row_membership(TOPK, TEST, 6).tolist() == [
        [True, False, False],
        [False, True, False],
        [False, False, True],
    ]
    a = np.array([[1, 2, -1]])
    assert list_membership(a, np.array([[2, -1, 7]]), 10).tolist() == [[False, True, False]]


def test_accuracy(res):
    m = res.metrics
    # recall@2: u0 1/2, u1 1/1, u2 0
    assert m["recall@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    # recall@3: u2 finds item 1 at slot 3
    assert m["recall@3"] == pytest.approx((0.5 + 1 + 1) / 3)
    # precision divides by K, padded slot included: 2 hits in 6 slots, 3 hits in 9
    assert m["precision@2"] == pytest.approx(2 / 6)
    assert m["precision@3"] == pytest.approx(3 / 9)
    # ndcg@2: u0 1 / (1 + D2) (two positives), u1 D2 / 1, u2 0
    assert m["ndcg@2"] == pytest.approx((1 / (1 + D2) + D2) / 3)
    assert m["ndcg@3"] == pytest.approx((1 / (1 + D2) + D2 + D3) / 3)
    assert m["hit@2"] == pytest.approx(2 / 3)
    assert m["hit@3"] == pytest.approx(1.0)
    # first hit ranks: u0 1, u1 2, u2 3 (beyond K=2)
    assert m["mrr@2"] == pytest.approx((1 + 1 / 2) / 3)
    assert m["mrr@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # per-user arrays for the bootstrap
    np.testing.assert_allclose(res.per_user["recall@2"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(res.per_user["ndcg@3"], [1 / (1 + D2), D2, D3])


def test_group_recall_uses_users_with_positives_in_the_group(res):
    g = res.groups
    # T∩G0: u0 {0}, u2 {1}  -> U_0 = {u0, u2};  T∩G1: u0 {5}, u1 {4} -> U_1 = {u0, u1}
    assert g["users"].tolist() == [2, 2]
    # @2: G0: u0 finds 0 (1/1), u2 misses 1 (0) -> 1/2, not 1/3 (which |U| = 3 would give)
    #     G1: u0 misses 5 (0), u1 finds 4 (1) -> 1/2
    np.testing.assert_allclose(g["recall@2"], [0.5, 0.5])
    np.testing.assert_allclose(g["recall@3"], [1.0, 0.5])
    # ndcg_g@2: G0: u0 1/IDCG(1)=1, u2 0 -> 0.5; G1: u0 0, u1 D2/1 -> D2/2
    np.testing.assert_allclose(g["ndcg@2"], [0.5, D2 / 2])
    assert res.metrics["mrecall@2"] == pytest.approx(0.5)
    assert res.metrics["mrecall@3"] == pytest.approx(0.75)
    assert res.metrics["mndcg@2"] == pytest.approx((0.5 + D2 / 2) / 2)


def test_ips_recall_and_ndcg(res):
    # w = max(φ,1)^-0.5: w0 = 1/√5, w1 = 1/√3, w4 = 1, w5 = 1 (φ = 0 -> 1)
    w0, w1 = 5**-0.5, 3**-0.5
    u0 = w0 / (w0 + 1.0)  # hit item 0; positives {0, 5}
    assert res.metrics["ips_recall@2"] == pytest.approx((u0 + 1.0 + 0.0) / 3)
    assert res.metrics["ips_recall@3"] == pytest.approx((u0 + 1.0 + 1.0) / 3)
    # ideal IPS DCG of u0: heavier positive (5, w=1) first, then item 0
    ndcg_u0 = (w0 * 1.0) / (1.0 + w0 * D2)
    assert res.metrics["ips_ndcg@2"] == pytest.approx((ndcg_u0 + D2 / 1.0 + 0.0) / 3)
    # u2: hit item 1 (w1) at slot 3; its ideal is w1 at slot 1
    assert res.metrics["ips_ndcg@3"] == pytest.approx((ndcg_u0 + D2 + w1 * D3 / w1) / 3)


def test_exposure_and_popularity(res):
    m, g = res.metrics, res.groups
    # @2 slots: u0 {0,1}, u1 {3,4}, u2 {5,0}: N = 6, G0 slots = 3
    np.testing.assert_allclose(g["exposure_share@2"], [0.5, 0.5])
    # @3: N = 8 (u1 padded), G0 slots = 0,1,0,1 = 4
    np.testing.assert_allclose(g["exposure_share@3"], [0.5, 0.5])
    assert m["head_share@2"] == pytest.approx(0.5)
    # ARP@2: u0 (5+3)/2, u1 (1+1)/2, u2 (0+5)/2
    assert m["arp@2"] == pytest.approx((4 + 1 + 2.5) / 3)
    # ARP@3 divides by |L_u|: u1 has 2 real items
    assert m["arp@3"] == pytest.approx((10 / 3 + 2 / 2 + 8 / 3) / 3)
    assert m["narp@2"] == pytest.approx(2.5 / 5)
    # tail = items 2..5. APLT@2: u0 0/2, u1 2/2, u2 1/2;  ACLT@2: 0, 2, 1
    assert m["aplt@2"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert m["aclt@2"] == pytest.approx((0 + 2 + 1) / 3)
    assert m["aplt@3"] == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    # PopularityBias@2, p = φ/12: u0 (5+3)/12/2, u1 (1+1)/12/2, u2 (0+5)/12/2
    assert m["popularity_bias@2"] == pytest.approx((8 / 24 + 2 / 24 + 5 / 24) / 3)
    # Novelty@2: -log2 p with φ=0 -> 1: items 0:log2(12/5), 1:2, 3,4,5:log2(12)
    info = 2 * math.log2(12 / 5) + 2 + 3 * math.log2(12)
    assert m["novelty@2"] == pytest.approx(info / (3 * 2))
    # EPC@2 (|U_train| = 5): only u1's hit (item 4, slot 2) has novelty 1 - 1/5;
    # u0's hit is item 0 with φ = 5 -> 1 - 5/5 = 0
    assert m["epc@2"] == pytest.approx((D2 * 0.8 / (1 + D2)) / 3)


def test_poprsp_popreo_dtr(res):
    m = res.metrics
    # PopRSP@2, nothing excluded: P0 = 3 / (3 users * 2 items), P1 = 3 / (3 * 4) -> 0.5, 0.25
    # mean 0.375, population std 0.125
    assert m["pop_rsp@2"] == pytest.approx(0.125 / 0.375)
    # PopREO@2: hits G0 1 of 2 positives, G1 1 of 2 -> parity
    assert m["pop_reo@2"] == pytest.approx(0.0)
    # PopREO@3: G0 2/2, G1 1/2 -> mean 0.75, std 0.25
    assert m["pop_reo@3"] == pytest.approx(0.25 / 0.75)
    # DTR@2: Exp_pop = 1 + D2 (u0) + D2 (u2), Util_pop = 1 (u0 item 0)
    #        Exp_rest = 1 + D2 (u1) + 1 (u2 item 5), Util_rest = D2 (u1 item 4)
    expected = ((1 + 2 * D2) / 1) / ((2 + D2) / D2)
    assert m["dtr@2"] == pytest.approx(expected)


def test_poprsp_counts_excluded_items():
    # u0 could not be shown item 3 (G1), u1 item 1 (G0): P0 = 3 / (6 - 1), P1 = 3 / (12 - 1)
    excluded = sp.csr_matrix((np.ones(2), ([0, 1], [3, 1])), shape=(3, 6))
    m = _run(excluded=excluded).metrics
    p = np.array([3 / 5, 3 / 11])
    assert m["pop_rsp@2"] == pytest.approx(p.std() / p.mean())


def test_poprsp_is_zero_at_parity():
    # every user gets one item of each 2-item group: P0 = P1 = 1/2
    topk = np.array([[0, 2], [1, 3], [0, 3]])
    test = sp.csr_matrix((np.ones(3), ([0, 1, 2], [0, 1, 2])), shape=(3, 4))
    m = compute_metrics(
        topk,
        test,
        pop=np.array([3, 3, 1, 1]),
        groups=np.array([0, 0, 1, 1]),
        head=np.array([True, True, False, False]),
        n_train_users=3,
        ks=(2,),
        n_groups=2,
    ).metrics
    assert m["pop_rsp@2"] == pytest.approx(0.0)


def test_concentration(res):
    m = res.metrics
    # @2 counts: item0 2, items 1,3,4,5 once, item 2 never -> sorted [0,1,1,1,1,2], N = 6
    # Σ (2j - 7) c_(j) = -5*0 - 3 - 1 + 1 + 3 + 5*2 = 10 -> 10 / (6 * 6)
    assert m["gini@2"] == pytest.approx(10 / 36)
    assert m["coverage@2"] == pytest.approx(5 / 6)
    assert m["coverage@3"] == pytest.approx(1.0)
    ent = -(2 / 6 * math.log(2 / 6) + 4 * (1 / 6) * math.log(1 / 6))
    assert m["entropy@2"] == pytest.approx(ent)
    assert m["nentropy@2"] == pytest.approx(ent / math.log(6))


def test_gini_extremes():
    assert gini_index(np.full(50, 7)) == pytest.approx(0.0)
    one = np.zeros(1000)
    one[3] = 500
    assert gini_index(one) == pytest.approx(999 / 1000)  # (|I|-1)/|I| -> 1
    assert shannon_entropy(np.full(8, 2)) == pytest.approx(math.log(8))


def test_users_without_positives_are_refused():
    test = sp.csr_matrix((np.ones(1), ([0], [0])), shape=(3, 6))
    with pytest.raises(ValueError, match="no positives"):
        compute_metrics(
            TOPK, test, pop=POP, groups=GROUPS, head=HEAD, n_train_users=5, ks=(2,), n_groups=2
        )


def test_empty_group_is_undefined_not_zero():
    # G = 3 but nothing is in group 2: its recall is NaN and mRecall averages groups 0 and 1
    res = _run(n_groups=3)
    assert np.isnan(res.groups["recall@2"][2])
    assert res.metrics["mrecall@2"] == pytest.approx(0.5)


def test_overlap():
    s = np.array([[0, 1, 2], [3, 4, 5]])
    t = np.array([[1, 0, 4], [5, 2, -1]])
    overall, by_group = overlap_metrics(s, t, GROUPS, (2, 3), 2)
    # @2: u0 {0,1}∩{1,0} = 2, u1 {3,4}∩{5,2} = 0 -> (2/2 + 0/2) / 2
    assert overall["overlap@2"] == pytest.approx(0.5)
    # @3: u0 {0,1,2}∩{1,0,4} = 2, u1 {3,4,5}∩{5,2} = 1 -> (2/3 + 1/3) / 2
    assert overall["overlap@3"] == pytest.approx(0.5)
    # per group @3: teacher G0 slots {1,0} both shared -> 1; G1 slots {4, 5, 2}: 5 shared -> 1/3
    np.testing.assert_allclose(by_group["overlap@3"], [1.0, 1 / 3])


def test_oracle():
    topk = np.array([[0, 1, 2], [3, 4, 5]])
    oracle = np.array([[1, 2, 0], [5, 0, 3]])
    m = oracle_metrics(topk, oracle, (2, 3))
    # @2: u0 {0,1} vs true {1,2}: item 1 at slot 2; u1 {3,4} vs {5,0}: none
    assert m["oracle_precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["oracle_ndcg@2"] == pytest.approx((D2 / (1 + D2) + 0) / 2)
    # @3: u0 all three shared; u1 3 and 5 at slots 1 and 3
    assert m["oracle_precision@3"] == pytest.approx((3 / 3 + 2 / 3) / 2)
    assert m["oracle_ndcg@3"] == pytest.approx((1.0 + (1 + D3) / (1 + D2 + D3)) / 2)


def test_bootstrap_ci():
    values = np.random.default_rng(1).random(500)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi
    assert (lo, hi) == bootstrap_ci(values)  # seeded
    lo, hi = bootstrap_ci(np.full(10, 0.25), n=50)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


# -- blocks of users: the same figures, memory bounded by the block ---------------------------
def _random_case(n_users: int, n_items: int = 40, kmax: int = 5, seed: int = 3):
    """Lists (some padded) and positives of `n_users` random users; groups of 3."""
    rng = np.random.default_rng(seed)
    topk = np.stack([rng.permutation(n_items)[:kmax] for _ in range(n_users)]).astype(np.int64)
    lengths = rng.integers(0, kmax + 1, n_users)
    topk[np.arange(kmax)[None, :] >= lengths[:, None]] = -1
    rows = np.concatenate([np.full(m, u) for u, m in enumerate(rng.integers(1, 6, n_users))])
    cols = rng.integers(0, n_items, len(rows))
    positives = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))
    positives.data[:] = 1.0
    excl = sp.random(n_users, n_items, density=0.1, random_state=seed, format="csr")
    pop = rng.integers(0, 50, n_items)
    groups = np.minimum(np.argsort(np.argsort(-pop)) * 3 // n_items, 2)
    args = dict(
        pop=pop,
        groups=groups,
        head=groups == 0,
        n_train_users=n_users,
        ks=(2, 5),
        n_groups=3,
        excluded=excl,
    )
    return topk, positives, args


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_the_block_size_changes_no_figure(block):
    topk, positives, args = _random_case(300)
    whole = compute_metrics(topk, positives, block=10_000, **args)
    part = compute_metrics(topk, positives, block=block, **args)
    assert part.metrics.keys() == whole.metrics.keys()
    wrong = [k for k in whole.metrics if not _same(part.metrics[k], whole.metrics[k])]
    assert wrong == []
    for key, values in whole.groups.items():
        np.testing.assert_allclose(part.groups[key], values, rtol=1e-12, err_msg=key)
    for key, values in whole.per_user.items():
        np.testing.assert_array_equal(part.per_user[key], values, err_msg=key)
    reference = np.roll(topk, 1, axis=1)
    for fn in (overlap_metrics,):
        (ow, gw), (op, gp) = (
            fn(topk, reference, args["groups"], (2, 5), 3, block=b) for b in (10_000, block)
        )
        assert ow == pytest.approx(op, rel=1e-12)
        for key in gw:
            np.testing.assert_allclose(gp[key], gw[key], rtol=1e-12)
    full = np.where(topk >= 0, topk, 0)  # the oracle's lists are full
    assert oracle_metrics(topk, full, (2, 5), block=block) == pytest.approx(
        oracle_metrics(topk, full, (2, 5), block=10_000), rel=1e-12
    )


def test_memory_follows_the_block_not_the_users():
    """The report of 1M users held ~5 GB of per-slot arrays before blocks (docs/scale.md)."""
    import tracemalloc

    topk, positives, args = _random_case(20_000, n_items=400, kmax=50)
    args["excluded"] = None  # its (nnz,) arrays are the same for any block
    peaks = {}
    for block in (20_000, 1_000):
        tracemalloc.start()
        compute_metrics(topk, positives, block=block, **args)
        peaks[block] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[1_000] * 4 < peaks[20_000], peaks


def test_the_unkd_papers_popular_and_unpopular_view():
    """Recall/NDCG with the ground truth restricted to the head group (popular) or to the
    other groups (unpopular), over the users with a positive there; worked by hand with G = 3
    (groups 0 0 1 2 1 2), so "unpopular" spans two groups (u1's item 4 is in group 1, u0's 5
    in group 2):

        popular   T∩{0,1}: u0 {0}, u2 {1}          unpopular T∩{2..5}: u0 {5}, u1 {4}
        @2  u0 finds 0 at slot 1, u2 misses 1      u0 misses 5, u1 finds 4 at slot 2
        @3  u2 finds 1 at slot 3                   no change
    """
    m = _run(groups=np.array([0, 0, 1, 2, 1, 2]), n_groups=3).metrics
    assert m["recall_popular@2"] == pytest.approx(0.5)
    assert m["recall_popular@3"] == pytest.approx(1.0)
    assert m["ndcg_popular@2"] == pytest.approx(0.5)
    assert m["ndcg_popular@3"] == pytest.approx((1 + D3) / 2)
    assert m["recall_unpopular@2"] == pytest.approx(0.5)
    assert m["recall_unpopular@3"] == pytest.approx(0.5)
    assert m["ndcg_unpopular@2"] == pytest.approx(D2 / 2)
    assert m["ndcg_unpopular@3"] == pytest.approx(D2 / 2)
