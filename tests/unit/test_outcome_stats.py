"""The statistics of outcomes (service/serving/outcomes/stats.py) against direct numerical
computations, and the always-valid test's error rate under repeated looks on simulated A/A
streams; the attribution of an event to a rec record (attribution.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from service.serving.outcomes.attribution import (
    Attributed,
    Unattributed,
    attribute,
    position_bucket,
    rec_head,
    rec_lists,
    rec_texts,
)
from service.serving.outcomes.stats import (
    ALPHA,
    MIXING_VARIANCE,
    Rate,
    msprt_interval,
    msprt_p_value,
    running_p,
    wilson,
)


def wilson_by_root_finding(x: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson interval by its definition: the p with |x/n - p| <= z sqrt(p (1 - p) / n),
    its ends found as roots of (x/n - p)^2 - z^2 p (1 - p) / n."""
    phat = x / n

    def f(p: float) -> float:
        return (phat - p) ** 2 - z * z * p * (1 - p) / n

    inside = min(max(phat, 1e-12), 1 - 1e-12)  # f < 0 there, also when x = 0 or x = n
    low = 0.0 if x == 0 else optimize.brentq(f, 0.0, inside)
    high = 1.0 if x == n else optimize.brentq(f, inside, 1.0)
    return low, high


@pytest.mark.parametrize(("x", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (13, 1000), (2, 50000)])
def test_wilson_matches_its_definition(x: int, n: int) -> None:
    assert wilson(x, n) == pytest.approx(wilson_by_root_finding(x, n), abs=1e-9)


def test_wilson_without_trials_and_rates_per_1000() -> None:
    assert wilson(0, 0) is None and Rate.of(3, 0) == Rate(None, None, None)
    r = Rate.of(13, 1000)
    low, high = wilson_by_root_finding(13, 1000)
    assert (r.per_1000, r.low, r.high) == pytest.approx((13.0, 1000 * low, 1000 * high))
    assert wilson(7, 5) == wilson(5, 5)  # more clicks than showings: a rate of 1


def mixture_ratio_by_integration(d: float, v: float, tau2: float, theta0: float = 0.0) -> float:
    """Lambda by its definition: the likelihood of d under theta ~ N(theta0, tau2), integrated
    numerically, over its likelihood under theta = theta0 (d ~ N(theta, v))."""
    sd = math.sqrt(tau2)

    def integrand(theta: float) -> float:
        return float(
            stats.norm.pdf(d, loc=theta, scale=math.sqrt(v))
            * stats.norm.pdf(theta, loc=theta0, scale=sd)
        )

    num, _ = integrate.quad(integrand, theta0 - 12 * sd, theta0 + 12 * sd, points=[d], limit=200)
    return num / float(stats.norm.pdf(d, loc=theta0, scale=math.sqrt(v)))


@pytest.mark.parametrize(
    ("x_a", "n_a", "x_b", "n_b"),
    [(20, 1000, 25, 1000), (200, 10000, 260, 10000), (150, 8000, 120, 9000), (30, 2000, 31, 2000)],
)
def test_msprt_p_value_is_one_over_the_integrated_mixture_ratio(x_a, n_a, x_b, n_b) -> None:
    pa, pb = x_a / n_a, x_b / n_b
    v = pa * (1 - pa) / n_a + pb * (1 - pb) / n_b
    want = min(1.0, 1.0 / mixture_ratio_by_integration(pb - pa, v, MIXING_VARIANCE))
    assert msprt_p_value(x_a, n_a, x_b, n_b) == pytest.approx(want, rel=1e-6)


def test_msprt_interval_ends_where_the_ratio_reaches_one_over_alpha() -> None:
    x_a, n_a, x_b, n_b = 200, 10000, 260, 10000
    pa, pb = x_a / n_a, x_b / n_b
    v = pa * (1 - pa) / n_a + pb * (1 - pb) / n_b
    low, high = msprt_interval(x_a, n_a, x_b, n_b) or (0.0, 0.0)
    for end in (low, high):  # the ratio of theta ~ N(end, tau2) against theta = end
        assert mixture_ratio_by_integration(pb - pa, v, MIXING_VARIANCE, end) == pytest.approx(
            1 / ALPHA, rel=1e-5
        )
    assert low < pb - pa < high


def test_undefined_looks_give_p_one() -> None:
    assert msprt_p_value(0, 0, 5, 100) == 1.0 and msprt_p_value(0, 100, 0, 100) == 1.0
    assert msprt_interval(0, 100, 0, 100) is None
    assert running_p(None, 0.4) == 0.4 and running_p(0.3, 0.4) == 0.3


def looks_of_streams(
    rng: np.random.Generator, p_a: float, p_b: float, streams: int, looks: int, per_look: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative clicks of arms A and B at each look of `streams` experiments:
    (streams, looks) each, and the exposures per arm at each look (looks,)."""
    x_a = np.cumsum(rng.binomial(per_look, p_a, size=(streams, looks)), axis=1)
    x_b = np.cumsum(rng.binomial(per_look, p_b, size=(streams, looks)), axis=1)
    return x_a, x_b, per_look * np.arange(1, looks + 1)


def test_a_a_streams_looked_at_every_look_stay_under_alpha() -> None:
    """Always valid: the share of A/A experiments ever decided, looking 40 times each, stays
    under alpha (within 3 standard errors), where the fixed-sample z-test read at the same
    looks is decided far more often."""
    rng = np.random.default_rng(7)
    streams, looks = 600, 40
    x_a, x_b, n = looks_of_streams(rng, 0.02, 0.02, streams, looks, per_look=1000)
    decided = 0
    peeking_z = 0
    for s in range(streams):
        p = None
        z_hit = False
        for j in range(looks):
            p = running_p(p, msprt_p_value(int(x_a[s, j]), int(n[j]), int(x_b[s, j]), int(n[j])))
            pa, pb = x_a[s, j] / n[j], x_b[s, j] / n[j]
            se = math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n[j])
            z_hit |= se > 0 and abs(pb - pa) / se > 1.959963984540054
        decided += p is not None and p <= ALPHA
        peeking_z += z_hit
    tolerance = 3 * math.sqrt(ALPHA * (1 - ALPHA) / streams)
    assert decided / streams <= ALPHA + tolerance
    assert peeking_z / streams > 2 * ALPHA  # the reason for the mixture test


def test_a_real_difference_is_decided_for_the_better_arm() -> None:
    rng = np.random.default_rng(11)
    streams, looks = 100, 40
    x_a, x_b, n = looks_of_streams(rng, 0.020, 0.026, streams, looks, per_look=1000)
    decided_right = 0
    for s in range(streams):
        p = None
        for j in range(looks):
            p = running_p(p, msprt_p_value(int(x_a[s, j]), int(n[j]), int(x_b[s, j]), int(n[j])))
        decided_right += p is not None and p <= ALPHA and x_b[s, -1] > x_a[s, -1]
    assert decided_right / streams >= 0.8


# -- attribution -------------------------------------------------------------------------------


def test_position_buckets() -> None:
    got = [position_bucket(p) for p in (1, 2, 3, 4, 5, 6, 10, 11, 20, 21, 200)]
    assert got == ["1", "2", "3", "4-5", "4-5", "6-10", "6-10", "11-20", "11-20", "21+", "21+"]


def record() -> dict[str, str]:
    """A batch's record: u1 shown items b, c (empty slot dropped), u2 shown a."""
    item_ids = np.array(["a", "b", "c", "d"])
    groups = np.array([0, 1, 3, 2])
    items = np.array([[1, 2, -1], [0, -1, -1]])
    head = rec_head("unkd:outcomes:m:e")
    return rec_lists(head, *rec_texts(item_ids.tolist(), groups.tolist()), items, ["u1", "u2"])


def test_rec_lists_hold_what_each_user_was_shown() -> None:
    fields = record()
    assert json.loads(fields["u1"]) == {
        "o": "unkd:outcomes:m:e",
        "i": ["b", "c"],
        "g": [1, 3],
    }
    assert json.loads(fields["u2"])["i"] == ["a"]
    texts = rec_texts(['a"b', "é/\n"], [0, 3])
    odd = rec_lists(rec_head('k"1'), *texts, np.array([1, -1]), [None])
    assert json.loads(odd[""]) == {"o": 'k"1', "i": ["é/\n"], "g": [3]}


def test_attribute_an_event_to_its_list_position_and_group() -> None:
    fields = record()
    click = {"rec_id": "r", "user_id": "u1", "item_id": "c", "type": "click"}
    assert attribute(click, fields) == Attributed(
        "unkd:outcomes:m:e", ("click", "click:g:3", "click:p:2", "click:g:3:p:2")
    )
    assert attribute({**click, "item_id": "a"}, fields) == Unattributed("item_not_shown")
    assert attribute({**click, "user_id": "u9"}, fields) == Unattributed("item_not_shown")
    assert attribute({**click, "rec_id": ""}, fields) == Unattributed("no_rec_id")
    assert attribute(click, None) == Unattributed("unknown_rec_id")
    history = {"": fields["u2"]}  # one list: any user id matches it
    buy = {"rec_id": "r", "user_id": "visitor", "item_id": "a", "type": "purchase"}
    assert attribute(buy, history) == Attributed(
        "unkd:outcomes:m:e", ("purchase", "purchase:g:0", "purchase:p:1", "purchase:g:0:p:1")
    )
    assert attribute({**buy, "type": "Weird Type!"}, history).fields[0] == "other"  # type: ignore[union-attr]
