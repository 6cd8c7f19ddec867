"""A small keyed cache of what one process computed for an earlier job with the same inputs.

The trials of a tuning study run distill_student again and again with the same teacher and
data and only other learning rates or λ: the teacher's candidate lists, its head-group
exposure and the student's ALS warm start are the same in every trial, so each is built once
per process (training.distill.ranking.CANDIDATE_CACHE, training.pipelines' caches). Bounded by
entries, not bytes: the caller picks max_entries from its entry's size. Values are shared
read-only; a caller that changes one must copy it first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ProcessCache(Generic[T]):
    """The last `max_entries` values built in this process, least recently used dropped."""

    def __init__(self, max_entries: int = 1) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        value = build()  # outside the lock: minutes on a large catalogue
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
