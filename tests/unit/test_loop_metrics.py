"""bench/loop_metrics.py: the closed loop's click model and metrics, against answers worked out
by hand from the definitions in its docstring (not from the functions' own steps)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from bench.loop_metrics import (
    click_probability,
    coverage,
    draw_clicks,
    exposure_counts,
    gini,
    head_share,
    mean_std,
    per_1000,
    true_ndcg,
)


def test_click_probability_is_attraction_times_examination() -> None:
    # a = 1, b = 0: score 0 -> sigmoid 1/2; position 1 looked at surely, position 3 with
    # probability 1/log2(4) = 1/2; a consumed item is never clicked.
    scores = np.array([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 5.0]])
    consumed = np.array([[False, False, False], [False, False, True]])
    p = click_probability(scores, consumed, a=1.0, b=0.0)
    expected = np.array(
        [
            [0.5, 0.5 / math.log2(3), 0.5 * 0.5],
            [0.75, 0.5 / math.log2(3), 0.0],  # sigmoid(ln 3) = 3 / 4
        ]
    )
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_click_probability_scale_and_offset() -> None:
    # a = 2, b = -4, score 2: sigmoid(0) = 1/2 at position 1.
    p = click_probability(np.array([[2.0]]), np.array([[False]]), a=2.0, b=-4.0)
    assert p[0, 0] == pytest.approx(0.5)


def test_draw_clicks_uses_the_same_uniforms_for_the_same_seed() -> None:
    prob = np.array([[0.0, 1.0, 0.5, 0.5]])
    a = draw_clicks(prob, np.random.default_rng(7))
    b = draw_clicks(prob, np.random.default_rng(7))
    assert not a[0, 0] and a[0, 1]
    np.testing.assert_array_equal(a, b)
    u = np.random.default_rng(7).random(prob.shape)
    np.testing.assert_array_equal(a, u < prob)


def test_head_share_ignores_empty_slots() -> None:
    head = np.array([True, False, False, False])
    items = np.array([[0, 1, -1], [0, 0, 3]])  # 5 slots shown, 3 of item 0
    assert head_share(items, head) == pytest.approx(3 / 5)
    assert head_share(np.array([-1, -1]), head) is None


def test_exposure_counts_and_coverage() -> None:
    items = np.array([[0, 1, 1], [1, 4, -1]])
    np.testing.assert_array_equal(exposure_counts(items, 6), [1, 3, 0, 0, 1, 0])
    assert coverage(items, 6) == pytest.approx(3 / 6)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([5, 5, 5, 5], 0.0),  # equal exposure
        ([0, 0, 0, 10], 0.75),  # one item of four takes every slot: (n - 1) / n
        # mean absolute difference over all ordered pairs / (2 * mean): pairs of
        # [1, 2, 3]: |1-2|+|1-3|+|2-3| = 4, twice = 8, over n^2 = 9 -> 8/9; mean 2 -> 2/9
        ([3, 1, 2], 2 / 9),
        ([0, 0], 0.0),  # nothing shown
    ],
)
def test_gini(counts: list[int], expected: float) -> None:
    assert gini(np.array(counts)) == pytest.approx(expected)


def test_per_1000() -> None:
    assert per_1000(3, 600) == pytest.approx(5.0)
    assert per_1000(0, 0) is None


def test_true_ndcg_binary_relevance_among_unconsumed_items() -> None:
    # 6 items; user 0 has consumed item 5 (its best). Its true order among the rest:
    # 4 > 3 > 2 > 1 > 0. With relevant_top = 2, items 4 and 3 are relevant.
    scores = np.array(
        [
            [0.0, 1.0, 2.0, 3.0, 4.0, 9.0],
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
        ]
    )
    consumed = np.zeros((2, 6), dtype=bool)
    consumed[0, 5] = True
    lists = np.array(
        [
            [3, 0, 4],  # relevant at positions 1 and 3
            [5, 0, -1],  # user 1's relevant: 0 and 1; item 0 at position 2, one empty slot
        ]
    )
    d1, d2, d3 = 1.0, 1 / math.log2(3), 1 / math.log2(4)
    user0 = (d1 + d3) / (d1 + d2)
    user1 = d2 / (d1 + d2)
    assert true_ndcg(lists, scores, consumed, relevant_top=2) == pytest.approx((user0 + user1) / 2)


def test_true_ndcg_is_one_for_the_true_top_list_and_breaks_ties_by_index() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 0.0]])  # three-way tie: items 0 and 1 are the top 2
    consumed = np.zeros((1, 4), dtype=bool)
    assert true_ndcg(np.array([[1, 0]]), scores, consumed, relevant_top=2) == pytest.approx(1.0)
    # item 2 ties with them but comes later by index: not relevant
    d1, d2 = 1.0, 1 / math.log2(3)
    assert true_ndcg(np.array([[2, 0]]), scores, consumed, relevant_top=2) == pytest.approx(
        d2 / (d1 + d2)
    )


def test_true_ndcg_ideal_is_capped_by_the_open_items() -> None:
    # one unconsumed item left: the ideal list has one relevant slot, shown first -> 1.0
    scores = np.array([[3.0, 2.0, 1.0]])
    consumed = np.array([[True, False, True]])
    assert true_ndcg(np.array([[1, 0, 2]]), scores, consumed, relevant_top=50) == pytest.approx(1.0)


def test_mean_std() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)  # sample std: sqrt((1 + 0 + 1) / 2)
    assert mean_std([4.0]) == (4.0, 0.0)
    assert mean_std([None]) == (None, None)
    assert mean_std([None, 2.0, 4.0])[0] == pytest.approx(3.0)


# -- bench/loop.py's pure parts: the recipes it PUTs and its summary -----------------------


def test_recipes_follow_the_arms() -> None:
    from bench.loop import recipe

    unkd, plain, teacher = recipe("unkd"), recipe("plain"), recipe("teacher")
    assert unkd["distill"] == {"method": "unkd", "dim": 10} and "gate" not in unkd
    assert plain["distill"] == {"method": "none", "dim": 10}
    assert plain["gate"] == {"enabled": False} == teacher["gate"]
    assert "distill" not in teacher  # the pipeline publishes the teacher itself
    assert unkd["teacher"]["model"] == plain["teacher"]["model"] == teacher["teacher"]["model"]
    assert {r["on_pass"] for r in (unkd, plain, teacher)} == {"activate"}
    # no run of its own when clicks arrive: the bench starts every round's run
    assert {r["min_new_events"] for r in (unkd, plain, teacher)} == {0}
    # the versions keep the root's held-out pairs and put every click in train
    assert {r["version_split"] for r in (unkd, plain, teacher)} == {"append"}
    assert recipe("unkd", "temporal")["version_split"] == "temporal"


def _round(r: int, head: float, clicks: int, run: str | None = "published") -> Any:
    from bench.loop import RoundResult

    return RoundResult(
        round=r,
        model_id=f"m{r}",
        exposures=1000,
        clicks=clicks,
        head_exposure=head,
        head_clicks=None,
        head_exposure_current=head,
        coverage=0.1,
        gini=0.9,
        clicks_per_1000=float(clicks),
        true_ndcg=0.1,
        run={"status": run} if run else None,
    )


def test_summary_drift_and_clicks_over_seeds() -> None:
    from bench.loop import WorldResult, drift_lines, plot_svg, summarise

    worlds = [
        WorldResult("unkd", 0, rounds=[_round(1, 0.5, 10), _round(2, 0.6, 20, None)]),
        WorldResult("unkd", 1, rounds=[_round(1, 0.5, 30, "refused"), _round(2, 0.8, 30, None)]),
        WorldResult("plain", 0, error="boom"),  # a broken world counts in no mean
    ]
    summary = summarise(worlds, ["unkd", "plain"], rounds=2)
    d = summary["drift"]["unkd"]
    # drifts 0.1 and 0.3: mean 0.2, sample std sqrt((0.01 + 0.01) / 1)
    assert d["head_exposure_drift"][0] == pytest.approx(0.2)
    assert d["head_exposure_drift"][1] == pytest.approx(math.sqrt(0.02))
    # clicks per 1,000 over the rounds: 30 / 2000 -> 15, 60 / 2000 -> 30
    assert d["clicks_per_1000"][0] == pytest.approx(22.5)
    assert d["runs"] == {"published": 1, "refused": 1} and d["seeds"] == 2
    assert summary["drift"]["plain"]["seeds"] == 0
    row = next(x for x in summary["per_round"] if x["round"] == 2 and x["arm"] == "unkd")
    assert row["head_exposure"][0] == pytest.approx(0.7) and row["seeds"] == 2
    assert "round 2 - round 1 = 0.200 ± 0.141" in drift_lines(summary, 2)[0]
    svg = plot_svg(summary, ["unkd", "plain"], 2)
    assert svg.count('class="chart chart-lines"') == 6
    # plain has no values anywhere, unkd none for the head share of clicks (None above)
    assert svg.count('<polyline class="line" data-series="unkd"') == 5
    assert svg.count('<polyline class="line" data-series="plain"') == 0


def test_grown_data_keeps_round_zero_splits_and_adds_clicks_to_train() -> None:
    from types import SimpleNamespace

    from bench.loop import GrownData

    pop = SimpleNamespace(
        user_ids=["u0", "u1"],
        item_ids=["a", "b", "c"],
        splits={
            "train": np.array([[0, 0], [1, 1]]),
            "valid": np.array([[0, 1]]),
            "test": np.array([[1, 2]]),
        },
    )
    grown = GrownData(pop)  # type: ignore[arg-type]
    grown.add(np.array([1, 0]), np.array([0, 2]))
    assert grown.csv().decode().splitlines() == [
        "user_id,item_id,split",
        "u0,a,train",
        "u1,b,train",
        "u0,b,valid",
        "u1,c,test",
        "u1,a,train",
        "u0,c,train",
    ]
