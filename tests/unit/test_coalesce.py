"""Request coalescing: every caller (thread or coroutine) gets its own row, batches form under
overlap, errors reach all, the idle search thread exits."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bundle_fixtures import make_bundle

from service.serving.bundle import load_bundle
from service.serving.coalescer import Coalescer


def slow_topk(delay_s: float = 0.005):
    """A batch function whose answer encodes (user, k, exclude_seen); slow enough to overlap."""
    calls: list[int] = []

    def fn(
        users: np.ndarray, k: int, exclude_seen: bool, queries: list | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(users))
        time.sleep(delay_s)
        items = users[:, None] * 1000 + np.arange(k)[None, :] + (500 if exclude_seen else 0)
        return items.astype(np.float32), items.astype(np.int64)

    return fn, calls


def hammer(coalescer: Coalescer, n_threads: int, per_thread: int) -> list[str]:
    errors: list[str] = []

    def worker(t: int) -> None:
        for j in range(per_thread):
            user, k, ex = t * 100 + j, 3 + (t % 3), bool(j % 2)
            _, items = coalescer.one(user, k, ex)
            want = user * 1000 + np.arange(k) + (500 if ex else 0)
            if items.tolist() != want.tolist():
                errors.append(f"user {user}: {items.tolist()} != {want.tolist()}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
        assert not th.is_alive(), "a caller never returned (lost wake-up)"
    return errors


def test_uncontended_call_runs_alone() -> None:
    fn, calls = slow_topk(0)
    c = Coalescer(fn)
    scores, items = c.one(7, 4, True)
    assert items.tolist() == [7500, 7501, 7502, 7503] and calls == [1]


def test_concurrent_callers_each_get_their_own_answer_in_fewer_batches() -> None:
    fn, calls = slow_topk()
    c = Coalescer(fn, max_batch=8)
    assert hammer(c, n_threads=12, per_thread=15) == []
    assert c.requests == 12 * 15 == sum(calls)
    assert c.batches < c.requests  # overlapping requests were merged
    assert max(calls) <= 8  # ... but never beyond max_batch


def test_an_error_reaches_every_caller_of_the_batch_and_the_next_batch_runs() -> None:
    gate = threading.Event()
    state = {"fail": True}
    sizes: list[int] = []  # callers per batch_fn call

    def fn(
        users: np.ndarray, k: int, exclude_seen: bool, queries: list | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        sizes.append(len(users))
        gate.wait(5)
        if state["fail"]:
            raise RuntimeError("index exploded")
        return np.zeros((len(users), k), np.float32), np.zeros((len(users), k), np.int64)

    c = Coalescer(fn)
    outcomes: list[str] = []

    def call() -> None:
        try:
            c.one(1, 2, True)
            outcomes.append("ok")
        except RuntimeError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for th in threads:
        th.start()
    # Hold the first batch until every caller is either in it or queued behind it, so the
    # queued ones are answered by one shared (failing) batch.
    deadline = time.monotonic() + 10
    while not (sizes and sizes[0] + len(c._pending) == 4) and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for th in threads:
        th.join(timeout=10)
        assert not th.is_alive(), "a caller never returned"
    assert outcomes == ["index exploded"] * 4  # every caller, not just one
    assert sum(sizes) == 4 and len(sizes) <= 2  # ... of batches that several callers shared
    state["fail"] = False
    _, items = c.one(3, 2, False)  # the search thread survived the error: the coalescer still works
    assert items.shape == (2,)


def test_bundle_recommend_one_matches_recommend_under_concurrency(tmp_path: Path) -> None:
    path, ds, _ = make_bundle(tmp_path, n_users=60, n_items=400)
    b = load_bundle(path)
    expected = b.recommend(np.arange(ds.n_users), 10, exclude_seen=True)[1]
    errors: list[int] = []

    def worker(offset: int) -> None:
        for u in range(offset, ds.n_users, 4):
            _, items = b.recommend_one(u, 10, True)
            if items.tolist() != expected[u].tolist():
                errors.append(u)

    threads = [threading.Thread(target=worker, args=(o,)) for o in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert errors == []


@pytest.mark.parametrize("max_batch", [1, 2])
def test_small_max_batch_still_serves_everyone(max_batch: int) -> None:
    fn, calls = slow_topk(0.001)
    c = Coalescer(fn, max_batch=max_batch)
    assert hammer(c, n_threads=6, per_thread=10) == []
    assert max(calls) <= max_batch


def test_async_callers_share_batches_and_get_their_own_rows() -> None:
    fn, calls = slow_topk(0.002)
    c = Coalescer(fn)

    async def main() -> list[list[int]]:
        got = await asyncio.gather(*(c.one_async(u, 3, True) for u in range(20)))
        return [items.tolist() for _, items in got]

    rows = asyncio.run(main())
    assert rows == [[u * 1000 + 500 + j for j in range(3)] for u in range(20)]
    assert sum(calls) == 20 and len(calls) < 20  # tasks submitted together share a search


def test_async_caller_gets_the_batch_error() -> None:
    def fn(users: np.ndarray, k: int, exclude_seen: bool, queries: list | None = None):
        raise RuntimeError("index exploded")

    c = Coalescer(fn)
    with pytest.raises(RuntimeError, match="index exploded"):
        asyncio.run(c.one_async(1, 2, True))


def test_idle_search_thread_exits_and_restarts() -> None:
    fn, calls = slow_topk(0)
    c = Coalescer(fn, idle_s=0.05)
    c.one(1, 2, True)
    deadline = time.monotonic() + 5
    while c._running and time.monotonic() < deadline:  # a swapped-out bundle must be freeable
        time.sleep(0.01)
    assert not c._running
    _, items = c.one(2, 2, False)  # the next call starts a new thread
    assert items.tolist() == [2000, 2001] and calls == [1, 1]


def test_queries_travel_with_their_rows() -> None:
    """Per-row queries (filters, vectors) reach the batch function beside their users; a batch
    without any gets None, so plain requests keep the plain path."""
    got: list[tuple[list[int], list | None]] = []
    gate = threading.Event()

    def fn(users: np.ndarray, k: int, exclude_seen: bool, queries: list | None = None):
        gate.wait(5)
        got.append((users.tolist(), queries))
        return np.zeros((len(users), k), np.float32), np.zeros((len(users), k), np.int64)

    c = Coalescer(fn)
    gate.set()
    c.one(1, 2, True)
    assert got == [([1], None)]
    gate.clear()
    got.clear()
    threads = [
        threading.Thread(target=c.one, args=(u, 2, True, None if u % 2 else f"q{u}"))
        for u in range(4)
    ]
    for th in threads:
        th.start()
    time.sleep(0.1)
    gate.set()
    for th in threads:
        th.join(timeout=10)
    rows = {
        u: q
        for users, queries in got
        for u, q in zip(users, queries or [None] * len(users), strict=True)
    }
    assert rows == {0: "q0", 1: None, 2: "q2", 3: None}
