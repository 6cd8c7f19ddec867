"""POST/GET /v1/datasets/{id}/versions through the whole app (create_app) on a real Redis.

Events go in through POST /v1/events; every expected figure (pairs, counts, new ids, the
held-out rows) is computed here from the rows uploaded and the events sent, never from the
service's own intermediate results.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.core import keys
from service.core.config import Settings
from service.core.registry import Registry
from service.core.versions import build_version
from training.dataset import Dataset

POSITIVE = ("click", "purchase")  # the default UNKD_EVENTS_POSITIVE_TYPES

# The root: 12 users (u00..u11) with 6 items each out of 20 (i00..i19).
ROOT_ROWS = [(f"u{u:02d}", f"i{(u * 3 + k * 2) % 20:02d}") for u in range(12) for k in range(6)]


def root_csv() -> bytes:
    return ("user,item\n" + "".join(f"{u},{i}\n" for u, i in ROOT_ROWS)).encode()


def ev(user: str, item: str, type_: str = "click") -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "type": type_}


@pytest.fixture()
def root(client: TestClient) -> dict[str, Any]:
    r = client.post(
        "/v1/datasets",
        files={"file": ("root.csv", root_csv())},
        data={"split": "random", "seed": "5", "holdout": "0.25"},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def push(client: TestClient, events: list[dict[str, Any]]) -> None:
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 202, r.text


def load(settings: Settings, dataset_id: str) -> Dataset:
    return Dataset.load(settings.datasets_dir / dataset_id)


def pairs_of(ds: Dataset) -> set[tuple[str, str]]:
    rows = np.concatenate([ds.train, ds.valid, ds.test])
    return {(str(ds.user_ids[u]), str(ds.item_ids[i])) for u, i in rows}


def last_stream_id(redis_client: redis.Redis) -> str:
    return str(redis_client.xrevrange(keys.events_stream(), "+", "-", count=1)[0][0])


# -- brute force over what was sent -----------------------------------------------------------


def expected_order(root_ds: Dataset, events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every pair in time order, each at its first occurrence: the root's train, valid, test,
    then the positive events as sent."""
    out: list[tuple[str, str]] = []
    for split in (root_ds.train, root_ds.valid, root_ds.test):
        out += [(str(root_ds.user_ids[u]), str(root_ds.item_ids[i])) for u, i in split]
    out += [(e["user_id"], e["item_id"]) for e in events if e["type"] in POSITIVE]
    seen: set[tuple[str, str]] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def held_out(order: list[tuple[str, str]], user: str, holdout: float) -> set[tuple[str, str]]:
    """The user's latest round-half-up(holdout * n) pairs (at most n - 1)."""
    mine = [p for p in order if p[0] == user]
    h = min(int(np.floor(holdout * len(mine) + 0.5)), len(mine) - 1)
    return set(mine[len(mine) - h :]) if h else set()


# -- the tests ---------------------------------------------------------------------------------


def test_no_new_positive_events_is_409(client: TestClient, root: dict[str, Any]) -> None:
    assert root["version"] == 0 and root["root_id"] is None and root["events_cursor"] == "0-0"
    r = client.post(f"/v1/datasets/{root['id']}/versions")
    assert r.status_code == 409, r.text
    assert root["id"] in r.json()["detail"]
    assert "0 new positive events" in r.json()["detail"]

    push(client, [ev("u00", "i01", "view"), ev("u01", "i02", "cart")])  # none positive
    r = client.post(f"/v1/datasets/{root['id']}/versions", json={"min_new_events": 1})
    assert r.status_code == 409 and "0 new positive events" in r.json()["detail"]
    assert client.post("/v1/datasets/ds-nope/versions").status_code == 404
    assert client.post(f"/v1/datasets/{root['id']}/versions", json={"min": 1}).status_code == 422


def test_versions_grow_from_positive_events_only(
    client: TestClient, root: dict[str, Any], settings: Settings, redis_client: redis.Redis
) -> None:
    root_ds = load(settings, root["id"])
    first = [
        ev("u00", "i19"),  # a new pair of a known user and item
        ev("u00", "i18", "view"),  # not positive: left out
        ev("u01", "i01", "purchase"),
        ev("u01", "i01", "click"),  # the same pair again: counted as an event, kept once
        ev("u02", ROOT_ROWS[12][1]),  # a pair the root has already
        ev("u99", "i00"),  # a new user
        ev("u98", "i77", "purchase"),  # a new user and a new item
        ev("u97", "i76", "view"),  # a view only: neither id is added
        ev("u99", "i77"),
        ev("u03", "i19", "cart"),
    ]
    push(client, first)
    cut1 = last_stream_id(redis_client)
    r = client.post(f"/v1/datasets/{root['id']}/versions")
    assert r.status_code == 201, r.text
    v1 = r.json()
    positives = [e for e in first if e["type"] in POSITIVE]
    root_pairs = set(ROOT_ROWS)
    new_pairs = {(e["user_id"], e["item_id"]) for e in positives} - root_pairs
    assert v1["source"] == "version" and v1["version"] == 1
    assert v1["root_id"] == root["id"] and v1["parent_id"] == root["id"]
    assert v1["events_cursor"] == cut1
    assert v1["lineage"]["parent_id"] == root["id"]
    assert (v1["lineage"]["events_from"], v1["lineage"]["events_to"]) == ("0-0", cut1)
    assert v1["lineage"]["events"] == len(positives) == 7
    assert v1["lineage"]["new_pairs"] == len(new_pairs) == 5
    assert (v1["lineage"]["new_users"], v1["lineage"]["new_items"]) == (2, 1)
    assert v1["options"] == {"split": "temporal", "holdout": 0.25, "seed": 5}

    ds1 = load(settings, v1["id"])
    assert ds1.fingerprint == v1["fingerprint"]
    assert pairs_of(ds1) == root_pairs | new_pairs
    # Known ids keep their dense index; new ones come after, in order of first appearance.
    assert ds1.user_ids[: root_ds.n_users].tolist() == root_ds.user_ids.tolist()
    assert ds1.user_ids[root_ds.n_users :].tolist() == ["u99", "u98"]
    assert ds1.item_ids.tolist() == [*root_ds.item_ids.tolist(), "i77"]
    assert v1["statistics"]["interactions"] == len(root_pairs | new_pairs)
    # Temporal: every user's latest pairs (the new events last) are held out.
    order = expected_order(root_ds, first)
    held = {
        (str(ds1.user_ids[u]), str(ds1.item_ids[i]))
        for u, i in np.concatenate([ds1.valid, ds1.test])
    }
    for user in ("u00", "u01", "u05", "u99"):
        assert {p for p in held if p[0] == user} == held_out(order, user, 0.25), user
    assert ("u00", "i19") in held

    # The second version takes only what came after the first.
    second = [
        ev("u04", "i19"),
        ev("u99", "i78", "purchase"),
        ev("u00", "i19"),
        ev("u05", "i00", "view"),
    ]
    push(client, second)
    cut2 = last_stream_id(redis_client)
    r = client.post(f"/v1/datasets/{v1['id']}/versions", json={"min_new_events": 4})
    assert r.status_code == 409 and "3 new positive events" in r.json()["detail"]
    r = client.post(f"/v1/datasets/{root['id']}/versions", json={"min_new_events": 3})
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert v2["version"] == 2 and v2["parent_id"] == v1["id"] and v2["root_id"] == root["id"]
    assert (v2["lineage"]["events_from"], v2["lineage"]["events_to"]) == (cut1, cut2)
    assert v2["lineage"]["events"] == 3
    assert (v2["lineage"]["new_users"], v2["lineage"]["new_items"]) == (0, 1)
    assert v2["lineage"]["new_pairs"] == 2
    ds2 = load(settings, v2["id"])
    second_pairs = {(e["user_id"], e["item_id"]) for e in second if e["type"] in POSITIVE}
    assert pairs_of(ds2) == root_pairs | new_pairs | second_pairs
    assert ds2.user_ids.tolist() == ds1.user_ids.tolist()
    assert ds2.item_ids.tolist() == [*ds1.item_ids.tolist(), "i78"]
    order = expected_order(root_ds, first + second)
    held = {
        (str(ds2.user_ids[u]), str(ds2.item_ids[i]))
        for u, i in np.concatenate([ds2.valid, ds2.test])
    }
    for user in ("u04", "u99"):
        assert {p for p in held if p[0] == user} == held_out(order, user, 0.25), user

    # The lineage, newest first, from any of its ids; each version is a dataset like any.
    for some_id in (root["id"], v1["id"], v2["id"]):
        listing = client.get(f"/v1/datasets/{some_id}/versions").json()
        assert [d["id"] for d in listing["items"]] == [v2["id"], v1["id"], root["id"]]
        assert listing["total"] == 3
    page = client.get(f"/v1/datasets/{root['id']}/versions?limit=1&offset=1").json()
    assert [d["id"] for d in page["items"]] == [v1["id"]]
    assert client.get(f"/v1/datasets/{v2['id']}").json() == v2
    assert client.get("/v1/datasets").json()["total"] == 3
    assert client.get("/v1/datasets/ds-nope/versions").status_code == 404


def test_synthetic_truth_is_kept_while_the_ids_are_the_roots(
    client: TestClient, settings: Settings
) -> None:
    r = client.post(
        "/v1/datasets",
        json={"synthetic": {"n_users": 40, "n_items": 30, "interactions_per_user": 6}},
    )
    assert r.status_code == 201, r.text
    root = r.json()
    push(client, [ev("3", "7"), ev("5", "29", "purchase")])
    v1 = client.post(f"/v1/datasets/{root['id']}/versions").json()
    truth = load(settings, v1["id"]).truth
    root_truth = load(settings, root["id"]).truth
    assert truth is not None and root_truth is not None
    assert np.array_equal(truth.user_factors, root_truth.user_factors)
    push(client, [ev("new-user", "7")])
    v2 = client.post(f"/v1/datasets/{root['id']}/versions").json()
    assert v2["lineage"]["new_users"] == 1
    assert load(settings, v2["id"]).truth is None


def test_concurrent_build_of_a_lineage_is_409(
    client: TestClient, root: dict[str, Any], settings: Settings, redis_client: redis.Redis
) -> None:
    push(client, [ev("u00", "i19"), ev("u01", "i18")])
    reached, release = threading.Event(), threading.Event()

    def hold(step: str) -> None:
        if step == "dataset":
            reached.set()
            release.wait(30)

    results: list[Any] = []
    builder = threading.Thread(
        target=lambda: results.append(
            build_version(Registry(redis_client), settings, redis_client, root["id"], on_step=hold)
        )
    )
    builder.start()
    try:
        assert reached.wait(30)
        r = client.post(f"/v1/datasets/{root['id']}/versions")
        assert r.status_code == 409, r.text
        assert root["id"] in r.json()["detail"] and "being built" in r.json()["detail"]
    finally:
        release.set()
        builder.join(30)
    assert results and results[0].record is not None and results[0].new_events == 2
    assert not redis_client.exists(keys.dataset_build_lock(root["id"]))  # released
    assert client.post(f"/v1/datasets/{root['id']}/versions").status_code == 409  # nothing new


def test_a_trimmed_stream_is_refused(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    push(client, [ev(f"u{k:02d}", "i00", "view") for k in range(5)])
    r = client.post("/v1/datasets", files={"file": ("root.csv", root_csv())})
    assert r.status_code == 201, r.text
    root = r.json()
    assert root["events_cursor"] == last_stream_id(redis_client)
    push(client, [ev(f"u{k:02d}", "i19") for k in range(5)])
    redis_client.xtrim(keys.events_stream(), maxlen=3, approximate=False)  # MAXLEN's work
    r = client.post(f"/v1/datasets/{root['id']}/versions")
    assert r.status_code == 409, r.text
    assert "trimmed" in r.json()["detail"] and root["id"] in r.json()["detail"]
    assert client.get(f"/v1/datasets/{root['id']}/versions").json()["total"] == 1


def test_a_teacher_trains_on_a_version(
    client: TestClient,
    root: dict[str, Any],
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    import torch

    from service.core.artifacts import ArtifactStore
    from training.config import TeacherConfig
    from training.pipelines import train_teacher
    from worker.inputs import load_dataset

    push(client, [ev("u99", "i00"), ev("u99", "i01"), ev("u99", "i02"), ev("u00", "i77")])
    version = client.post(f"/v1/datasets/{root['id']}/versions").json()
    dataset = load_dataset(
        Registry(redis_client), ArtifactStore.from_settings(settings), version["id"]
    )
    assert (dataset.n_users, dataset.n_items) == (13, 21)
    artifact = train_teacher(
        dataset,
        TeacherConfig(model="mf", dim=8, epochs=2),
        tmp_path / "teacher",
        device=torch.device("cpu"),
        dataset_id=version["id"],
    )
    assert artifact.user_emb is not None and artifact.item_emb is not None
    assert artifact.user_emb.shape == (13, 8) and artifact.item_emb.shape == (21, 8)


def test_openapi_documents_the_version_routes_with_examples(client: TestClient) -> None:
    from service.api.schemas import DatasetOut

    doc = client.get("/openapi.json").json()
    routes = doc["paths"]["/v1/datasets/{dataset_id}/versions"]
    created = routes["post"]["responses"]["201"]["content"]["application/json"]["example"]
    assert DatasetOut.model_validate(created).source == "version"  # the example is a DatasetOut
    assert {"409", "404"} <= set(routes["post"]["responses"])
    listed = routes["get"]["responses"]["200"]["content"]["application/json"]["example"]
    assert listed["items"] == [created]
    body = doc["components"]["schemas"]["VersionRequest"]
    assert body["examples"] == [{"min_new_events": 100}, {"min_new_events": 1, "split": "append"}]
    assert body["properties"]["min_new_events"]["minimum"] == 1
    assert body["properties"]["split"]["enum"] == ["temporal", "append"]
    assert body["properties"]["split"]["default"] == "temporal"


# -- the append split -------------------------------------------------------------------------


def split_of(ds: Dataset) -> dict[tuple[str, str], str]:
    """Every pair of `ds` by external ids, with the split it is in."""
    out: dict[tuple[str, str], str] = {}
    for name in ("train", "valid", "test"):
        for u, i in ds.split(name).tolist():
            out[(str(ds.user_ids[u]), str(ds.item_ids[i]))] = name
    return out


def new_pairs_in_order(
    before: set[tuple[str, str]], events: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """The positive events' pairs not in `before`, each once, in the order sent."""
    out: list[tuple[str, str]] = []
    for e in events:
        pair = (e["user_id"], e["item_id"])
        if e["type"] in POSITIVE and pair not in before and pair not in out:
            out.append(pair)
    return out


APPEND_EVENTS = [
    ev("u00", "i19"),
    ev("u00", "i18", "view"),  # not positive
    ev("u01", "i01", "purchase"),
    ev("u01", "i01"),  # the same pair again
    ev("u02", ROOT_ROWS[12][1]),  # a pair the root has (in whichever split)
    ev("u05", ROOT_ROWS[30][1]),
    ev("u99", "i00"),  # a new user
    ev("u98", "i77", "purchase"),  # a new user and a new item
    ev("u99", "i77"),
    ev("u03", "i00"),
    ev("u03", "i02"),
]


def test_an_append_version_keeps_the_parents_split_and_trains_on_every_new_pair(
    client: TestClient, root: dict[str, Any], settings: Settings
) -> None:
    root_ds = load(settings, root["id"])  # the parent, read here on its own
    parent = split_of(root_ds)
    assert set(parent) == set(ROOT_ROWS)
    push(client, APPEND_EVENTS)
    r = client.post(f"/v1/datasets/{root['id']}/versions", json={"split": "append"})
    assert r.status_code == 201, r.text
    v1 = r.json()
    new = new_pairs_in_order(set(ROOT_ROWS), APPEND_EVENTS)
    assert len(new) == 7
    assert v1["options"] == {"split": "append", "holdout": 0.25, "seed": 5}
    assert v1["lineage"]["split"] == "append"
    assert v1["lineage"]["events"] == sum(e["type"] in POSITIVE for e in APPEND_EVENTS) == 10
    assert v1["lineage"]["new_pairs"] == len(new)
    assert (v1["lineage"]["new_users"], v1["lineage"]["new_items"]) == (2, 1)

    ds1 = load(settings, v1["id"])
    assert ds1.fingerprint == v1["fingerprint"] and ds1.info["split"] == "append"
    got = split_of(ds1)
    assert set(got) == set(ROOT_ROWS) | set(new)
    for pair, name in parent.items():  # every parent pair in the parent's split, exactly
        assert got[pair] == name, pair
    assert {p: got[p] for p in new} == dict.fromkeys(new, "train")
    counts = {n: sum(v == n for v in parent.values()) for n in ("train", "valid", "test")}
    assert (len(ds1.train), len(ds1.valid), len(ds1.test)) == (
        counts["train"] + len(new),
        counts["valid"],
        counts["test"],
    )
    assert v1["statistics"]["interactions"] == len(ROOT_ROWS) + len(new)
    # Known ids keep their dense index; new ones come after, in order of first appearance.
    assert ds1.user_ids.tolist() == [*root_ds.user_ids.tolist(), "u99", "u98"]
    assert ds1.item_ids.tolist() == [*root_ds.item_ids.tolist(), "i77"]


def test_append_after_temporal_keeps_the_first_versions_held_out_pairs(
    client: TestClient, root: dict[str, Any], settings: Settings
) -> None:
    root_ds = load(settings, root["id"])
    sent: list[dict[str, Any]] = []
    batches = [
        APPEND_EVENTS,
        [ev("u00", "i17"), ev("u04", "i19"), ev("u99", "i78", "purchase"), ev("u00", "i19")],
        [ev("u00", "i16"), ev("u06", "i19"), ev("u97", "i00"), ev("u04", "i18", "view")],
    ]
    versions: list[dict[str, Any]] = []
    for batch, split in zip(batches, ("temporal", "append", "append"), strict=True):
        push(client, batch)
        sent += batch
        r = client.post(f"/v1/datasets/{root['id']}/versions", json={"split": split})
        assert r.status_code == 201, r.text
        versions.append(r.json())
        assert versions[-1]["lineage"]["split"] == split == versions[-1]["options"]["split"]
    v1, v2, v3 = (load(settings, v["id"]) for v in versions)
    assert versions[2]["parent_id"] == versions[1]["id"]
    assert versions[1]["parent_id"] == versions[0]["id"]

    # v1 is temporal: each user's newest pairs held out (brute force from what was sent).
    order = expected_order(root_ds, batches[0])
    first = split_of(v1)
    for user in ("u00", "u01", "u03", "u99"):
        held = {p for p, n in first.items() if p[0] == user and n != "train"}
        assert held == held_out(order, user, 0.25), user
    # v2 and v3 keep v1's valid and test pairs, exactly, and every later pair is in train.
    for ds, upto in ((v2, 2), (v3, 3)):
        got = split_of(ds)
        for pair, name in first.items():
            assert got[pair] == name, pair
        later = new_pairs_in_order(set(first), [e for b in batches[1:upto] for e in b])
        assert set(got) == set(first) | set(later)
        assert all(got[p] == "train" for p in later)
    assert v3.valid.tolist() == v1.valid.tolist() and v3.test.tolist() == v1.test.tolist()
    assert v3.item_ids.tolist() == [*v1.item_ids.tolist(), "i78"]
    assert v3.user_ids.tolist() == [*v1.user_ids.tolist(), "u97"]

    # A temporal version after append ones splits every row anew, in time order.
    push(client, [ev("u06", "i18")])
    sent.append(ev("u06", "i18"))
    r = client.post(f"/v1/datasets/{root['id']}/versions")
    assert r.status_code == 201 and r.json()["options"]["split"] == "temporal", r.text
    v4 = load(settings, r.json()["id"])
    assert v4.user_ids.tolist() == v3.user_ids.tolist()
    assert v4.item_ids.tolist() == v3.item_ids.tolist()
    order = expected_order(root_ds, sent)
    fourth = split_of(v4)
    assert set(fourth) == set(order)
    for user in ("u00", "u04", "u06", "u99"):
        held = {p for p, n in fourth.items() if p[0] == user and n != "train"}
        assert held == held_out(order, user, 0.25), user


def test_an_unknown_split_is_a_422_naming_it(
    client: TestClient, root: dict[str, Any], settings: Settings, redis_client: redis.Redis
) -> None:
    push(client, [ev("u00", "i19")])
    for bad in ("random", "given", ""):
        r = client.post(f"/v1/datasets/{root['id']}/versions", json={"split": bad})
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["detail"]] == [["body", "split"]]
    unknown: Any = "random"  # the Python API refuses it as well, before taking the lock
    with pytest.raises(ValueError, match="split='random'"):
        build_version(Registry(redis_client), settings, redis_client, root["id"], split=unknown)
    assert client.get(f"/v1/datasets/{root['id']}/versions").json()["total"] == 1
