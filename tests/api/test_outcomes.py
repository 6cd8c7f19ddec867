"""Outcomes (GET /v1/serving/outcomes, the unkd_outcomes_* series) through the whole app on
the real Redis of tests/support: every answer carries a rec_id; events XADDed to the events
stream in the ingestion's format and citing it count under the model, popularity group and
position that showed the item, exactly once with two API processes' consumers; events no
answer explains count as unattributed; an experiment's two arms get the always-valid test.

Expected figures are computed here from the answers the test received and the events it
wrote (never from the service's counters); the statistics from their definitions
(tests/unit/test_outcome_stats.py).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core import keys
from service.core.config import Settings
from service.core.registry import Registry
from service.serving.outcomes.consumer import OutcomeConsumer
from tests.api.test_experiment import AS_ADMIN, KEYS, World
from tests.api.test_publishing import serve, wait_served
from tests.reliability.conftest import seed_dataset, seed_model
from tests.unit.test_outcome_stats import mixture_ratio_by_integration, wilson_by_root_finding
from training.dataset import Dataset

FAST = {"exposure_flush_s": 0.1, "reload_poll_s": 0.2}
MIXING_VARIANCE = 0.002**2  # the documented tau^2 (service/serving/outcomes/stats.py)


@pytest.fixture()
def world(make_settings: Callable[..., Settings]) -> Iterator[tuple[Settings, Registry, Dataset]]:
    settings = make_settings(**FAST)
    registry = Registry.from_url(settings.redis_url or "")
    dataset = seed_dataset(settings, registry, n_users=60, n_items=80)
    seed_model(settings, registry, dataset, "m-a", seed=1)
    yield settings, registry, dataset
    registry.close()


@pytest.fixture()
def events(redis_url: str) -> Iterator[Callable[..., str]]:
    """XADD one event to the stream exactly as POST /v1/events stores it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    n = [0]

    def add(user: str, item: str, kind: str, rec_id: str, entry_id: str = "*") -> str:
        n[0] += 1
        fields = {
            "event_id": f"e{n[0]}",
            "user_id": user,
            "item_id": item,
            "type": kind,
            "ts": repr(time.time()),
            "rec_id": rec_id,
        }
        return str(client.xadd(keys.events_stream(), fields, id=entry_id))

    yield add
    client.close()


def outcomes_when(
    client: TestClient, check: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get("/v1/serving/outcomes").json()
        if check(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def expected_scope(lists: list[dict[str, Any]], clicks: list[tuple[int, int]], purchases: int):
    """Figures of the answers received and the (list, position) clicked, computed here."""
    groups = Counter(it["group"] for body in lists for it in body["items"])
    clicked = [lists[i]["items"][p]["group"] for i, p in clicks]
    by_position = Counter("1" if p == 0 else "2" if p == 1 else "3" for _, p in clicks)
    return {
        "exposures": sum(len(b["items"]) for b in lists),
        "group_exposures": [groups[g] for g in range(4)],
        "group_clicks": [clicked.count(g) for g in range(4)],
        "clicks": len(clicks),
        "purchases": purchases,
        "tail_click_share": sum(1 for g in clicked if g > 0) / len(clicked),
        "by_position": by_position,
    }


def check_rate(rate: dict[str, Any], x: int, n: int) -> None:
    low, high = wilson_by_root_finding(x, n)
    assert rate["per_1000"] == pytest.approx(1000 * x / n)
    assert (rate["low"], rate["high"]) == pytest.approx((1000 * low, 1000 * high), abs=1e-6)


def test_answers_carry_rec_ids_and_cited_events_count_under_model_group_and_position(
    world, events
) -> None:
    settings, registry, dataset = world
    users = [str(u) for u in dataset.user_ids.tolist()]
    items = [str(i) for i in dataset.item_ids.tolist()]
    with TestClient(create_app(settings)) as client:
        # Before anything is served or cited: an event of a long-gone answer is unattributed
        # at once (its stream id is from 1970, beyond any wait for its record).
        events(users[0], items[0], "click", "0123456789ab", entry_id="1000-1")
        serve(registry, settings, dataset, "m-a")
        wait_served(client, "m-a")
        single = client.get(f"/v1/recommendations/{users[0]}", params={"k": 5}).json()
        batch = client.post("/v1/recommendations", json={"user_ids": users[1:4], "k": 4}).json()
        history = client.post(
            "/v1/recommendations/by-history", json={"items": items[:4], "k": 6}
        ).json()
        fallback = client.get(
            "/v1/recommendations/visitor-9", params={"k": 3, "fallback": "debiased"}
        ).json()
        rec_ids = [single["rec_id"], batch["rec_id"], history["rec_id"], fallback["rec_id"]]
        assert all(re.fullmatch("[0-9a-f]{12}", r) for r in rec_ids) and len(set(rec_ids)) == 4
        assert [r["rec_id"] for r in batch["results"]] == [batch["rec_id"]] * 3
        lists = [single, *batch["results"], history, fallback]
        who = [users[0], *users[1:4], "visitor-1", "visitor-9"]  # by-history: any visitor id
        recs = [single["rec_id"]] + [batch["rec_id"]] * 3 + [history["rec_id"], fallback["rec_id"]]
        clicks = [(i, p) for i in range(len(lists)) for p in (0, 2)] + [(0, 1), (4, 1)]
        for i, p in clicks:
            events(who[i], lists[i]["items"][p]["item_id"], "click", recs[i])
        events(who[0], lists[0]["items"][0]["item_id"], "purchase", recs[0])
        events(who[2], lists[2]["items"][3]["item_id"], "purchase", recs[2])
        # unattributed: no rec_id; an item the answer did not show; a user not in the batch
        events(who[0], lists[0]["items"][0]["item_id"], "click", "")
        shown = {it["item_id"] for it in single["items"]}
        events(who[0], next(i for i in items if i not in shown), "click", recs[0])
        events("stranger", lists[1]["items"][0]["item_id"], "click", batch["rec_id"])
        want = expected_scope(lists, clicks, purchases=2)
        lost = {"no_rec_id": 1, "unknown_rec_id": 1, "item_not_shown": 2}
        body = outcomes_when(
            client,
            lambda b: (
                bool(b["models"])
                and b["models"][0]["since_publish"]["clicks"] >= want["clicks"]
                and b["unattributed"]["total"] == lost
            ),
        )
        time.sleep(0.5)  # five more passes of the consumer: nothing is counted twice
        assert client.get("/v1/serving/outcomes").json()["models"] == body["models"]
        (m,) = body["models"]
        assert (m["model_id"], m["role"], m["weight"], body["test"]) == (
            "m-a",
            "active",
            None,
            None,
        )
        assert body["unattributed"]["window"] == lost
        for span in ("window", "since_publish"):
            scope = m[span]
            assert (scope["exposures"], scope["requests"]) == (want["exposures"], len(lists))
            assert (scope["clicks"], scope["purchases"], scope["views"]) == (want["clicks"], 2, 0)
            check_rate(scope["click_rate"], want["clicks"], want["exposures"])
            check_rate(scope["purchase_rate"], 2, want["exposures"])
            assert scope["tail_click_share"] == pytest.approx(want["tail_click_share"])
            assert [g["exposures"] for g in scope["groups"]] == want["group_exposures"]
            assert [g["clicks"] for g in scope["groups"]] == want["group_clicks"]
            for g, group in enumerate(scope["groups"]):
                if want["group_exposures"][g]:
                    check_rate(
                        group["click_rate"], want["group_clicks"][g], want["group_exposures"][g]
                    )
            assert scope["clicks_by_position"] == {
                **{p: 0 for p in ("1", "2", "3", "4-5", "6-10", "11-20", "21+")},
                **want["by_position"],
            }
        text = client.get("/metrics").text
        assert (
            f'unkd_outcomes_since_publish_clicks{{model_id="m-a"}} {float(want["clicks"])}' in text
        )
        assert (
            f'unkd_outcomes_window_exposures{{model_id="m-a"}} {float(want["exposures"])}' in text
        )
        assert 'unkd_outcomes_unattributed{reason="item_not_shown"} 2.0' in text
        assert "unkd_outcomes_up 1.0" in text and "unkd_outcomes_test_p_value" not in text


def test_two_api_processes_attribute_each_event_exactly_once(world, events) -> None:
    settings, registry, dataset = world
    users = [str(u) for u in dataset.user_ids.tolist()]
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        serve(registry, settings, dataset, "m-a")
        wait_served(one, "m-a")
        wait_served(two, "m-a")
        lists = [
            (one if n % 2 else two).get(f"/v1/recommendations/{u}").json()
            for n, u in enumerate(users[:30])
        ]
        n_events = 0
        for body in lists:
            for it in body["items"][:4]:
                events(body["user_id"], it["item_id"], "click", body["rec_id"])
                n_events += 1
        body = outcomes_when(
            two,
            lambda b: bool(b["models"]) and b["models"][0]["since_publish"]["clicks"] >= n_events,
        )
        time.sleep(1.0)
        final = one.get("/v1/serving/outcomes").json()
        assert final["models"][0]["since_publish"]["clicks"] == n_events
        assert (
            final["models"] == body["models"] or final["models"][0]["window"]["clicks"] == n_events
        )
        consumers = [c.app.state.outcome_consumer for c in (one, two)]  # type: ignore[attr-defined]
        assert consumers[0].name != consumers[1].name
        assert sum(c.attributed for c in consumers) == n_events
        assert sum(c.unattributed for c in consumers) == 0


def test_an_event_waits_for_its_record_then_gives_up(redis_url: str, events) -> None:
    """Real Redis, the consumer driven by hand: an event whose rec record is not written yet
    stays pending and is attributed once the record appears; one whose record never comes
    counts as unknown_rec_id after the wait; a dead consumer's pending event is taken over."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    now = [time.time()]
    make = lambda name, **kw: OutcomeConsumer(  # noqa: E731
        client, name=name, wait_s=30.0, clock=lambda: now[0], **kw
    )
    first = make("first")
    record = '{"o":"unkd:outcomes:m:e1","i":["x","y"],"g":[0,2]}'
    events("u1", "y", "click", "rec000000001")
    events("u1", "x", "click", "rec000000002")  # its record never comes
    assert (
        first.step() == 0
        and client.xpending(keys.events_stream(), keys.OUTCOME_GROUP)["pending"] == 2
    )
    client.hset(keys.rec_record("rec000000001"), "u1", record)
    assert first.step() == 1 and first.attributed == 1
    assert client.hgetall(keys.outcomes_total("unkd:outcomes:m:e1")) == {
        "click": "1",
        "click:g:2": "1",
        "click:p:2": "1",
        "click:g:2:p:2": "1",
    }
    now[0] += 31  # the second has waited long enough
    assert first.step() == 1 and first.unattributed == 1
    assert client.hgetall(keys.outcomes_total(keys.outcomes_unattributed())) == {
        "unknown_rec_id": "1"
    }
    # A consumer that read an event and died: another takes it over once it is idle.
    now[0] = time.time()
    events("u1", "x", "click", "rec000000001")
    assert first.step() == 1  # item x of rec 1: counted
    events("u1", "y", "click", "rec000000003")
    assert first.step() == 0  # pending in `first`, which now dies
    client.hset(keys.rec_record("rec000000003"), "u1", record)
    second = make("second", claim_idle_s=0.0)
    assert second.step() == 1 and second.attributed == 1
    assert client.hget(keys.outcomes_total("unkd:outcomes:m:e1"), "click") == "3"
    assert client.xpending(keys.events_stream(), keys.OUTCOME_GROUP)["pending"] == 0
    assert first.step() == 0  # nothing left for it, and nothing counted twice
    assert client.hget(keys.outcomes_total("unkd:outcomes:m:e1"), "click") == "3"
    # A slow consumer: between reading an event and counting it, another takes it over and
    # counts it; the slow one's count must then add nothing (XACK and count are one script).
    slow = make("slow")
    decide = slow._decide

    def overtaken(entries: list[Any]) -> int:
        assert second.step() == 1  # claims the event from `slow` and counts it
        return decide(entries)

    slow._decide = overtaken  # type: ignore[method-assign]
    events("u1", "x", "click", "rec000000003")
    assert slow.step() == 0 and slow.attributed == 0
    assert client.hget(keys.outcomes_total("unkd:outcomes:m:e1"), "click") == "4"
    client.close()


def test_two_arms_get_the_always_valid_test(make_settings, events) -> None:
    w = World(make_settings(api_keys=KEYS, **FAST), n_users=60)
    with w.app() as c:
        wait_served(c, "m-a")
        arms = [{"model_id": "m-a", "weight": 0.5}, {"model_id": "m-b", "weight": 0.5}]
        assert (
            c.put(
                "/v1/serving/experiment", json={"arms": arms, "salt": "o-1"}, headers=AS_ADMIN
            ).status_code
            == 200
        )
        deadline = time.monotonic() + 15
        while len(c.get("/v1/serving/outcomes").json()["models"]) != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lists = [c.get(f"/v1/recommendations/{u}", params={"k": 10}).json() for u in w.users[:40]]
        # m-a's users click their first item, m-b's their first three
        clicks = Counter()
        shown = Counter()
        for body in lists:
            n = 1 if body["model_id"] == "m-a" else 3
            for it in body["items"][:n]:
                events(body["user_id"], it["item_id"], "click", body["rec_id"])
            clicks[body["model_id"]] += n
            shown[body["model_id"]] += len(body["items"])
        consumer = c.app.state.outcome_consumer  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while consumer.attributed < sum(clicks.values()):  # one look only: the route once
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = c.get("/v1/serving/outcomes").json()
        by_id = {m["model_id"]: m for m in body["models"]}
        for arm in ("m-a", "m-b"):
            since = by_id[arm]["since_publish"]
            assert (since["clicks"], since["exposures"]) == (clicks[arm], shown[arm])
        test = body["test"]
        x_a, n_a, x_b, n_b = clicks["m-a"], shown["m-a"], clicks["m-b"], shown["m-b"]
        pa, pb = x_a / n_a, x_b / n_b
        v = pa * (1 - pa) / n_a + pb * (1 - pb) / n_b
        want_p = min(1.0, 1 / mixture_ratio_by_integration(pb - pa, v, MIXING_VARIANCE))
        assert (test["arm_a"], test["arm_b"], test["span"]) == ("m-a", "m-b", "since_publish")
        assert test["p_value"] == pytest.approx(want_p, rel=1e-6)
        assert test["difference_per_1000"] == pytest.approx(1000 * (pb - pa))
        assert test["decided"] is (want_p <= 0.05) and test["mixing_variance"] == MIXING_VARIANCE
        assert "mSPRT" in test["method"] and "always-valid" in test["method"]
        text = c.get("/metrics").text
        assert 'unkd_outcomes_test_p_value{arm_a="m-a",arm_b="m-b"}' in text
