"""Live exposure (GET /v1/serving/exposure, the unkd_exposure_* series of /metrics) through
the whole app on the real Redis of tests/support: what it counts against the answers the
test received, the reset on a new publish, several API instances adding up, the switch,
and a flush that outlives a Redis outage.

Models are random embeddings over a tiny synthetic dataset (no training), each with an
offline report (tests/report_samples.py) whose exposure_share@20 the route shows.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from service.core.registry import Registry
from service.serving.bundle import load_bundle
from service.serving.exposure.counter import ExposureCounter
from service.serving.exposure.reader import ExposureReader
from service.serving.served_model import ServedModel
from service.stack.redis_server import RedisServer
from tests.api.test_publishing import bundle_of, serve, wait_served
from tests.api.test_recommendations import make_bundle
from tests.reliability.conftest import seed_dataset, seed_model
from tests.report_samples import sample_report
from tests.support.redis_dbs import kill_redis
from training.dataset import Dataset
from training.metrics_popularity import gini_index

N_USERS, N_ITEMS = 80, 120
FAST = {"exposure_flush_s": 0.1, "reload_poll_s": 0.2}


def seed(settings: Settings) -> tuple[Registry, Dataset, dict[str, Any]]:
    """Dataset, model m-a with its offline report (returned), model m-b."""
    registry = Registry.from_url(settings.redis_url or "")
    dataset = seed_dataset(settings, registry, n_users=N_USERS, n_items=N_ITEMS)
    reports = {}
    for s, model_id in enumerate(("m-a", "m-b"), 1):
        seed_model(settings, registry, dataset, model_id, seed=s)
        reports[model_id] = sample_report(s)
        Path(registry.get_model(model_id).path, "report.json").write_text(
            json.dumps(reports[model_id])
        )
    return registry, dataset, reports


@pytest.fixture()
def world(
    make_settings: Callable[..., Settings],
) -> Callable[..., tuple[Settings, Registry, Dataset, dict[str, Any]]]:
    def make(**overrides: Any) -> tuple[Settings, Registry, Dataset, dict[str, Any]]:
        settings = make_settings(**{**FAST, **overrides})
        return (settings, *seed(settings))

    return make


def exposure_when(
    client: TestClient, check: Callable[[dict[str, Any]], bool], timeout_s: float = 15.0
) -> dict[str, Any]:
    """Poll the route until `check(body)` holds (flushes run every 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get("/v1/serving/exposure")
        assert r.status_code == 200, r.text
        body = r.json()
        if check(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def window_requests(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda b: bool(b["models"]) and b["models"][0]["window"]["requests"] >= n


def expected_figures(lists: list[dict[str, Any]], dataset: Dataset) -> dict[str, Any]:
    """The figures of the answers a test received, computed from their items."""
    index = {str(i): n for n, i in enumerate(dataset.item_ids.tolist())}
    pop = dataset.popularity()
    shown = [[index[it["item_id"]] for it in body["items"]] for body in lists]
    flat = [i for items in shown for i in items]
    groups = Counter(it["group"] for body in lists for it in body["items"])
    counts = np.bincount(flat, minlength=dataset.n_items)
    return {
        "requests": len(lists),
        "slots": len(flat),
        "shares": [groups[g] / len(flat) for g in range(4)],
        "arp": float(np.mean([pop[items].mean() for items in shown if items])),
        "distinct_items": int(np.count_nonzero(counts)),
        "coverage": np.count_nonzero(counts) / dataset.n_items,
        "gini": gini_index(counts),
    }


def check_scope(scope: dict[str, Any], want: dict[str, Any], offline: list[float]) -> None:
    assert scope["requests"] == want["requests"] and scope["slots"] == want["slots"]
    shares = [g["share"] for g in scope["groups"]]
    assert [g["group"] for g in scope["groups"]] == [0, 1, 2, 3]
    assert sum(shares) == pytest.approx(1.0) and shares == pytest.approx(want["shares"])
    assert scope["head_share"] == shares[0]
    assert [g["offline_share"] for g in scope["groups"]] == offline
    assert scope["arp"] == pytest.approx(want["arp"])
    assert scope["distinct_items"] == want["distinct_items"] and scope["coverage"] == pytest.approx(
        want["coverage"]
    )
    assert scope["gini"] == pytest.approx(want["gini"])
    assert 0 < scope["latency_ms"]["p50"] <= scope["latency_ms"]["p99"] < 10_000


def test_exposure_counts_every_answered_list_and_shows_the_offline_report(world) -> None:
    settings, registry, dataset, reports = world()
    users = [str(u) for u in dataset.user_ids.tolist()]
    items = [str(i) for i in dataset.item_ids.tolist()]
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/serving/exposure").json() == {
            "window_s": 600,
            "bucket_s": 10,
            "counting": True,
            "models": [],
        }
        serve(registry, settings, dataset, "m-a")
        wait_served(client, "m-a")
        lists = [client.get(f"/v1/recommendations/{u}", params={"k": 5}).json() for u in users[:12]]
        lists.append(
            client.get(
                f"/v1/recommendations/{users[0]}", params=[("k", 7), ("groups", 2), ("groups", 3)]
            ).json()
        )
        lists += client.post("/v1/recommendations", json={"user_ids": users[12:15], "k": 4}).json()[
            "results"
        ]
        lists.append(
            client.post("/v1/recommendations/by-history", json={"items": items[:4], "k": 6}).json()
        )
        lists.append(
            client.get("/v1/recommendations/nobody", params={"k": 3, "fallback": "debiased"}).json()
        )
        assert (
            client.get(f"/v1/items/{items[0]}/similar", params={"k": 5}).status_code == 200
        )  # not counted
        assert client.get("/v1/recommendations/nobody").status_code == 404  # not an answer
        assert all(body["model_id"] == "m-a" for body in lists) and len(lists) == 18
        body = exposure_when(client, window_requests(18))
        (m,) = body["models"]
        assert (m["model_id"], m["role"], m["weight"]) == ("m-a", "active", None)
        assert m["since"] == client.get("/v1/serving").json()["published_at"]
        want = expected_figures(lists, dataset)
        offline = [row["exposure_share@20"] for row in reports["m-a"]["groups"]]
        check_scope(m["window"], want, offline)
        check_scope(m["since_publish"], want, offline)
        text = client.get("/metrics").text
        assert 'unkd_exposure_window_requests{model_id="m-a"} 18.0' in text
        assert (
            'unkd_exposure_since_publish_slots{model_id="m-a"} ' + f"{float(want['slots'])}" in text
        )
        assert (
            f'unkd_exposure_window_group_share{{group="0",model_id="m-a"}} {m["window"]["head_share"]}'
            in text
        )
        assert f'unkd_exposure_offline_group_share{{group="3",model_id="m-a"}} {offline[3]}' in text
        assert 'unkd_exposure_window_latency_p99_seconds{model_id="m-a"}' in text
        assert "unkd_exposure_up 1.0" in text and "unkd_exposure_arm_weight{" not in text


def test_since_publish_starts_again_at_a_new_publish(world) -> None:
    settings, registry, dataset, _ = world()
    users = [str(u) for u in dataset.user_ids.tolist()]
    with TestClient(create_app(settings)) as client:
        serve(registry, settings, dataset, "m-a")
        wait_served(client, "m-a")
        for u in users[:5]:
            client.get(f"/v1/recommendations/{u}")
        first = exposure_when(client, window_requests(5))["models"][0]
        assert first["since_publish"]["requests"] == 5
        published = client.get("/v1/serving").json()["published_at"]
        serve(registry, settings, dataset, "m-a")  # the same model, published again
        deadline = time.monotonic() + 15
        while client.get("/v1/serving").json()["published_at"] == published:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        fresh = client.get("/v1/serving/exposure").json()["models"][0]
        assert fresh["since"] != first["since"]
        assert fresh["since_publish"]["requests"] == 0 and fresh["window"]["requests"] == 0
        assert (
            fresh["since_publish"]["head_share"] is None
            and fresh["since_publish"]["latency_ms"]["p50"] is None
        )
        for u in users[5:8]:
            client.get(f"/v1/recommendations/{u}")
        again = exposure_when(client, lambda b: b["models"][0]["since_publish"]["requests"] >= 3)[
            "models"
        ][0]
        assert again["since_publish"]["requests"] == 3 and again["window"]["requests"] == 3


def test_two_api_instances_add_up(world) -> None:
    settings, registry, dataset, reports = world()
    users = [str(u) for u in dataset.user_ids.tolist()]
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        serve(registry, settings, dataset, "m-a")
        wait_served(one, "m-a")
        wait_served(two, "m-a")
        lists = [one.get(f"/v1/recommendations/{u}", params={"k": 6}).json() for u in users[:7]]
        lists += [two.get(f"/v1/recommendations/{u}", params={"k": 6}).json() for u in users[3:12]]
        body = exposure_when(one, window_requests(16))
        assert (
            exposure_when(two, window_requests(16))["models"] == body["models"]
        )  # both read the sum
        offline = [row["exposure_share@20"] for row in reports["m-a"]["groups"]]
        check_scope(body["models"][0]["window"], expected_figures(lists, dataset), offline)


def test_counting_switched_off_adds_nothing(world) -> None:
    settings, registry, dataset, _ = world()
    off_settings = settings.model_copy(update={"exposure_counting": False})
    users = [str(u) for u in dataset.user_ids.tolist()]
    with TestClient(create_app(off_settings)) as off, TestClient(create_app(settings)) as on:
        serve(registry, settings, dataset, "m-a")
        wait_served(off, "m-a")
        wait_served(on, "m-a")
        assert off.app.state.exposure_counter is None  # type: ignore[attr-defined]
        for u in users[:6]:
            assert off.get(f"/v1/recommendations/{u}").status_code == 200
        for u in users[:2]:
            on.get(f"/v1/recommendations/{u}")
        assert exposure_when(on, window_requests(2))["models"][0]["window"]["requests"] == 2
        time.sleep(0.5)  # five flush periods: the off instance never writes
        body = off.get("/v1/serving/exposure").json()
        assert body["counting"] is False and body["models"][0]["window"]["requests"] == 2


def test_a_flush_during_a_redis_outage_keeps_its_counts(
    own_redis: RedisServer, tmp_path: Path, make_settings
) -> None:
    settings = make_settings(redis_url=own_redis.url)
    registry = Registry.from_url(own_redis.url)
    dataset = seed_dataset(settings, registry, n_users=20, n_items=30)
    seed_model(settings, registry, dataset, "m-a")
    bundle = load_bundle(Path(bundle_of(settings, dataset, "m-a")))
    client = redis.Redis.from_url(own_redis.url, socket_timeout=2, socket_connect_timeout=2)
    counter = ExposureCounter(client, flush_s=60)
    tally = counter.tally(bundle, "epoch-1")
    tally.add(np.array([0, 1, 2, -1]), 0.001)
    kill_redis(own_redis)
    assert counter.flush() == 0  # failed: the counts are kept
    tally.add(np.array([[1, 2], [3, 3]]), 0.002)
    own_redis.start()
    assert counter.flush() == 3 and counter.flush() == 0  # written once
    report = ExposureReader(client, lambda model_id: None).report(
        [ServedModel(bundle, "active", None, tally)], counting=True
    )
    since = report.models[0].since_publish
    assert (since.requests, since.slots, since.distinct_items) == (3, 7, 4)
    assert since.coverage == pytest.approx(4 / 30) and report.models[0].window.requests == 3
    client.close()
    registry.close()


def test_the_window_sums_the_buckets_begun_in_the_last_600_s(
    redis_url: str, tmp_path: Path
) -> None:
    path, _, _ = make_bundle(tmp_path, model_id="w", n_items=30)
    bundle = load_bundle(path)
    client = redis.Redis.from_url(redis_url)
    now = [100_000.0]
    counter = ExposureCounter(client, clock=lambda: now[0])
    tally = counter.tally(bundle, "epoch-w")
    # Buckets of 10 s: 10000, 10001, 10040 and 10060 (the current one when read).
    for t, shown in (
        (100_000.0, [0, 1]),
        (100_015.0, [1]),
        (100_400.0, [2, 3, 4]),
        (100_605.0, [5]),
    ):
        now[0] = t
        tally.add(np.array(shown), 0.001)
        assert counter.flush() == 1
    reader = ExposureReader(client, lambda model_id: None, clock=lambda: now[0])
    served = ServedModel(bundle, "active", None, tally)
    (m,) = reader.report([served], counting=True).models
    assert (m.window.requests, m.window.slots, m.window.distinct_items) == (
        3,
        5,
        5,
    )  # bucket 10000 began 605 s ago
    assert (m.since_publish.requests, m.since_publish.slots, m.since_publish.distinct_items) == (
        4,
        7,
        6,
    )
    now[0] = 100_615.0  # bucket 10001 leaves the window too
    (m,) = reader.report([served], counting=True).models
    assert (m.window.requests, m.window.slots) == (2, 4) and m.since_publish.requests == 4
    ttl = client.ttl(f"{tally.key}:b:10060")
    assert (
        600 < ttl <= 660
        and client.ttl(f"{tally.key}:bi:10060") > 600
        and client.ttl(f"{tally.key}:items") > 86400
    )
    client.close()
