"""POST /v1/recommendations (the batch) for users the served model does not know: answered from
their recent positive events by the GET's fold-in ("source": "history"), through the whole app
on a real Redis.

Expected lists are computed here by brute force: the fold-in by its documented closed form,
u = (Q_S^T Q_S + lam I)^-1 Q_S^T 1 with lam = FOLD_IN_LAMBDA x mean ||q_i||^2 (docs/service.md,
service/serving/foldin.py), in numpy over the bundle's item embeddings, then the top-k of
Q u with the history left out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core import keys
from service.core.config import Settings
from tests.support.polling import wait_until
from training.checkpoint import ModelArtifact
from training.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from bundle_fixtures import make_bundle  # noqa: E402

K = 10
LAMBDA = 100.0  # the documented default (docs/service.md, "Answers from a history")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset, ModelArtifact]:
    return make_bundle(tmp_path_factory.mktemp("batch-history"), model_id="B", seed=7)


@pytest.fixture()
def app_client(
    make_settings: Callable[..., Settings], redis_client: redis.Redis, bundle: Any
) -> Iterator[TestClient]:
    pointer = json.dumps({"model_id": "B", "bundle_dir": str(bundle[0]), "published_at": 1.0})
    redis_client.set(keys.ACTIVE_MODEL, pointer)
    with TestClient(create_app(make_settings())) as c:
        wait_for(lambda: c.get("/v1/serving").json().get("ready"), "the bundle to load")
        yield c


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    return wait_until(check, timeout_s, what, interval_s=0.02)


def fold_in_scores(item_emb: np.ndarray, history: list[int]) -> np.ndarray:
    """(n_items,) float64 scores of the closed-form fold-in of `history`."""
    q = item_emb.astype(np.float64)
    qs = q[sorted(set(history))]
    lam = LAMBDA * float(np.mean(np.sum(q * q, axis=1)))
    u = np.linalg.solve(qs.T @ qs + lam * np.eye(q.shape[1]), qs.T @ np.ones(len(qs)))
    return q @ u


def top_k(scores: np.ndarray, k: int, banned: list[int]) -> list[int]:
    """Item indices by descending score (ties: lower index first), banned ones left out."""
    order = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in set(banned)]
    return order[:k]


def seen_of(ds: Dataset, u: int) -> list[int]:
    csr = ds.csr("train")
    return csr.indices[csr.indptr[u] : csr.indptr[u + 1]].tolist()


def items_of(result: dict[str, Any]) -> list[int]:
    return [int(it["item_id"][1:]) for it in result["items"]]


def send(client: TestClient, user: str, items: list[str], type_: str = "click") -> None:
    events = [{"user_id": user, "item_id": i, "type": type_} for i in items]
    assert client.post("/v1/events", json={"events": events}).status_code == 202


def test_an_unknown_user_with_events_is_answered_from_history_in_a_batch(
    app_client: TestClient, bundle: Any
) -> None:
    _, ds, model = bundle
    # the items of largest norm: their fold-in ranks them first, so leaving them out shows
    norms = np.sum(model.item_emb.astype(np.float64) ** 2, axis=1)
    history = sorted(int(i) for i in np.argsort(-norms)[:4] if int(i) > 1)
    send(app_client, "visitor-a", [f"i{i}" for i in history] + ["not-in-catalogue"])
    send(app_client, "visitor-a", ["i9"], "view")  # not a positive type: not history
    fresh = app_client.app.state.fresh  # type: ignore[attr-defined]
    wait_for(lambda: len(fresh.items("visitor-a")) == len(history) + 1, "the clicks")

    r = app_client.post("/v1/recommendations", json={"user_ids": ["u2", "visitor-a", "u5"], "k": K})
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert [x["user_id"] for x in results] == ["u2", "visitor-a", "u5"]
    assert [x["source"] for x in results] == ["model", "history", "model"]
    assert {x["rec_id"] for x in results} == {body["rec_id"]}
    expected = fold_in_scores(model.item_emb, history)
    assert set(top_k(expected, K, [])) & set(history)  # the data makes the ban visible
    assert items_of(results[1]) == top_k(expected, K, history)
    np.testing.assert_allclose(
        [it["score"] for it in results[1]["items"]],
        expected[items_of(results[1])],
        rtol=1e-4,
        atol=1e-5,
    )
    for row, u in ((0, 2), (2, 5)):  # the known users are answered by their trained vectors
        scores = model.user_emb[u].astype(np.float64) @ model.item_emb.T.astype(np.float64)
        assert items_of(results[row]) == top_k(scores, K, seen_of(ds, u))

    # the same list as the GET gives, and exclude_seen=false keeps the history items
    get = app_client.get("/v1/recommendations/visitor-a", params={"k": K}).json()
    assert get["source"] == "history" and items_of(get) == items_of(results[1])
    kept = app_client.post(
        "/v1/recommendations", json={"user_ids": ["visitor-a"], "k": K, "exclude_seen": False}
    ).json()["results"][0]
    assert kept["source"] == "history" and items_of(kept) == top_k(expected, K, [])

    # with a filter the history row keeps the filter and still leaves its history out
    filtered = app_client.post(
        "/v1/recommendations",
        json={"user_ids": ["visitor-a"], "k": K, "exclude": ["i0", "i1"]},
    ).json()["results"][0]
    assert filtered["source"] == "history"
    assert items_of(filtered) == top_k(expected, K, history + [0, 1])


def test_a_user_without_events_is_still_unknown_in_a_batch(
    app_client: TestClient, bundle: Any
) -> None:
    send(app_client, "visitor-b", ["i4"])
    send(app_client, "visitor-c", ["ghost-item"])  # an item the catalogue does not know
    send(app_client, "visitor-d", ["i8"], "view")  # not positive
    fresh = app_client.app.state.fresh  # type: ignore[attr-defined]
    wait_for(lambda: fresh.items("visitor-b") and fresh.items("visitor-c"), "the events")
    for stranger in ("nobody", "visitor-c", "visitor-d"):
        r = app_client.post(
            "/v1/recommendations", json={"user_ids": ["u1", "visitor-b", stranger], "k": K}
        )
        assert r.status_code == 404, (stranger, r.text)
        assert r.json()["detail"] == f"user_ids: 1 unknown to model B: {stranger!r}"
    ok = app_client.post("/v1/recommendations", json={"user_ids": ["visitor-b"], "k": K})
    assert ok.status_code == 200 and ok.json()["results"][0]["source"] == "history"
