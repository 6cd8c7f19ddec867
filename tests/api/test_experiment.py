"""A/B experiments (PUT, GET, DELETE /v1/serving/experiment) through the whole app on the
real Redis of tests/support: validation and roles, arms whose bundle is missing or broken,
sticky assignment across requests and API instances, the split, what each route serves,
exposure per arm, and the active model serving everyone again after DELETE.

Models are random embeddings over one synthetic dataset (no training): m-a is published
last (the active model), m-b and m-c before it; m-d is registered but never published.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.routes.experiment import NO_EXPERIMENT
from service.core.config import Settings
from service.core.registry import Registry
from tests.api.test_publishing import serve, wait_served
from tests.reliability.conftest import seed_dataset, seed_model

ADMIN, WRITER, READER = "exp-admin-key-0001", "exp-write-key-0001", "exp-read-key-00001"
KEYS = [f"ops:admin:{ADMIN}", f"ci:write:{WRITER}", f"dash:read:{READER}"]
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
HALVES = {
    "arms": [{"model_id": "m-a", "weight": 0.5}, {"model_id": "m-b", "weight": 0.5}],
    "salt": "s-1",
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class World:
    """Settings, registry and dataset of one test, with m-a served and m-b, m-c published before."""

    def __init__(self, settings: Settings, n_users: int) -> None:
        self.settings = settings
        self.registry = Registry.from_url(settings.redis_url or "")
        self.dataset = seed_dataset(settings, self.registry, n_users=n_users, n_items=100)
        for s, model_id in enumerate(("m-a", "m-b", "m-c", "m-d"), 1):
            seed_model(settings, self.registry, self.dataset, model_id, seed=s)
        self.bundles = {
            m: serve(self.registry, settings, self.dataset, m).bundle_dir
            for m in ("m-c", "m-b", "m-a")
        }
        self.users = [str(u) for u in self.dataset.user_ids.tolist()]

    def app(self) -> TestClient:
        return TestClient(create_app(self.settings))


@pytest.fixture()
def world(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(n_users: int = 60, **overrides: Any) -> World:
        w = World(
            make_settings(**{"api_keys": KEYS, "exposure_flush_s": 0.1, **overrides}), n_users
        )
        made.append(w)
        return w

    yield make
    for w in made:
        w.registry.close()


def expected_arm(salt: str, arms: list[dict[str, Any]], user: str) -> str:
    """The arm the documented assignment gives `user`, computed here from the formula of
    service/serving/experiment.py (not with its helpers): u = the first 8 bytes of
    BLAKE2b(salt, 0x00, user id) / 2^64; the first arm whose running weight exceeds u."""
    digest = hashlib.blake2b(f"{salt}\x00{user}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    running = 0.0
    for arm in arms[:-1]:
        running += arm["weight"]
        if u < running:
            return str(arm["model_id"])
    return str(arms[-1]["model_id"])


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def model_of(client: TestClient, user: str, **params: Any) -> str:
    r = client.get(f"/v1/recommendations/{user}", params={"k": 3, **params})
    assert r.status_code == 200, r.text
    return str(r.json()["model_id"])


# -- routes, validation, roles -----------------------------------------------------------------


def test_bad_experiments_are_refused_naming_the_field(world) -> None:
    w = world()
    with w.app() as c:
        wait_served(c, "m-a")
        none = {
            "running": False,
            "arms": None,
            "salt": None,
            "started_at": None,
            "started_by": None,
        }
        r = c.get("/v1/serving/experiment")
        assert r.status_code == 200 and r.json() == none
        r = c.delete("/v1/serving/experiment", headers=AS_ADMIN)
        assert r.status_code == 404 and r.json() == {"detail": NO_EXPERIMENT}
        cases = [
            ({"arms": [{"model_id": "m-a", "weight": 1.0}]}, ["body", "arms"], "at least 2"),
            (
                {"arms": [{"model_id": "m-a", "weight": 0.5}, {"model_id": "m-b", "weight": 0.4}]},
                ["body", "arms"],
                "weights must sum to 1 (within 1e-06); they sum to 0.9",
            ),
            (
                {"arms": [{"model_id": "m-a", "weight": 0.5}, {"model_id": "m-a", "weight": 0.5}]},
                ["body", "arms"],
                "'m-a' is named twice",
            ),
            (
                {"arms": [{"model_id": "m-a", "weight": 0}, {"model_id": "m-b", "weight": 1}]},
                ["body", "arms", 0, "weight"],
                "greater than 0",
            ),
            (
                {"arms": [{"model_id": "m-a", "weight": -0.5}, {"model_id": "m-b", "weight": 1.0}]},
                ["body", "arms", 0, "weight"],
                "greater than 0",
            ),
            ({**HALVES, "salt": ""}, ["body", "salt"], "at least 1 character"),
            ({**HALVES, "colour": "blue"}, ["body", "colour"], "Extra inputs"),
            ({"salt": "x"}, ["body", "arms"], "Field required"),
        ]
        for body, loc, msg in cases:
            r = c.put("/v1/serving/experiment", json=body, headers=AS_ADMIN)
            assert r.status_code == 422, (body, r.text)
            (err,) = r.json()["detail"]
            assert err["loc"] == loc and msg in err["msg"], (body, err)
        # Sums within 1e-6 of 1 pass the check (then m-zzz is unknown).
        r = c.put(
            "/v1/serving/experiment",
            headers=AS_ADMIN,
            json={
                "arms": [
                    {"model_id": "m-a", "weight": 0.1},
                    {"model_id": "m-b", "weight": 0.2},
                    {"model_id": "m-zzz", "weight": 0.7000005},
                ]
            },
        )
        assert r.status_code == 404 and r.json() == {
            "detail": "arms[2].model_id='m-zzz': no such model"
        }
        r = c.put(
            "/v1/serving/experiment",
            headers=AS_ADMIN,
            json={"arms": [{"model_id": "m-a", "weight": 0.5}, {"model_id": "m-d", "weight": 0.5}]},
        )
        assert r.status_code == 409, r.text
        assert r.json()["detail"].startswith(
            "arms[1].model_id='m-d': this arm has no serving bundle: the model was never published"
        )
        assert c.get("/v1/serving/experiment").json()["running"] is False  # nothing started
        assert w.registry.redis.exists("unkd:serving:experiment") == 0


def test_each_role_is_refused_where_it_does_not_belong(world) -> None:
    w = world()
    with w.app() as c:
        wait_served(c, "m-a")
        for key, name, role in ((READER, "dash", "read"), (WRITER, "ci", "write")):
            for method in ("PUT", "DELETE"):
                r = c.request(
                    method,
                    "/v1/serving/experiment",
                    json=HALVES if method == "PUT" else None,
                    headers=bearer(key),
                )
                assert r.status_code == 403, r.text
                assert (
                    f"needs a key with role admin; key '{name}' has role {role}"
                    in r.json()["detail"]
                )
        assert c.put("/v1/serving/experiment", json=HALVES).status_code == 401
        assert (
            c.put(
                "/v1/serving/experiment", json=HALVES, headers=bearer("not-a-key-at-all")
            ).status_code
            == 403
        )
        assert (
            c.get("/v1/serving/experiment").json()["running"] is False
        )  # none started by the refused calls
        assert c.put("/v1/serving/experiment", json=HALVES, headers=AS_ADMIN).status_code == 200
        for headers in ({}, bearer(READER)):  # reads stay open
            assert c.get("/v1/serving/experiment", headers=headers).status_code == 200
            assert c.get("/v1/serving/exposure", headers=headers).status_code == 200
        assert c.delete("/v1/serving/experiment", headers=bearer(WRITER)).status_code == 403
        assert c.get("/v1/serving/experiment").json()["running"] is True  # still running


def test_a_broken_arm_is_409_and_the_running_experiment_stays(world) -> None:
    w = world()
    with w.app() as c:
        wait_served(c, "m-a")
        started = c.put("/v1/serving/experiment", json=HALVES, headers=AS_ADMIN).json()
        before = {u: model_of(c, u) for u in w.users[:20]}
        shutil.rmtree(w.bundles["m-c"])  # published once, its bundle gone since
        r = c.put(
            "/v1/serving/experiment",
            headers=AS_ADMIN,
            json={"arms": [{"model_id": "m-a", "weight": 0.5}, {"model_id": "m-c", "weight": 0.5}]},
        )
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert detail.startswith(
            f"arms[1].model_id='m-c': this arm cannot be served: its serving bundle "
            f"{w.bundles['m-c']} is gone or broken"
        )
        assert "nothing changed" in detail and "POST /v1/models/m-c/publish" in detail
        assert c.get("/v1/serving/experiment").json() == {"running": True, **started}
        assert {u: model_of(c, u) for u in w.users[:20]} == before
        # A bundle that is there but corrupt (a checksum fails) is refused the same way.
        serve(w.registry, w.settings, w.dataset, "m-c")  # rebuilt, and now the active model
        wait_served(c, "m-c")
        serve(w.registry, w.settings, w.dataset, "m-a")
        wait_served(c, "m-a")
        with open(w.bundles["m-c"] + "/user_emb.npy", "r+b") as f:
            f.seek(-4, 2)
            f.write(b"\x00\x01\x02\x03")
        # m-c's bundle is not loaded (m-a is served): PUT loads and verifies it.
        r = c.put(
            "/v1/serving/experiment",
            headers=AS_ADMIN,
            json={"arms": [{"model_id": "m-b", "weight": 0.5}, {"model_id": "m-c", "weight": 0.5}]},
        )
        assert r.status_code == 409 and "arms[1].model_id='m-c'" in r.json()["detail"], r.text
        assert c.get("/v1/serving/experiment").json() == {"running": True, **started}


def test_experiment_lifecycle_and_what_each_route_serves(world) -> None:
    w = world()
    with w.app() as c:
        wait_served(c, "m-a")
        r = c.put("/v1/serving/experiment", json=HALVES, headers=AS_ADMIN)
        assert r.status_code == 200, r.text
        exp = r.json()
        assert [(a["model_id"], a["weight"]) for a in exp["arms"]] == [("m-a", 0.5), ("m-b", 0.5)]
        assert [a["bundle_dir"] for a in exp["arms"]] == [w.bundles["m-a"], w.bundles["m-b"]]
        assert exp["salt"] == "s-1" and exp["started_by"] == "ops" and exp["started_at"]
        assert c.get("/v1/serving/experiment").json() == {"running": True, **exp}
        store = c.app.state.index_store  # type: ignore[attr-defined]
        assert (
            store.experiment.arms[0].bundle is store.current
        )  # the active model's bundle, not a copy
        # Every answer names its arm, the one the documented hash gives, on every request.
        arms = {u: expected_arm("s-1", HALVES["arms"], u) for u in w.users}
        assert set(arms.values()) == {"m-a", "m-b"}
        for u in w.users[:30]:
            assert model_of(c, u) == model_of(c, u) == arms[u]
        # The batch answers each user from their arm; the top-level model_id is null when mixed.
        batch = c.post("/v1/recommendations", json={"user_ids": w.users, "k": 3}).json()
        assert batch["model_id"] is None
        assert [res["model_id"] for res in batch["results"]] == [arms[u] for u in w.users]
        assert [res["user_id"] for res in batch["results"]] == w.users
        same = [u for u in w.users if arms[u] == "m-b"][:3]
        assert (
            c.post("/v1/recommendations", json={"user_ids": same, "k": 3}).json()["model_id"]
            == "m-b"
        )
        # model= picks any served model, whatever the user's arm; others are 409.
        in_a = next(u for u in w.users if arms[u] == "m-a")
        assert model_of(c, in_a, model="m-b") == "m-b" and model_of(c, in_a, model="m-a") == "m-a"
        r = c.get(f"/v1/recommendations/{in_a}", params={"model": "m-c"})
        assert r.status_code == 409 and "experiment arms 'm-a', 'm-b'" in r.json()["detail"]
        forced = c.post(
            "/v1/recommendations", json={"user_ids": w.users[:4], "model": "m-b"}
        ).json()
        assert forced["model_id"] == "m-b" and {res["model_id"] for res in forced["results"]} == {
            "m-b"
        }
        # by-history and similar items: the active model (or the one named).
        items = [str(i) for i in w.dataset.item_ids[:3].tolist()]
        assert (
            c.post("/v1/recommendations/by-history", json={"items": items}).json()["model_id"]
            == "m-a"
        )
        assert (
            c.post("/v1/recommendations/by-history", json={"items": items, "model": "m-b"}).json()[
                "model_id"
            ]
            == "m-b"
        )
        assert c.get(f"/v1/items/{items[0]}/similar").json()["model_id"] == "m-a"
        assert (
            c.get(f"/v1/items/{items[0]}/similar", params={"model": "m-b"}).json()["model_id"]
            == "m-b"
        )
        # DELETE ends it: the active model serves everyone again.
        r = c.delete("/v1/serving/experiment", headers=AS_ADMIN)
        assert r.status_code == 200, r.text
        ended = r.json()
        assert (
            {k: ended[k] for k in exp} == exp
            and ended["ended_by"] == "ops"
            and ended["ended_at"] >= exp["started_at"]
        )
        assert c.get("/v1/serving/experiment").json()["running"] is False
        assert {model_of(c, u) for u in w.users} == {"m-a"}
        assert c.get(f"/v1/recommendations/{in_a}", params={"model": "m-b"}).status_code == 409
        assert c.delete("/v1/serving/experiment", headers=AS_ADMIN).status_code == 404


def test_assignment_is_sticky_across_instances_and_follows_the_weights(world) -> None:
    w = world(n_users=2000)
    arms = [{"model_id": "m-b", "weight": 0.3}, {"model_id": "m-c", "weight": 0.7}]
    with w.app() as one, w.app() as two:
        wait_served(one, "m-a")
        wait_served(two, "m-a")
        r = one.put(
            "/v1/serving/experiment", json={"arms": arms, "salt": "split"}, headers=AS_ADMIN
        )
        assert r.status_code == 200, r.text
        store = two.app.state.index_store  # type: ignore[attr-defined]
        wait_for(lambda: store.experiment is not None, "the second instance to load the arms")
        served: dict[str, str] = {}
        for start in range(0, len(w.users), 1000):  # max_batch_users
            chunk = w.users[start : start + 1000]
            results = two.post("/v1/recommendations", json={"user_ids": chunk, "k": 2}).json()[
                "results"
            ]
            served.update({res["user_id"]: res["model_id"] for res in results})
        assert served == {u: expected_arm("split", arms, u) for u in w.users}
        for u in w.users[:25]:  # the single-user GET agrees, on either instance, every time
            assert model_of(one, u) == model_of(two, u) == model_of(one, u) == served[u]
        # 2,000 users, p = 0.3: sd = 20.5 users; 5 sd bounds a false alarm near 1 in 1.7 million.
        n, share = len(w.users), Counter(served.values())["m-b"]
        assert abs(share - 0.3 * n) < 5 * math.sqrt(n * 0.3 * 0.7), share
        # A new salt reshuffles users; the same salt and weights give the same split again.
        r = one.put(
            "/v1/serving/experiment", json={"arms": arms, "salt": "split-2"}, headers=AS_ADMIN
        )
        moved = sum(expected_arm("split-2", arms, u) != served[u] for u in w.users[:200])
        assert moved > 40  # 2 x 0.3 x 0.7 = 42 % of users change arm
        assert all(model_of(one, u) == expected_arm("split-2", arms, u) for u in w.users[:20])
        wait_for(
            lambda: store.experiment is not None and store.experiment.spec.salt == "split-2",
            "the new salt",
        )
        assert all(model_of(two, u) == expected_arm("split-2", arms, u) for u in w.users[:20])
        # Ended on one instance, ended on the other: the active model serves everyone again.
        assert one.delete("/v1/serving/experiment", headers=AS_ADMIN).status_code == 200
        wait_for(lambda: store.experiment is None, "the second instance to end the experiment")
        assert {model_of(two, u) for u in w.users[:20]} == {"m-a"}


def test_each_user_keeps_one_arm_and_the_split_follows_three_weights(world) -> None:
    """Single GETs over HTTP, each user asked twice: one arm per user, the one the documented
    hash gives, and each arm's share of users within a binomial bound computed here."""
    w = world(n_users=900)
    arms = [
        {"model_id": "m-a", "weight": 0.2},
        {"model_id": "m-b", "weight": 0.5},
        {"model_id": "m-c", "weight": 0.3},
    ]
    with w.app() as c:
        wait_served(c, "m-a")
        r = c.put("/v1/serving/experiment", json={"arms": arms, "salt": "three"}, headers=AS_ADMIN)
        assert r.status_code == 200, r.text
        first = {u: model_of(c, u) for u in w.users}
        again = {u: model_of(c, u) for u in reversed(w.users)}
        assert first == again  # sticky: the same arm on every request
        assert first == {u: expected_arm("three", arms, u) for u in w.users}
        n, got = len(w.users), Counter(first.values())
        for arm in arms:
            p = arm["weight"]
            # 5 sd of Binomial(n, p): a false alarm near 1 in 1.7 million per arm
            bound = 5 * math.sqrt(n * p * (1 - p))
            assert abs(got[arm["model_id"]] - n * p) < bound, (arm, got)


def test_exposure_is_reported_per_arm(world) -> None:
    w = world()
    with w.app() as c:
        wait_served(c, "m-a")
        arms = [{"model_id": "m-a", "weight": 0.4}, {"model_id": "m-b", "weight": 0.6}]
        c.put("/v1/serving/experiment", json={"arms": arms}, headers=AS_ADMIN)
        salt = c.get("/v1/serving/experiment").json()["salt"]
        assert len(salt) == 16  # random when not given
        served = Counter(model_of(c, u) for u in w.users[:40])
        assert served == Counter(expected_arm(salt, arms, u) for u in w.users[:40])
        c.post(
            "/v1/recommendations/by-history", json={"items": [str(w.dataset.item_ids[0])]}
        )  # the active m-a

        def counted(body: dict[str, Any]) -> bool:
            return sum(m["window"]["requests"] for m in body["models"]) >= 41

        wait_for(lambda: counted(c.get("/v1/serving/exposure").json()), "the answers to be counted")
        models = c.get("/v1/serving/exposure").json()["models"]
        assert [(m["model_id"], m["role"], m["weight"]) for m in models] == [
            ("m-a", "arm", 0.4),
            ("m-b", "arm", 0.6),
        ]
        assert (
            models[0]["window"]["requests"] == served["m-a"] + 1
            and models[1]["window"]["requests"] == served["m-b"]
        )
        assert (
            models[0]["since"] == c.get("/v1/serving").json()["published_at"]
        )  # the active model's epoch runs on
        assert (
            models[1]["since"] != models[0]["since"]
            and models[1]["since_publish"]["requests"] == served["m-b"]
        )
        text = c.get("/metrics").text
        assert 'unkd_exposure_arm_weight{model_id="m-b"} 0.6' in text
        assert f'unkd_exposure_window_requests{{model_id="m-b"}} {float(served["m-b"])}' in text
        c.delete("/v1/serving/experiment", headers=AS_ADMIN)
        models = c.get("/v1/serving/exposure").json()["models"]
        assert [(m["model_id"], m["role"]) for m in models] == [("m-a", "active")]
        assert models[0]["window"]["requests"] == served["m-a"] + 1  # the same epoch goes on


def test_openapi_documents_the_routes_with_examples(world) -> None:
    w = world()
    with w.app() as c:
        spec = c.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"get", "put", "delete"} <= set(paths["/v1/serving/experiment"])
    assert {"404", "409", "422"} <= set(paths["/v1/serving/experiment"]["put"]["responses"])
    assert "get" in paths["/v1/serving/exposure"]
    schemas = spec["components"]["schemas"]
    assert schemas["ExperimentRequest"]["examples"][0]["arms"][0]["weight"] == 0.5
    assert (
        schemas["Experiment"]["examples"]
        and schemas["ExposureReport"]["examples"][0]["window_s"] == 600
    )
    scope = schemas["ExposureScope"]["properties"]
    assert {
        "requests",
        "slots",
        "head_share",
        "arp",
        "coverage",
        "gini",
        "groups",
        "latency_ms",
    } <= set(scope)
