"""Fresh answers: each API process's bounded map of the items users acted on since the upload.

`FreshItems` holds, per user, the items of their recent positive events (types in
UNKD_EVENTS_POSITIVE_TYPES), newest last: at most `per_user` items per user, at most
`max_users` users (the least recently active user is dropped first), each item for `ttl_s`
after Redis stored its event. The GET path reads only this map (one dict membership test for
a user with no recent events; a short copy under a lock otherwise): no Redis round trip per
request. With exclude_seen a known user's answer leaves these items out beside their
training items; a user the served model does not know is answered by folding these items in
(service/serving/routes.py).

`FreshFeed` fills it: a daemon thread that, at start, reads the stream's newest
`tail_entries` entries within the TTL (so a restarted process knows what its predecessors
knew), then follows the stream with XREAD BLOCK from the last id it read. Every API process
runs its own, so an event reaches every process's next answer without a retrain; the delay
is one XREAD wake-up (bench/events.py measures it from the 202 to the answer). While Redis is
unreachable the map keeps what it has (entries still expire) and the thread retries, resuming
from its last id, so nothing stored meanwhile is skipped.

Memory: each held item costs about 150 bytes (the id string, its expiry, the dict slot), so
the defaults (50,000 users x 32 items) bound the map near 250 MB; typical users hold a few.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import cast

import redis

from service.core import keys
from service.core.events import PositiveReader, stored_at

logger = logging.getLogger(__name__)

NO_ITEMS: tuple[str, ...] = ()
# Stream entries as a decode_responses client returns them: (stream id, fields)
Entries = list[tuple[str, dict[str, str]]]


class FreshItems:
    """Per-user recent positive items, bounded in users, items per user and age (module doc).

    Args:
        max_users: users held; the least recently active one is dropped beyond it.
        per_user: items held per user; the oldest is dropped beyond it.
        ttl_s: seconds an item stays after its event was stored.
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        max_users: int,
        per_user: int,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_users, self.per_user, self.ttl_s = max_users, per_user, ttl_s
        self._clock = clock
        # user -> {item: expiry}; both in recency order (oldest first)
        self._users: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.applied = 0  # events added (statistics, read by tests and the benchmark)

    def __len__(self) -> int:
        return len(self._users)

    def add(self, user: str, item: str, stored_at: float) -> None:
        """Record that `user` acted on `item` at `stored_at` (an event already expired is ignored)."""
        expires = stored_at + self.ttl_s
        if expires <= self._clock():
            return
        with self._lock:
            items = self._users.get(user)
            if items is None:
                items = self._users[user] = {}
                if len(self._users) > self.max_users:
                    self._users.popitem(last=False)
            else:
                self._users.move_to_end(user)
                items.pop(item, None)  # re-inserted below: newest last
            items[item] = expires
            if len(items) > self.per_user:
                del items[next(iter(items))]
            self.applied += 1

    def items(self, user: str) -> Collection[str]:
        """The user's unexpired recent items, oldest first; empty for most users, cheaply."""
        if user not in self._users:  # the common case: no lock, one hash lookup
            return NO_ITEMS
        with self._lock:
            held = self._users.get(user)
            if held is None:
                return NO_ITEMS
            now = self._clock()
            return [item for item, expires in held.items() if expires > now]


class FreshFeed:
    """The thread that keeps a FreshItems up to date from the event stream (module doc).

    It waits with XREAD BLOCK (COUNT 1: a wake-up) and reads what is new with
    service.core.events.PositiveReader, which returns only the positive events' ids, users and
    items (redis-py parses a full entry ~30x slower than Redis sends it).

    Args:
        client: a redis-py client with decode_responses=True and a socket timeout longer
            than `block_ms`.
        fresh: the map to fill.
        positive: event types whose items are recorded.
        tail_entries: newest entries read at start (within the map's TTL).
        block_ms: how long one XREAD waits for new entries (bounds how long stop() waits).
        retry_s: pause after Redis failed.
        chunk: entries per read (each is one short script on Redis).
    """

    def __init__(
        self,
        client: redis.Redis,
        fresh: FreshItems,
        positive: Collection[str],
        *,
        tail_entries: int,
        block_ms: int = 500,
        retry_s: float = 0.5,
        chunk: int = 1000,
    ) -> None:
        self.client, self.fresh = client, fresh
        self.reader = PositiveReader(client, sorted(positive))
        self.tail_entries, self.block_ms, self.retry_s = tail_entries, block_ms, retry_s
        self.chunk = chunk
        self.last_id: str | None = None  # None until the tail is loaded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fresh-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def load_tail(self) -> None:
        """Read the newest entries within the TTL and remember where they end.

        The stream's newest id is taken first and bounds the tail read, so an entry stored
        after it is read later by `poll`, never skipped. The tail is read newest first (the
        bound is a count of entries) and added oldest first (the map's order is recency).
        """
        newest = cast(Entries, self.client.xrevrange(keys.events_stream(), count=1))
        last = newest[0][0] if newest else "0-0"
        hits: list[tuple[str, str, str]] = []
        since = str(max(int((time.time() - self.fresh.ttl_s) * 1000), 0))
        start, left = last, self.tail_entries if newest else 0
        while left > 0:
            got = self.reader.read(start, since, min(self.chunk, left), reverse=True)
            hits += got.hits
            left -= got.read
            if got.read < self.chunk:
                break
            start = f"({got.last_id}"
        for stream_id, user, item in reversed(hits):
            self.fresh.add(user, item, stored_at(stream_id))
        if newest:
            logger.info("fresh items: %d positive events of the stream's tail loaded", len(hits))
        self.last_id = last

    def _drain(self) -> int:
        """Read everything after last_id; returns entries read."""
        total = 0
        while True:
            assert self.last_id is not None
            got = self.reader.read(f"({self.last_id}", "+", self.chunk)
            for stream_id, user, item in got.hits:
                self.fresh.add(user, item, stored_at(stream_id))
            if got.read:
                self.last_id = got.last_id
            total += got.read
            if got.read < self.chunk or self._stop.is_set():
                return total

    def poll(self) -> int:
        """Read what is new, or wait up to block_ms for something to be; returns entries read."""
        if self.last_id is None:
            self.load_tail()
        assert self.last_id is not None
        n = self._drain()
        if n == 0:
            woke = self.client.xread(
                {keys.events_stream(): self.last_id}, count=1, block=self.block_ms
            )
            if woke:
                n = self._drain()
        return n

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.poll()
                if failing:
                    logger.info("fresh items: event stream readable again from %s", self.last_id)
                    failing = False
            except (redis.RedisError, OSError) as exc:
                if not failing:
                    logger.warning("fresh items: event stream unreadable (%s); retrying", exc)
                    failing = True
                self._stop.wait(self.retry_s)
