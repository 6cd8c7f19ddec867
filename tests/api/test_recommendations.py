"""Recommendation and serving-status routes over HTTP (httpx via TestClient).

Most tests mount the router on a bare FastAPI app with a static IndexStore loaded from a
tiny bundle; the last ones run the whole app (create_app) against the real Redis of
tests/api/conftest.py and publish by moving the active pointer.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.errors import install_error_handlers
from service.core import keys
from service.core.bundle_format import build_bundle
from service.core.config import Settings
from service.serving.index_store import IndexStore
from service.serving.routes import router
from tests.support.answers import same_answer
from training.dataset import Dataset

# The bundle helpers live beside the unit tests that use them most.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from bundle_fixtures import brute_force_topk, make_bundle, make_dataset, make_model_dir  # noqa: E402

MAX_K, MAX_BATCH = 50, 5


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("api-bundles")
    return {mid: make_bundle(root, model_id=mid, seed=s) for mid, s in (("A", 1), ("B", 2))}


def make_client(root: Path) -> tuple[TestClient, IndexStore]:
    settings = Settings(data_dir=root, max_k=MAX_K, max_batch_users=MAX_BATCH)
    app = FastAPI()
    install_error_handlers(app)  # the serving routes raise domain errors the app maps
    app.include_router(router)
    app.state.settings = settings
    app.state.index_store = IndexStore(settings, None)
    return TestClient(app), app.state.index_store


@pytest.fixture()
def static_client(bundles, tmp_path: Path) -> TestClient:
    c, store = make_client(tmp_path)
    path, _, _ = bundles["A"]
    store.load_now({"model_id": "A", "bundle_dir": str(path), "published_at": "t0"})
    return c


def test_get_recommendations_excludes_seen_and_matches_brute_force(static_client, bundles) -> None:
    path, ds, model = bundles["A"]
    seen = ds.csr("train")
    for u in (0, 7, 19):
        r = static_client.get(f"/v1/recommendations/u{u}", params={"k": 12})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] == f"u{u}" and body["model_id"] == "A"
        items = [int(it["item_id"][1:]) for it in body["items"]]
        assert len(items) == 12
        assert not set(items) & set(seen.indices[seen.indptr[u] : seen.indptr[u + 1]].tolist())
        ref_s, ref_i = brute_force_topk(
            model.user_emb,
            model.item_emb,
            np.array([u]),
            12,
            [seen.indices[seen.indptr[u] : seen.indptr[u + 1]]],
        )
        assert items == ref_i[0].tolist()
        np.testing.assert_allclose([it["score"] for it in body["items"]], ref_s[0], rtol=1e-5)
        groups = ds.groups(4)
        assert [it["group"] for it in body["items"]] == groups[items].tolist()


def test_exclude_seen_false_and_default_k(static_client, bundles) -> None:
    _, _, model = bundles["A"]
    r = static_client.get("/v1/recommendations/u3", params={"exclude_seen": "false"})
    assert r.status_code == 200
    items = [int(it["item_id"][1:]) for it in r.json()["items"]]
    _, ref_i = brute_force_topk(model.user_emb, model.item_emb, np.array([3]), 20, None)
    assert items == ref_i[0].tolist()  # default k = 20, seen items allowed


def test_unknown_user_is_404_naming_it(static_client) -> None:
    r = static_client.get("/v1/recommendations/nobody-42")
    assert r.status_code == 404
    assert r.json() == {"detail": "user_id='nobody-42': no such user in model A"}


# Ids with "/", asked for percent-encoded ("a%2Fb"): the ASGI server decodes %2F before
# routing. (A literal "%" is left out: starlette's TestClient unquotes the path twice.)
SLASH_IDS = ["a/b", "/leading", "trailing/", "x//y", "../up", "line\nbreak/é"]


@pytest.fixture(scope="module")
def slash_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle whose users are SLASH_IDS plus u0, u1."""
    root = tmp_path_factory.mktemp("slash-bundle")
    tiny = make_dataset(n_users=len(SLASH_IDS) + 2, seed=3)
    ds = Dataset(
        name="slashes",
        user_ids=np.array([*SLASH_IDS, "u0", "u1"]),
        item_ids=tiny.item_ids,
        train=tiny.train,
        valid=tiny.valid,
        test=tiny.test,
    )
    out = root / "bundle"
    build_bundle(make_model_dir(root, ds), ds, out, model_id="S")
    return out


@pytest.mark.parametrize("user_id", SLASH_IDS)
def test_ids_with_slashes_are_reachable(slash_bundle: Path, tmp_path: Path, user_id: str) -> None:
    c, store = make_client(tmp_path)
    store.load_now({"model_id": "S", "bundle_dir": str(slash_bundle), "published_at": "t0"})
    batch = c.post("/v1/recommendations", json={"user_ids": [user_id], "k": 3}).json()["results"][0]
    r = c.get(f"/v1/recommendations/{quote(user_id, safe='')}", params={"k": 3})
    assert r.status_code == 200, r.text
    assert same_answer(r.json(), batch) and r.json()["user_id"] == user_id
    # Unencoded slashes reach the same id (a "../" segment would be resolved by the client).
    raw = c.get(
        f"/v1/recommendations/{quote(user_id.replace('../', '..%2F'), safe='/%')}", params={"k": 3}
    )
    assert same_answer(raw.json(), batch)


def test_slash_ids_do_not_shadow_other_paths(slash_bundle: Path, tmp_path: Path) -> None:
    c, store = make_client(tmp_path)
    store.load_now({"model_id": "S", "bundle_dir": str(slash_bundle), "published_at": "t0"})
    unknown = c.get("/v1/recommendations/no%2Fsuch")
    assert unknown.status_code == 404 and "'no/such'" in unknown.json()["detail"]
    assert c.get("/v1/recommendations/a%2Fb%2F").status_code == 404  # "a/b/" is another id
    # An empty id is no id: the trailing slash still redirects to the batch route.
    for method in ("GET", "POST"):
        r = c.request(method, "/v1/recommendations/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"].endswith("/v1/recommendations")
    assert c.post("/v1/recommendations", json={"user_ids": ["a/b", "u0"]}).status_code == 200
    assert c.get("/v1/serving").json()["model_id"] == "S"


@pytest.mark.parametrize("k", [0, MAX_K + 1, -3])
def test_k_out_of_range_is_422_naming_k(static_client, k: int) -> None:
    r = static_client.get("/v1/recommendations/u1", params={"k": k})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", "k"] and f"between 1 and {MAX_K}" in err["msg"]
    assert static_client.get("/v1/recommendations/u1", params={"k": "many"}).status_code == 422


def test_model_parameter_must_name_the_served_model(static_client) -> None:
    assert static_client.get("/v1/recommendations/u1", params={"model": "A"}).status_code == 200
    r = static_client.get("/v1/recommendations/u1", params={"model": "B"})
    assert r.status_code == 409
    assert r.json() == {"detail": "model='B': not the served model (serving 'A'); publish it first"}


def test_nothing_published_is_503(tmp_path: Path) -> None:
    c, _ = make_client(tmp_path)
    r = c.get("/v1/recommendations/u1")
    assert r.status_code == 503 and r.json() == {
        "detail": "model: no model is being served yet: publish one with POST /v1/models/{id}/publish"
    }
    assert c.post("/v1/recommendations", json={"user_ids": ["u1"]}).status_code == 503
    status = c.get("/v1/serving")
    assert status.status_code == 200 and status.json()["ready"] is False


def test_batch_answers_in_request_order(static_client) -> None:
    r = static_client.post("/v1/recommendations", json={"user_ids": ["u5", "u2", "u5"], "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == "A"
    assert [res["user_id"] for res in body["results"]] == ["u5", "u2", "u5"]
    assert all(len(res["items"]) == 4 for res in body["results"])
    single = static_client.get("/v1/recommendations/u2", params={"k": 4}).json()
    assert same_answer(body["results"][1], single)
    # one rec_id per answer: the batch's, in each of its results; a fresh one per answer
    assert re.fullmatch("[0-9a-f]{12}", body["rec_id"]) and single["rec_id"] != body["rec_id"]
    assert {res["rec_id"] for res in body["results"]} == {body["rec_id"]}


def test_batch_errors(static_client) -> None:
    too_many = static_client.post(
        "/v1/recommendations", json={"user_ids": [f"u{i}" for i in range(MAX_BATCH + 1)]}
    )
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["loc"] == ["body", "user_ids"]
    assert f"at most {MAX_BATCH}" in too_many.json()["detail"][0]["msg"]
    unknown = static_client.post(
        "/v1/recommendations", json={"user_ids": ["u1", "ghost", "u2", "nobody/7"]}
    )
    assert unknown.status_code == 404 and unknown.json() == {
        "detail": "user_ids: 2 unknown to model A: 'ghost', 'nobody/7'"
    }
    bad_k = static_client.post("/v1/recommendations", json={"user_ids": ["u1"], "k": 0})
    assert bad_k.status_code == 422 and bad_k.json()["detail"][0]["loc"] == ["body", "k"]
    assert static_client.post("/v1/recommendations", json={"user_ids": []}).status_code == 422
    wrong_model = static_client.post("/v1/recommendations", json={"user_ids": ["u1"], "model": "B"})
    assert wrong_model.status_code == 409


def test_serving_status(static_client, bundles) -> None:
    _, ds, model = bundles["A"]
    body = static_client.get("/v1/serving").json()
    assert body["ready"] is True and body["model_id"] == "A" and body["index_type"] == "Flat"
    assert (body["n_items"], body["n_users"], body["dim"]) == (ds.n_items, ds.n_users, model.dim)
    assert body["loaded_at"] and body["published_at"] == "t0"


def test_openapi_documents_the_response_fields(static_client) -> None:
    spec = static_client.get("/openapi.json").json()
    get = spec["paths"]["/v1/recommendations/{user_id}"]["get"]
    ref = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/Recommendations")
    item = spec["components"]["schemas"]["RecommendedItem"]["properties"]
    assert {"item_id", "score", "group"} <= set(item)
    assert {"404", "409", "422", "503"} <= set(get["responses"])


def test_no_request_fails_during_swaps(bundles, tmp_path: Path) -> None:
    c, store = make_client(tmp_path)
    pointers = {
        mid: {"model_id": mid, "bundle_dir": str(b[0]), "published_at": mid}
        for mid, b in bundles.items()
    }
    store.load_now(pointers["A"])
    failures: list[str] = []
    answered: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = c.get("/v1/recommendations/u4", params={"k": 10})
            if r.status_code != 200 or len(r.json()["items"]) != 10:
                failures.append(f"{r.status_code} {r.text[:200]}")
            else:
                answered.append(r.json()["model_id"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for swap in range(16):
        store.load_now(pointers["BA"[swap % 2]])
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert set(answered) <= {"A", "B"} and len(answered) > 0


def publish(redis_client, model_id: str, bundle_dir: Path) -> None:
    pointer = json.dumps(
        {"model_id": model_id, "bundle_dir": str(bundle_dir), "published_at": time.time()}
    )
    redis_client.set(keys.ACTIVE_MODEL, pointer)
    redis_client.publish(keys.SERVING_EVENTS, pointer)


def wait_serving(c: TestClient, model_id: str, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if c.get("/v1/serving").json().get("model_id") == model_id:
            return True
        time.sleep(0.05)
    return False


def test_create_app_serves_what_is_published_and_swaps(settings, redis_client, bundles) -> None:
    with TestClient(create_app(settings)) as c:
        r = c.get("/v1/recommendations/u1")
        assert r.status_code == 503
        publish(redis_client, "A", bundles["A"][0])
        assert wait_serving(c, "A")
        body = c.get("/v1/recommendations/u1", params={"k": 5}).json()
        assert body["model_id"] == "A" and len(body["items"]) == 5
        assert c.get("/v1/recommendations/u1", params={"model": "B"}).status_code == 409
        assert "ghost" in c.get("/v1/recommendations/ghost").json()["detail"]
        assert "'gh/ost'" in c.get("/v1/recommendations/gh%2Fost").json()["detail"]  # routed, 404
        assert c.get("/v1/recommendations/u1", params={"k": 10_000}).json()["detail"][0]["loc"] == [
            "query",
            "k",
        ]
        publish(redis_client, "B", bundles["B"][0])  # rolling forward is publishing another
        assert wait_serving(c, "B")
        assert c.get("/v1/recommendations/u1", params={"model": "B"}).json()["model_id"] == "B"


def test_create_app_keeps_serving_when_a_published_bundle_is_broken(
    settings, redis_client, bundles, tmp_path
) -> None:
    with TestClient(create_app(settings)) as c:
        publish(redis_client, "A", bundles["A"][0])
        assert wait_serving(c, "A")
        publish(redis_client, "C", tmp_path / "no-bundle-here")
        time.sleep(3 * settings.reload_poll_s)
        assert c.get("/v1/serving").json()["model_id"] == "A"
        assert c.get("/v1/recommendations/u2").status_code == 200
