"""Filters, new users from their history, fallbacks for unknown users and similar items,
through the whole app (create_app) on the real Redis of tests/support, with a bundle
published by moving the active pointer.

The catalogue (6,000 items, most of them in the tail group) is large enough that a tail-only
shelf goes through the widened search and a head-only shelf through the exact scan
(service.serving.filters). References are brute force in float64 with the tie rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.serving.bundle import ServingBundle
from service.serving.foldin import FOLD_IN_LAMBDA
from tests.api.test_recommendations import make_bundle, publish, wait_serving
from tests.support.answers import same_answer
from tests.support.config import make_test_settings
from tests.support.redis_dbs import RedisDatabases
from training.checkpoint import ModelArtifact
from training.dataset import Dataset

MAX_K = 50
N_ITEMS = 6000


@dataclass
class Served:
    client: TestClient
    ds: Dataset
    model: ModelArtifact
    groups: np.ndarray  # (n_items,) popularity group
    pop: np.ndarray  # (n_items,) training interactions

    @property
    def bundle(self) -> ServingBundle:
        bundle = self.client.app.state.index_store.current  # type: ignore[attr-defined]
        assert bundle is not None
        return bundle

    def seen(self, u: int) -> list[int]:
        train = self.ds.csr("train")
        return train.indices[train.indptr[u] : train.indptr[u + 1]].tolist()

    def scores(self, u: int) -> np.ndarray:
        return self.model.item_emb.astype(np.float64) @ self.model.user_emb[u].astype(np.float64)


@pytest.fixture(scope="module")
def served(
    redis_databases: RedisDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving-features")
    path, ds, model = make_bundle(
        root, model_id="F", seed=5, n_users=60, n_items=N_ITEMS, max_seen=40
    )
    settings = make_test_settings(
        "features",
        redis_url=redis_databases.reserve(),
        data_dir=root / "data",
        max_k=MAX_K,
        reload_poll_s=0.2,
    )
    with TestClient(create_app(settings)) as c:
        r = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
        publish(r, "F", Path(path))
        r.close()
        assert wait_serving(c, "F")
        yield Served(c, ds, model, ds.groups(4), ds.popularity())


def ranked(
    scores: np.ndarray, k: int, banned: list[int] | None = None, allowed: np.ndarray | None = None
) -> list[int]:
    """Reference top-k: equal scores, lower index first; banned / not allowed never."""
    s = scores.astype(np.float64).copy()
    if banned:
        s[banned] = -np.inf
    if allowed is not None:
        s[~allowed] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))
    return [int(i) for i in order[np.isfinite(s[order])][:k]]


def items_of(body: dict) -> list[int]:
    return [int(it["item_id"][1:]) for it in body["items"]]


def check_items(served: Served, body: dict) -> None:
    """Every answer item carries item_id, score and the item's group."""
    for it in body["items"]:
        assert set(it) == {"item_id", "score", "group"}
        assert it["group"] == int(served.groups[int(it["item_id"][1:])])
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True) or body.get("fallback") == "debiased"


# -- filters ------------------------------------------------------------------------------


def test_exclude_returns_k_items_never_the_excluded_ones(served: Served) -> None:
    c = served.client
    scans = served.bundle.exact_scans
    for u in (0, 7, 31):
        plain = items_of(c.get(f"/v1/recommendations/u{u}", params={"k": 10}).json())
        excluded = plain[:6]  # the user's six best: a trimmed top-10 would keep 4
        r = c.get(
            f"/v1/recommendations/u{u}",
            params=[
                ("k", 10),
                *(("exclude", f"i{i}") for i in excluded),
                ("exclude", "no-such-item"),
            ],
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert items_of(body) == ranked(served.scores(u), 10, served.seen(u) + excluded)
        assert len(body["items"]) == 10 and not set(excluded) & set(items_of(body))
        assert body["unknown_items"] == {"exclude": ["no-such-item"]}
        check_items(served, body)
    assert served.bundle.exact_scans == scans  # k + 1 + |seen| + |exclude| was wide enough


def test_include_is_an_allow_list_and_reports_unknown_ids(served: Served) -> None:
    u = 4
    seen = served.seen(u)
    include = [*seen[:3], 11, 222, 3333, 4444, 5555]  # three of them the user has seen
    allowed = np.zeros(N_ITEMS, dtype=bool)
    allowed[include] = True
    r = served.client.get(
        f"/v1/recommendations/u{u}",
        params=[("k", 4), *(("include", f"i{i}") for i in include), ("include", "ghost")],
    )
    assert r.status_code == 200, r.text
    assert items_of(r.json()) == ranked(served.scores(u), 4, seen, allowed)
    assert r.json()["unknown_items"] == {"include": ["ghost"]}
    # fewer than k qualify: all of them, no padding
    r = served.client.get(
        f"/v1/recommendations/u{u}", params=[("k", 20), *(("include", f"i{i}") for i in include)]
    )
    assert (
        items_of(r.json()) == ranked(served.scores(u), 20, seen, allowed)
        and len(r.json()["items"]) == 5
    )
    assert "unknown_items" not in r.json()


def test_include_with_no_known_id_is_422_naming_the_ids(served: Served) -> None:
    r = served.client.get(
        "/v1/recommendations/u1", params=[("include", "ghost1"), ("include", "ghost2")]
    )
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", "include"] and "'ghost1', 'ghost2'" in err["msg"]


def test_groups_restrict_to_popularity_groups(served: Served) -> None:
    c, groups = served.client, served.groups
    tail = groups == 3
    assert tail.sum() > 4096 and (groups == 0).sum() < 4096  # the two paths are both exercised
    scans = served.bundle.exact_scans
    for u in range(0, 60, 6):
        body = c.get(f"/v1/recommendations/u{u}", params={"k": 15, "groups": 3}).json()
        assert items_of(body) == ranked(served.scores(u), 15, served.seen(u), tail)
        assert {it["group"] for it in body["items"]} == {3}
        check_items(served, body)
    assert served.bundle.exact_scans == scans  # the widened search found k tail items
    for u in (2, 9):
        body = c.get(
            f"/v1/recommendations/u{u}", params=[("k", 15), ("groups", 0), ("groups", 1)]
        ).json()
        assert items_of(body) == ranked(served.scores(u), 15, served.seen(u), groups <= 1)
    assert served.bundle.exact_scans > scans  # small allow-lists are scored exactly


def test_bad_groups_are_422_naming_the_field(served: Served) -> None:
    r = served.client.get(
        "/v1/recommendations/u1", params=[("groups", 1), ("groups", 7), ("groups", -1)]
    )
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", "groups"] and err["input"] == [-1, 7]
    assert "0 (head) .. 3 (tail)" in err["msg"]
    r = served.client.get("/v1/recommendations/u1", params={"groups": "tail"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "groups", 0]


def test_batch_takes_the_filters_as_json_lists(served: Served) -> None:
    c = served.client
    payload = {"user_ids": ["u3", "u8"], "k": 12, "exclude": ["i5", "i6", "nope"], "groups": [2, 3]}
    r = c.post("/v1/recommendations", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown_items"] == {"exclude": ["nope"]}
    for res, u in zip(body["results"], (3, 8), strict=True):
        assert items_of(res) == ranked(
            served.scores(u), 12, served.seen(u) + [5, 6], served.groups >= 2
        )
        single = c.get(
            f"/v1/recommendations/u{u}",
            params=[("k", 12), ("exclude", "i5"), ("exclude", "i6"), ("groups", 2), ("groups", 3)],
        ).json()
        assert same_answer(res, single)
        check_items(served, res)
    # exclude_seen=false: training items come back, in the batch too (users chosen, by brute
    # force, among those whose top MAX_K holds one of their training items)
    back = [u for u in range(60) if set(ranked(served.scores(u), MAX_K)) & set(served.seen(u))]
    assert len(back) >= 2
    kept = c.post(
        "/v1/recommendations",
        json={"user_ids": [f"u{u}" for u in back[:4]], "k": MAX_K, "exclude_seen": False},
    ).json()
    for res, u in zip(kept["results"], back[:4], strict=True):
        assert items_of(res) == ranked(served.scores(u), MAX_K)
    kept = c.post(
        "/v1/recommendations",
        json={
            "user_ids": [f"u{u}" for u in back[:4]],
            "k": MAX_K,
            "exclude_seen": False,
            "exclude": ["i5"],
        },
    ).json()
    for res, u in zip(kept["results"], back[:4], strict=True):
        assert items_of(res) == ranked(served.scores(u), MAX_K, [5])
    bad = c.post("/v1/recommendations", json={"user_ids": ["u1"], "groups": [9]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "groups"]
    empty = c.post("/v1/recommendations", json={"user_ids": ["u1"], "include": []})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "include"]


# -- new users from their history -------------------------------------------------------------


def folded_scores(served: Served, history: list[int]) -> np.ndarray:
    """The fold-in by its formula: (Q_S^T Q_S + lam I)^-1 Q_S^T 1, lam = 100 x mean ||q||^2."""
    q = served.model.item_emb.astype(np.float64)
    qs = q[sorted(set(history))]
    lam = FOLD_IN_LAMBDA * float((q**2).sum(axis=1).mean())
    u = np.linalg.solve(qs.T @ qs + lam * np.eye(q.shape[1]), qs.sum(axis=0))
    return q @ u


def test_by_history_folds_the_history_in(served: Served) -> None:
    history = served.seen(12)
    payload = {"items": [f"i{i}" for i in history] + ["ghost"], "k": 10}
    r = served.client.post("/v1/recommendations/by-history", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] is None and body["model_id"] == "F"
    assert body["unknown_items"] == {"items": ["ghost"]}
    assert items_of(body) == ranked(folded_scores(served, history), 10, history)
    check_items(served, body)
    np.testing.assert_allclose(
        [it["score"] for it in body["items"]],
        np.sort(folded_scores(served, history)[items_of(body)])[::-1],
        rtol=1e-3,
    )
    # exclude_seen=false: the history may come back
    r = served.client.post(
        "/v1/recommendations/by-history", json={**payload, "exclude_seen": False}
    )
    assert items_of(r.json()) == ranked(folded_scores(served, history), 10)


def test_by_history_takes_the_filters(served: Served) -> None:
    history = served.seen(20)[:3]
    payload = {"items": [f"i{i}" for i in history], "k": 8, "groups": [0], "exclude": ["i1"]}
    body = served.client.post("/v1/recommendations/by-history", json=payload).json()
    assert items_of(body) == ranked(
        folded_scores(served, history), 8, history + [1], served.groups == 0
    )


def test_by_history_refuses_a_history_it_cannot_read(served: Served) -> None:
    c = served.client
    r = c.post("/v1/recommendations/by-history", json={"items": ["ghost", "spook"]})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "items"] and "'ghost', 'spook'" in err["msg"]
    assert c.post("/v1/recommendations/by-history", json={"items": []}).json()["detail"][0][
        "loc"
    ] == ["body", "items"]
    bad_k = c.post("/v1/recommendations/by-history", json={"items": ["i1"], "k": MAX_K + 1})
    assert bad_k.status_code == 422 and bad_k.json()["detail"][0]["loc"] == ["body", "k"]
    assert (
        c.post(
            "/v1/recommendations/by-history", json={"items": ["i1"], "model": "other"}
        ).status_code
        == 409
    )


# -- fallbacks for unknown users --------------------------------------------------------------


def by_popularity(served: Served) -> np.ndarray:
    return np.lexsort((np.arange(N_ITEMS), -served.pop))


def test_unknown_user_gets_the_popular_list_only_when_asked(served: Served) -> None:
    c = served.client
    assert c.get("/v1/recommendations/newcomer").status_code == 404
    r = c.get("/v1/recommendations/newcomer", params={"fallback": "popular", "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] == "popular" and body["user_id"] == "newcomer"
    assert items_of(body) == by_popularity(served)[:10].tolist()
    np.testing.assert_allclose(
        [it["score"] for it in body["items"]],
        served.pop[items_of(body)] / served.pop.sum(),
        rtol=1e-6,
    )
    check_items(served, body)
    # a known user is answered by the model, whatever `fallback` says
    known = c.get("/v1/recommendations/u2", params={"fallback": "popular"}).json()
    assert "fallback" not in known and same_answer(known, c.get("/v1/recommendations/u2").json())
    bad = c.get("/v1/recommendations/newcomer", params={"fallback": "random"})
    assert bad.status_code == 422
    (err,) = bad.json()["detail"]
    assert err["loc"] == ["query", "fallback"] and err["type"] == "literal_error"


def test_debiased_fallback_shares_slots_by_group_interactions(served: Served) -> None:
    k = 20
    body = served.client.get(
        "/v1/recommendations/newcomer", params={"fallback": "debiased", "k": k}
    ).json()
    assert body["fallback"] == "debiased"
    items = items_of(body)
    got = np.bincount(served.groups[items], minlength=4)
    mass = np.bincount(served.groups, weights=served.pop, minlength=4)
    raw = k * mass / mass.sum()
    quota = np.floor(raw).astype(int)
    quota[np.argsort(-(raw - quota), kind="stable")[: k - quota.sum()]] += 1  # Hamilton's method
    assert got.tolist() == quota.tolist() and got.min() >= 4  # the tail gets its share
    order = by_popularity(served)
    for g in range(4):  # within a group, the most popular items
        assert [i for i in items if served.groups[i] == g] == [
            int(i) for i in order if served.groups[i] == g
        ][: got[g]]
    assert (
        len(set(served.groups[items[:4]].tolist())) == 4
    )  # interleaved: every group in the first 4
    check_items(served, body)


def test_fallbacks_take_the_filters(served: Served) -> None:
    top = by_popularity(served)
    params = [
        ("fallback", "popular"),
        ("k", 5),
        ("exclude", f"i{top[0]}"),
        ("groups", 0),
        ("groups", 1),
    ]
    body = served.client.get("/v1/recommendations/nobody", params=params).json()
    expected = [int(i) for i in top if served.groups[i] <= 1 and i != top[0]][:5]
    assert items_of(body) == expected
    inc = [int(i) for i in top[100:103]]
    params = [
        ("fallback", "debiased"),
        ("k", 5),
        *(("include", f"i{i}") for i in inc),
        ("include", "x"),
    ]
    body = served.client.get("/v1/recommendations/nobody", params=params).json()
    assert sorted(items_of(body)) == sorted(inc) and body["unknown_items"] == {"include": ["x"]}


# -- similar items ----------------------------------------------------------------------------


def cosine_to(served: Served, item: int) -> np.ndarray:
    q = served.model.item_emb.astype(np.float64)
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    return unit @ unit[item]


def test_similar_items_rank_by_cosine_without_the_item(served: Served) -> None:
    c = served.client
    differs = False
    for item in (0, 17, 4242):
        r = c.get(f"/v1/items/i{item}/similar", params={"k": 10})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["item_id"] == f"i{item}" and body["model_id"] == "F"
        assert items_of(body) == ranked(cosine_to(served, item), 10, [item])
        np.testing.assert_allclose(
            [it["score"] for it in body["items"]],
            cosine_to(served, item)[items_of(body)],
            atol=1e-5,
        )
        check_items(served, body)
        inner = served.model.item_emb.astype(np.float64) @ served.model.item_emb[item].astype(
            np.float64
        )
        differs |= items_of(body) != ranked(inner, 10, [item])
    assert differs  # the test tells cosine from inner product


def test_similar_items_take_the_filters_and_404_unknown_items(served: Served) -> None:
    c = served.client
    body = c.get(
        "/v1/items/i17/similar", params=[("k", 6), ("groups", 3), ("exclude", "i0")]
    ).json()
    assert items_of(body) == ranked(cosine_to(served, 17), 6, [17, 0], served.groups == 3)
    r = c.get("/v1/items/no%2Fsuch/similar")
    model_id = c.get("/v1/serving").json()["model_id"]
    assert r.status_code == 404 and r.json() == {
        "detail": f"item_id='no/such': no such item in model {model_id}"
    }
    assert c.get("/v1/items/i1/similar", params={"k": 0}).json()["detail"][0]["loc"] == [
        "query",
        "k",
    ]


# -- the OpenAPI document ------------------------------------------------------------------------


def test_openapi_documents_the_new_routes_with_examples(served: Served) -> None:
    spec = served.client.get("/openapi.json").json()
    paths = spec["paths"]
    get = paths["/v1/recommendations/{user_id}"]["get"]
    params = {p["name"]: p for p in get["parameters"]}
    assert {"exclude", "include", "groups", "fallback"} <= set(params)
    for name in ("exclude", "include", "groups", "fallback"):
        assert params[name]["schema"].get("examples") or params[name].get("examples"), name
    similar = paths["/v1/items/{item_id}/similar"]["get"]
    assert {"k", "exclude", "include", "groups"} <= {p["name"] for p in similar["parameters"]}
    assert similar["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SimilarItems"
    )
    history = paths["/v1/recommendations/by-history"]["post"]
    ref = history["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    schemas = spec["components"]["schemas"]
    assert schemas[ref]["examples"][0]["items"] and {"items", "k", "exclude_seen", "groups"} <= set(
        schemas[ref]["properties"]
    )
    assert schemas["RecommendationsBatchRequest"]["examples"]
    assert {"fallback", "unknown_items"} <= set(schemas["Recommendations"]["properties"])
