"""Request coalescing: concurrent single-user lookups share one batched index search.

A flat inner-product search is bound by reading the item matrix, and faiss reads it once
per query block rather than once per query: on one core, 16 queries of dim 100 over 100k
items cost about 0.8 ms each as a batch against 9 ms alone (dim 10: 0.23 against 0.55).
Under load, requests that arrive while a search runs are answered together by the next one.

One search thread per coalescer: callers append to a pending list; the thread takes all of
it, runs one batch per (k, exclude_seen), and hands results back. A request may carry an
opaque per-row query (filters, or a query vector of its own: service.serving.filters); the
batch function gets one per row, or None when no row of the batch has one. Async callers
(`one_async`, the HTTP route) await a future resolved on their event loop with a single
`call_soon_threadsafe` per batch, so a request costs no threadpool hop and the loop never
waits on faiss; blocking callers (`one`) wait on an event. Requests the loop parses in one
go reach the pending list before the thread takes its next batch, so requests that overlap
share a search even at low concurrency (bench/serve.py: a mean batch of 4.0 at 4
connections, against 1.1 when each threadpool request led its own search). The thread
exits after `idle_s` without work (a swapped-out bundle can be freed) and the next call
starts it again.

A bound method as `batch_fn` (ServingBundle.recommend) is held weakly: the bundle owns its
coalescer, so a strong reference back would make a cycle, and a cycle is freed only by the
cyclic garbage collector, which the API freezes after a swap (service/serving/gc_policy.py).
Without the cycle a swapped-out bundle is freed by reference counting as soon as its last
request drops it. Every caller holds the bundle while it waits, so the method is alive
whenever a batch runs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# (users (n,) int64, k, exclude_seen, one query or None per row | None) -> (scores, items) (n, k)
BatchFn = Callable[[np.ndarray, int, bool, "list[Any] | None"], tuple[np.ndarray, np.ndarray]]


class _Pending:
    """One caller's request; exactly one of `future` (async caller) or `done` (blocking) is set."""

    __slots__ = (
        "user",
        "k",
        "exclude_seen",
        "query",
        "loop",
        "future",
        "done",
        "scores",
        "items",
        "error",
    )

    def __init__(
        self,
        user: int,
        k: int,
        exclude_seen: bool,
        query: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.user, self.k, self.exclude_seen, self.query = user, k, exclude_seen, query
        self.loop, self.future = loop, future
        self.done = threading.Event() if future is None else None
        self.scores: np.ndarray | None = None  # (k,) float32
        self.items: np.ndarray | None = None  # (k,) int64
        self.error: BaseException | None = None

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.error is not None:
            raise self.error
        assert self.scores is not None and self.items is not None
        return self.scores, self.items


def _resolve(reqs: list[_Pending]) -> None:
    """On the callers' event loop: wake every awaiting request of one batch."""
    for r in reqs:
        assert r.future is not None
        if not r.future.done():  # a cancelled request (client gone) is skipped
            r.future.set_result(None)


class Coalescer:
    """Merges concurrent `one` / `one_async` calls into `batch_fn` calls on a search thread.

    Args:
        batch_fn: (users (n,) int64, k, exclude_seen, queries) -> (scores (n, k), items (n, k));
            queries is one query (or None) per row, or None when no row has one.
        max_batch: most requests answered by one call (bounds a batch's latency).
        idle_s: the search thread exits after this long without requests.
        on_thread_start: called on each new search thread before its first batch (per-thread
            settings such as faiss's OpenMP thread count: ServingBundle).
    """

    def __init__(
        self,
        batch_fn: BatchFn,
        max_batch: int = 64,
        idle_s: float = 5.0,
        on_thread_start: Callable[[], None] | None = None,
    ) -> None:
        # A bound method is referenced weakly (see the module doc); a plain function strongly.
        self._batch_ref: Callable[[], BatchFn | None] = (
            weakref.WeakMethod(batch_fn) if inspect.ismethod(batch_fn) else (lambda: batch_fn)
        )
        self._on_thread_start = on_thread_start
        self._max_batch = max_batch
        self._idle_s = idle_s
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[_Pending] = []
        self._running = False  # a search thread is alive and will see new requests
        self.batches = 0  # statistics, read by tests and the benchmark
        self.requests = 0

    def one(
        self, user: int, k: int, exclude_seen: bool, query: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for one user, blocking: (k,) float32 scores and (k,) int64 items."""
        req = _Pending(user, k, exclude_seen, query)
        self._submit(req)
        assert req.done is not None
        req.done.wait()
        return req.result()

    async def one_async(
        self, user: int, k: int, exclude_seen: bool, query: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`one` for a coroutine: the event loop keeps serving while the search runs."""
        loop = asyncio.get_running_loop()
        req = _Pending(user, k, exclude_seen, query, loop, loop.create_future())
        self._submit(req)
        assert req.future is not None
        await req.future
        return req.result()

    def _submit(self, req: _Pending) -> None:
        with self._cond:
            self._pending.append(req)
            start = not self._running
            self._running = True
            self._cond.notify()
        if start:
            threading.Thread(target=self._serve, name="coalescer-search", daemon=True).start()

    def _serve(self) -> None:
        """The search thread: drain pending requests batch by batch until idle."""
        if self._on_thread_start is not None:
            try:
                self._on_thread_start()
            except Exception:  # a tuning hook must not stop the searches
                logger.exception("coalescer: on_thread_start failed")
        while True:
            with self._cond:
                if not self._pending:
                    self._cond.wait(self._idle_s)
                    if not self._pending:  # idle (or a spurious wake-up): _submit restarts us
                        self._running = False
                        return
                batch, self._pending = (
                    self._pending[: self._max_batch],
                    self._pending[self._max_batch :],
                )
            try:
                self._run(batch)
            except Exception:  # a bug, not a search error (those reach the callers): keep serving
                logger.exception("coalescer: batch failed")
            self._deliver(batch)

    def _run(self, batch: list[_Pending]) -> None:
        groups: dict[tuple[int, bool], list[_Pending]] = {}
        for req in batch:
            groups.setdefault((req.k, req.exclude_seen), []).append(req)
        for (k, exclude_seen), reqs in groups.items():
            users = np.fromiter((r.user for r in reqs), dtype=np.int64, count=len(reqs))
            queries = [r.query for r in reqs] if any(r.query is not None for r in reqs) else None
            try:
                batch_fn = self._batch_ref()
                if batch_fn is None:  # cannot happen while a caller holds the bundle
                    raise RuntimeError("coalescer: its bundle was freed while requests waited")
                scores, items = batch_fn(users, k, exclude_seen, queries)
            except BaseException as exc:  # every request of the failed batch gets the error
                for r in reqs:
                    r.error = exc
                continue
            for row, r in enumerate(reqs):
                r.scores, r.items = scores[row], items[row]
        self.batches += 1
        self.requests += len(batch)

    @staticmethod
    def _deliver(batch: list[_Pending]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for req in batch:
            if req.error is None and req.items is None:
                req.error = RuntimeError(
                    "coalescer: the search thread failed before this request ran"
                )
            if req.done is not None:
                req.done.set()
            else:
                assert req.loop is not None
                by_loop.setdefault(req.loop, []).append(req)
        for loop, reqs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, reqs)  # one wake-up of the loop per batch
            except RuntimeError:  # the loop was closed meanwhile: nobody is waiting
                pass
