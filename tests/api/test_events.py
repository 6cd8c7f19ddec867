"""POST /v1/events and fresh answers, through the whole app (create_app) on a real Redis.

Expected answers are computed here by brute force from the model's embeddings, the bundle's
training items and the events the test sent; never from the service's own results.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core import keys
from service.core.config import Settings
from service.core.events import EVENT_FIELDS
from service.serving.foldin import FOLD_IN_LAMBDA
from tests.support.live_api import LiveAPI
from tests.support.polling import wait_until
from training.checkpoint import ModelArtifact
from training.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from bundle_fixtures import make_bundle  # noqa: E402

WRITE_KEY, READ_KEY = "writer-key-0123456789", "reader-key-0123456789"
K = 10


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset, ModelArtifact]:
    return make_bundle(tmp_path_factory.mktemp("events-bundle"), model_id="E", seed=4)


def publish(redis_client: redis.Redis, bundle_dir: Path) -> None:
    pointer = json.dumps(
        {"model_id": "E", "bundle_dir": str(bundle_dir), "published_at": time.time()}
    )
    redis_client.set(keys.ACTIVE_MODEL, pointer)
    redis_client.publish(keys.SERVING_EVENTS, pointer)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    return wait_until(check, timeout_s, what, interval_s=0.02)


@pytest.fixture()
def app_client(
    make_settings: Callable[..., Settings], redis_client: redis.Redis, bundle: Any
) -> Iterator[TestClient]:
    publish(redis_client, bundle[0])
    with TestClient(create_app(make_settings())) as c:
        wait_for(lambda: c.get("/v1/serving").json().get("ready"), "the bundle to load")
        yield c


def stream(redis_client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in redis_client.xrange(keys.events_stream())]


# -- brute force --------------------------------------------------------------------------------


def seen_of(ds: Dataset, u: int) -> list[int]:
    csr = ds.csr("train")
    return csr.indices[csr.indptr[u] : csr.indptr[u + 1]].tolist()


def ranked(scores: np.ndarray, k: int, banned: list[int]) -> list[int]:
    """Top-k item indices by score (equal scores: lower index first), banned items left out."""
    s = scores.astype(np.float64).copy()
    s[banned] = -np.inf
    order = np.argsort(-s, kind="stable")
    return [int(i) for i in order[:k] if np.isfinite(s[i])]


def folded(model: ModelArtifact, history: list[int]) -> np.ndarray:
    """Scores of the fold-in by its formula: (Q_S^T Q_S + lam I)^-1 Q_S^T 1."""
    q = model.item_emb.astype(np.float64)
    qs = q[sorted(set(history))]
    lam = FOLD_IN_LAMBDA * float((q**2).sum(axis=1).mean())
    return q @ np.linalg.solve(qs.T @ qs + lam * np.eye(q.shape[1]), qs.sum(axis=0))


def items_of(body: dict[str, Any]) -> list[int]:
    return [int(it["item_id"][1:]) for it in body["items"]]


def ev(user: str, item: str, type_: str = "purchase", **extra: Any) -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "type": type_, **extra}


# -- ingestion ----------------------------------------------------------------------------------


def test_a_batch_is_stored_in_order_with_exactly_the_stream_fields(
    app_client: TestClient, redis_client: redis.Redis
) -> None:
    t0 = time.time()
    batch = [
        ev("u1", "i3", "view", ts=1767225600.5, rec_id="r-1", event_id="e-1"),
        ev("brand-new-user", "brand-new-item", "click"),  # unknown to the model: accepted
        ev("u2", "i7", "cart", event_id="e-3"),
    ]
    r = app_client.post("/v1/events", json={"events": batch})
    assert r.status_code == 202, r.text
    assert r.json() == {"received": 3, "stored": 3, "duplicates": 0}
    stored = stream(redis_client)
    assert [tuple(sorted(f)) for f in stored] == [tuple(sorted(EVENT_FIELDS))] * 3
    assert stored[0] == {
        "event_id": "e-1",
        "user_id": "u1",
        "item_id": "i3",
        "type": "view",
        "ts": "1767225600.5",
        "rec_id": "r-1",
    }
    assert [(f["user_id"], f["item_id"], f["type"]) for f in stored[1:]] == [
        ("brand-new-user", "brand-new-item", "click"),
        ("u2", "i7", "cart"),
    ]
    assert stored[1]["rec_id"] == "" and len(stored[1]["event_id"]) >= 16  # made by the API
    assert t0 <= float(stored[1]["ts"]) <= time.time()  # server time when absent
    metrics = app_client.get("/metrics").text
    assert 'unkd_events_total{result="stored"} 3.0' in metrics


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"type": "like"}, "type"),
        ({"item_id": ""}, "item_id"),
        ({"ts": -1}, "ts"),
        ({"event_id": ""}, "event_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_event_is_422_naming_index_and_field_and_nothing_is_kept(
    app_client: TestClient, redis_client: redis.Redis, bad: dict[str, Any], field: str
) -> None:
    batch = [ev("u1", "i1"), ev("u1", "i2"), {**ev("u1", "i3"), **bad}, ev("u1", "i4")]
    r = app_client.post("/v1/events", json={"events": batch})
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert locs == [["body", "events", 2, field]]
    assert redis_client.xlen(keys.events_stream()) == 0
    assert redis_client.keys(keys.event_seen("*")) == []


def test_any_text_is_stored_as_sent_and_a_lone_surrogate_is_422(
    app_client: TestClient, redis_client: redis.Redis
) -> None:
    # The batch reaches Redis as one JSON argument decoded by a Lua script: quotes,
    # backslashes, control characters, NUL and non-ASCII must come out byte for byte.
    odd = ['ü漢 "q" \\ /', "tab\tnew\nline\x00nul", "😀-emoji", "e-ü-1"]
    batch = [ev(odd[0], odd[1], "click", rec_id=odd[2], event_id=odd[3])]
    assert app_client.post("/v1/events", json={"events": batch}).status_code == 202
    (stored,) = stream(redis_client)
    assert (stored["user_id"], stored["item_id"], stored["rec_id"], stored["event_id"]) == (
        odd[0],
        odd[1],
        odd[2],
        odd[3],
    )
    assert redis_client.exists(keys.event_seen(odd[3]))
    # JSON may carry a lone surrogate ("\ud800"), which is not text (pydantic refuses it): a
    # 422 naming the event and the field, not a 500 from echoing it back, and nothing kept.
    fine = json.dumps(ev("u1", "i1", event_id="fine"))
    bad = '{"user_id": "u1", "item_id": "bad\\ud800", "type": "view"}'
    body = f'{{"events": [{fine}, {bad}]}}'
    r = app_client.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "events", 1, "item_id"] and error["input"] == "bad\ud800"
    assert redis_client.xlen(keys.events_stream()) == 1
    assert not redis_client.exists(keys.event_seen("fine"))


def test_missing_field_and_batch_bounds(app_client: TestClient, redis_client: redis.Redis) -> None:
    r = app_client.post("/v1/events", json={"events": [ev("u1", "i1"), {"user_id": "u1"}]})
    assert r.status_code == 422
    assert sorted(tuple(e["loc"]) for e in r.json()["detail"]) == [
        ("body", "events", 1, "item_id"),
        ("body", "events", 1, "type"),
    ]
    assert app_client.post("/v1/events", json={"events": []}).status_code == 422
    too_many = [ev("u1", f"i{i % 300}") for i in range(1001)]
    r = app_client.post("/v1/events", json={"events": too_many})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "events"]
    assert redis_client.xlen(keys.events_stream()) == 0


def test_a_repeated_event_id_is_stored_once(
    app_client: TestClient, redis_client: redis.Redis
) -> None:
    first = [
        ev("u1", "i1", event_id="a"),
        ev("u1", "i2", event_id="b"),
        ev("u1", "i1", event_id="a"),
    ]
    r = app_client.post("/v1/events", json={"events": first})
    assert r.json() == {"received": 3, "stored": 2, "duplicates": 1}
    again = [ev("u1", "i2", event_id="b"), ev("u1", "i9", event_id="c")]  # a resent batch, grown
    assert app_client.post("/v1/events", json={"events": again}).json() == {
        "received": 2,
        "stored": 1,
        "duplicates": 1,
    }
    assert [f["event_id"] for f in stream(redis_client)] == ["a", "b", "c"]
    ttl = redis_client.ttl(keys.event_seen("a"))
    assert 0 < ttl <= Settings().events_dedup_ttl_s
    assert 'unkd_events_total{result="duplicate"} 2.0' in app_client.get("/metrics").text


def test_events_need_a_write_key(
    make_settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    settings = make_settings(api_keys=[f"w:write:{WRITE_KEY}", f"r:read:{READ_KEY}"])
    body = {"events": [ev("u1", "i1")]}
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/events", json=body).status_code == 401
        read = c.post("/v1/events", json=body, headers={"Authorization": f"Bearer {READ_KEY}"})
        assert read.status_code == 403 and "role write" in read.json()["detail"]
        assert redis_client.xlen(keys.events_stream()) == 0
        ok = c.post("/v1/events", json=body, headers={"Authorization": f"Bearer {WRITE_KEY}"})
        assert ok.status_code == 202
    assert redis_client.xlen(keys.events_stream()) == 1


# -- fresh answers ------------------------------------------------------------------------------


def test_a_purchased_item_leaves_the_next_answer(app_client: TestClient, bundle: Any) -> None:
    _, ds, model = bundle
    u = 5
    scores = model.user_emb[u] @ model.item_emb.T
    seen = seen_of(ds, u)
    before = app_client.get(f"/v1/recommendations/u{u}", params={"k": K}).json()
    assert before["source"] == "model" and items_of(before) == ranked(scores, K, seen)
    top, third = items_of(before)[0], items_of(before)[2]
    # a view is not positive feedback (default types: click, purchase): nothing changes
    app_client.post("/v1/events", json={"events": [ev(f"u{u}", f"i{third}", "view")]})
    app_client.post("/v1/events", json={"events": [ev(f"u{u}", f"i{top}", "purchase")]})
    expected = ranked(scores, K, seen + [top])
    after = wait_for(
        lambda: (
            b
            if items_of(b := app_client.get(f"/v1/recommendations/u{u}?k={K}").json())
            != items_of(before)
            else None
        ),
        "the purchase to reach the answer",
    )
    assert items_of(after) == expected and after["source"] == "model"
    assert third in items_of(after)
    kept = app_client.get(f"/v1/recommendations/u{u}", params={"k": K, "exclude_seen": "false"})
    assert items_of(kept.json()) == ranked(scores, K, [])  # exclude_seen=false keeps everything
    # with a filter the fresh items are still left out; the batch route leaves them out too
    filtered = app_client.get(f"/v1/recommendations/u{u}", params={"k": K, "exclude": "i0"})
    assert items_of(filtered.json()) == ranked(scores, K, seen + [top, 0])
    batch = app_client.post("/v1/recommendations", json={"user_ids": [f"u{u}", "u6"], "k": K})
    results = batch.json()["results"]
    assert items_of(results[0]) == expected
    u6 = model.user_emb[6] @ model.item_emb.T
    assert items_of(results[1]) == ranked(u6, K, seen_of(ds, 6))


def test_an_unknown_user_with_events_is_answered_from_them(
    app_client: TestClient, bundle: Any
) -> None:
    _, _, model = bundle
    assert app_client.get("/v1/recommendations/visitor-9").status_code == 404
    app_client.post("/v1/events", json={"events": [ev("visitor-9", "i4", "view")]})
    clicks = [ev("visitor-9", f"i{i}", "click") for i in (1, 12, 40)] + [
        ev("visitor-9", "not-in-catalogue", "click")
    ]
    app_client.post("/v1/events", json={"events": clicks})
    body = wait_for(
        lambda: (
            (r := app_client.get(f"/v1/recommendations/visitor-9?k={K}")).status_code == 200
            and r.json()
        ),
        "the clicks to reach the answer",
    )
    history = [1, 12, 40]  # the view is not positive; the unknown item is ignored
    assert body["source"] == "history" and body["user_id"] == "visitor-9"
    assert items_of(body) == ranked(folded(model, history), K, history)
    np.testing.assert_allclose(
        [it["score"] for it in body["items"]],
        folded(model, history)[items_of(body)],
        rtol=1e-4,
        atol=1e-5,
    )
    # a fallback request does not hide the history answer
    fb = app_client.get("/v1/recommendations/visitor-9", params={"k": K, "fallback": "popular"})
    assert fb.json()["source"] == "history"
    other = app_client.get("/v1/recommendations/visitor-8", params={"fallback": "popular"})
    assert other.json()["source"] == "fallback" and other.json()["fallback"] == "popular"


def test_a_user_with_only_unknown_items_stays_unknown(app_client: TestClient) -> None:
    app_client.post("/v1/events", json={"events": [ev("visitor-x", "ghost-item", "purchase")]})
    app_client.post("/v1/events", json={"events": [ev("u1", "i1", "purchase")]})
    wait_for(lambda: app_client.app.state.fresh.items("u1"), "the feed")  # type: ignore[attr-defined]
    r = app_client.get("/v1/recommendations/visitor-x")
    assert r.status_code == 404


def test_a_second_api_process_excludes_the_item_too(
    make_settings: Callable[..., Settings],
    redis_client: redis.Redis,
    bundle: Any,
    live_api: Callable[..., LiveAPI],
) -> None:
    _, ds, model = bundle
    settings = make_settings()
    publish(redis_client, bundle[0])
    other = live_api(settings, ready="/readyz")
    u = 9
    scores = model.user_emb[u] @ model.item_emb.T
    seen = seen_of(ds, u)
    top = ranked(scores, 1, seen)[0]
    with TestClient(create_app(settings)) as c, httpx.Client(base_url=other.url) as remote:
        assert items_of(remote.get(f"/v1/recommendations/u{u}?k={K}").json())[0] == top
        assert c.post("/v1/events", json={"events": [ev(f"u{u}", f"i{top}")]}).status_code == 202
        expected = ranked(scores, K, seen + [top])
        wait_for(
            lambda: items_of(remote.get(f"/v1/recommendations/u{u}?k={K}").json()) == expected,
            "the other process to exclude the item",
        )


def test_a_restarted_process_loads_the_stream_tail(
    make_settings: Callable[..., Settings], redis_client: redis.Redis, bundle: Any
) -> None:
    _, ds, model = bundle
    settings = make_settings()
    publish(redis_client, bundle[0])
    with TestClient(create_app(settings)) as c:
        c.post("/v1/events", json={"events": [ev("u3", "i2"), ev("u3", "i8", "view")]})
    with TestClient(create_app(settings)) as c:  # a new process: the map is filled at start
        wait_for(lambda: c.get("/v1/serving").json().get("ready"), "the bundle")
        wait_for(lambda: list(c.app.state.fresh.items("u3")) == ["i2"], "the tail")  # type: ignore[attr-defined]
        body = c.get("/v1/recommendations/u3", params={"k": K}).json()
        scores = model.user_emb[3] @ model.item_emb.T
        assert items_of(body) == ranked(scores, K, seen_of(ds, 3) + [2])


def test_openapi_documents_events_outcomes_and_history_answers_with_examples(
    app_client: TestClient,
) -> None:
    """Issue 18's "done when": the new routes and the history answer are in the OpenAPI
    document with examples, and those examples are valid requests and answers."""
    from service.api.routes.events import EventBatch, EventsAccepted
    from service.serving.schemas import Recommendations, RecommendationsBatch

    spec = app_client.get("/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]

    def schema_of(op: dict[str, Any], code: str) -> dict[str, Any]:
        ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]

    events = paths["/v1/events"]["post"]
    body_ref = events["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    for example in schemas[body_ref.rsplit("/", 1)[1]]["examples"]:
        EventBatch.model_validate(example)
    assert {"401", "422"} <= set(events["responses"])
    for example in schema_of(events, "202")["examples"]:
        EventsAccepted.model_validate(example)

    outcomes = schema_of(paths["/v1/serving/outcomes"]["get"], "200")["examples"][0]
    window = outcomes["models"][0]["window"]
    assert {"clicks", "exposures", "click_rate", "groups"} <= set(window)
    assert outcomes["test"]["method"].startswith("mSPRT")

    one = schema_of(paths["/v1/recommendations/{user_id}"]["get"], "200")["examples"]
    assert {Recommendations.model_validate(e).source for e in one} >= {"model", "history"}
    batch = schema_of(paths["/v1/recommendations"]["post"], "200")["examples"]
    results = [r for e in batch for r in RecommendationsBatch.model_validate(e).results]
    assert "history" in {r.source for r in results}
