"""Request coalescing: concurrent single-user lookups share one batched index search.

A flat inner-product search is bound by reading the item matrix, and faiss reads it once
per query block rather than once per query: on one core, 16 queries of dim 100 over 100k
items cost about 0.8 ms each as a batch against 9 ms alone (dim 10: 0.23 against 0.55).
Under load, requests that arrive while a search runs are answered together by the next one.

Leader/follower, no extra thread: a request that finds no search running becomes the
leader, takes every pending request (its own included), runs one batch per (k,
exclude_seen), hands results out, and passes leadership to a request that queued
meanwhile. An uncontended request therefore runs its own search at once, with no thread
hop and no waiting; batches only form when requests actually overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

BatchFn = Callable[[np.ndarray, int, bool], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Pending:
    user: int
    k: int
    exclude_seen: bool
    done: threading.Event = field(default_factory=threading.Event)
    scores: np.ndarray | None = None  # (k,) float32
    items: np.ndarray | None = None  # (k,) int64
    error: BaseException | None = None


class Coalescer:
    """Merges concurrent `one(user, k, exclude_seen)` calls into `batch_fn` calls.

    Args:
        batch_fn: (users (n,) int64, k, exclude_seen) -> (scores (n, k), items (n, k)).
        max_batch: most requests answered by one call (bounds a batch's latency).
    """

    def __init__(self, batch_fn: BatchFn, max_batch: int = 64) -> None:
        self._batch_fn = batch_fn
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._leading = False
        self.batches = 0  # statistics, read by tests and the benchmark
        self.requests = 0

    def one(self, user: int, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for one user: (k,) float32 scores and (k,) int64 items, as batch_fn gives."""
        req = _Pending(user, k, exclude_seen)
        with self._lock:
            self._pending.append(req)
            lead = not self._leading
            self._leading = True
        if not lead:
            req.done.wait()
            if req.items is None and req.error is None:
                lead = True  # promoted: the previous leader left our request for us to run
        if lead:
            self._lead()
        if req.error is not None:
            raise req.error
        assert req.scores is not None and req.items is not None
        return req.scores, req.items

    def _lead(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        try:
            self._run(batch)
        finally:
            with self._lock:
                if self._pending:
                    self._pending[0].done.set()  # promote the oldest waiter; it runs the rest
                else:
                    self._leading = False
            for req in batch:
                req.done.set()

    def _run(self, batch: list[_Pending]) -> None:
        groups: dict[tuple[int, bool], list[_Pending]] = {}
        for req in batch:
            groups.setdefault((req.k, req.exclude_seen), []).append(req)
        for (k, exclude_seen), reqs in groups.items():
            users = np.fromiter((r.user for r in reqs), dtype=np.int64, count=len(reqs))
            try:
                scores, items = self._batch_fn(users, k, exclude_seen)
            except BaseException as exc:  # every request of the failed batch gets the error
                for r in reqs:
                    r.error = exc
                continue
            for row, r in enumerate(reqs):
                r.scores, r.items = scores[row], items[row]
        self.batches += 1
        self.requests += len(batch)
