"""Counting exposure: the hot path's Tally and the per-process counter that flushes to Redis.

- Hot path, a few µs: the route hands the answer's item array and its latency to the
  model's `Tally`, which appends one tuple to a deque (thread-safe without a lock, no numpy).
- A flusher thread per process (`ExposureCounter`) drains the deque every
  `settings.exposure_flush_s` (1 s) and does the numpy work there (counts.aggregate): a
  bincount per model for the items, one for the groups, the per-answer mean popularity, a
  latency histogram. It writes the delta of each model by one Lua script (delta.py):
    - counters with HINCRBY (HINCRBYFLOAT for the popularity sum) into the hash of the
      current 10-s bucket (TTL: the window + 60 s) and into the since-epoch hash (TTL 30
      days, refreshed by every flush);
    - item counts into dense big-endian u32 strings (the bucket's and the since-epoch one),
      added server-side from one packed blob of (item, count) pairs. HINCRBY per distinct
      item would cost the API process ~7 µs an item (250 ms a flush for the 33k distinct
      items of 40k slots over 100k items, measured); the script costs it one command and
      Redis ~40 ms. A dense string also reads back in one GET as a numpy array, where
      HGETALL of 100k fields takes ~100 ms to parse.
  Processes add up because every write is an increment: no key belongs to one process.
- Once, whatever fails. Each delta carries a token that Redis applies at most once
  (delta.py). A send that fails (Redis down, a timeout, the connection lost after sending)
  leaves its delta in doubt: every later flush sends it again, unchanged, until a reply
  settles it. Answers counted meanwhile are held back, merged into one delta per model, and go
  under a new token once the one in doubt is settled: a model has at most one delta in doubt,
  and none is lost or added twice. The request path never waits on any of this.
- Rec records. An answer also hands over its rec_id and the user of each list (in the same
  tuple: still one append); the flusher writes what each answer showed, for attributing the
  events that cite it (service/serving/outcomes/recs.py), in one more pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from service.core import keys
from service.serving.exposure.counts import BUCKET_S, Counts, aggregate
from service.serving.exposure.delta import Delta, DeltaWriter
from service.serving.outcomes.attribution import rec_head, rec_lists, rec_texts
from service.serving.outcomes.recs import Rec, RecWriter

if TYPE_CHECKING:
    import redis

    from service.serving.bundle import ServingBundle

logger = logging.getLogger(__name__)


class Tally:
    """Where one served model's answers are counted: the hot path's only contact with counting.

    `add` appends to the counter's deque (or does nothing when counting is off); the item
    groups and popularity travel with the tally so the flusher needs no bundle lookup.
    """

    __slots__ = (
        "model_id",
        "since",
        "key",
        "outcomes",
        "groups",
        "popularity",
        "n_groups",
        "item_ids",
        "_rec_parts",
        "_sink",
    )

    def __init__(self, bundle: ServingBundle, since: str, sink: deque[Answer] | None) -> None:
        self.model_id = bundle.model_id
        self.since = since
        self.key = keys.exposure_epoch(bundle.model_id, since)
        self.outcomes = keys.outcomes_epoch(bundle.model_id, since)
        self.item_ids = bundle.item_ids
        self.groups = bundle.groups
        self.popularity = bundle.item_popularity
        self.n_groups = bundle.n_groups
        self._sink = sink
        # Made here, while the bundle loads, and not by the flusher on first use: the serving
        # process freezes what is alive after a load (service/serving/gc_policy.py), and two
        # lists of n_items strings made after that freeze were walked by every full collection
        # (200k references at 100k items: a 3-13 ms pause every second or so under load, the
        # p99 of bench/serve.py's plain GET). Tuples, so that even texts made after a freeze
        # (counting off, then rec_parts called) leave the walks: the collector stops tracking a
        # tuple that holds only strings.
        self._rec_parts: tuple[str, tuple[str, ...], tuple[str, ...]] | None = (
            self._make_rec_parts() if sink is not None else None
        )

    @property
    def counting(self) -> bool:
        return self._sink is not None

    def _make_rec_parts(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        ids, groups = rec_texts(self.item_ids.tolist(), self.groups.tolist())
        return rec_head(self.outcomes), tuple(ids), tuple(groups)

    def rec_parts(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """What rec records are built from (attribution.rec_lists): the JSON head and the
        items' texts (~60 bytes an item), made with the tally when it counts."""
        if self._rec_parts is None:
            self._rec_parts = self._make_rec_parts()
        return self._rec_parts

    def add(self, items: np.ndarray, latency_s: float, rec: Rec | None = None) -> None:
        """Count one HTTP answer: items (k,) or (n, k) int64 (-1: empty slot), its latency,
        and its rec_id with the user of each list (None: no rec record)."""
        sink = self._sink
        if sink is not None:
            sink.append((self, items, latency_s, rec))


# What the hot path queues per answer: its tally, items, latency and rec (Tally.add).
Answer = tuple[Tally, np.ndarray, float, Rec | None]


class ExposureCounter:
    """Collects this process's answers and flushes them to Redis every `flush_s` (module doc).

    Args:
        redis_client: a client *without* decode_responses (item counts are binary).
        flush_s: flush period of the background thread.
        clock: seconds since the epoch (tests move time).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        flush_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis_client
        self.flush_s = flush_s
        self.clock = clock
        self._pending: deque[Answer] = deque()
        # Per epoch key: the delta sent without a reply, and the counts held back behind it.
        self._in_doubt: dict[str, Delta] = {}
        self._held: dict[str, Counts] = {}
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = False
        self._writer = DeltaWriter(redis_client)
        self.recs = RecWriter(redis_client)
        # statistics, read by tests: answers written; deltas a retry found applied already
        self.flushed_answers = 0
        self.applied_before_retry = 0

    def tally(self, bundle: ServingBundle, since: str) -> Tally:
        return Tally(bundle, since, self._pending)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="exposure-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and flush what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_s + 5.0)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception:  # never let the flusher die: counting must go on
                logger.exception("exposure: flush failed")

    def flush(self) -> int:
        """Write every pending answer's counts to Redis now, and settle the deltas in doubt;
        returns the answers whose write was confirmed by this flush."""
        with self._flush_lock:
            n = len(self._pending)
            drained = [self._pending.popleft() for _ in range(n)]
            by_key: dict[str, tuple[Tally, list[tuple[np.ndarray, float]]]] = {}
            records = []
            for tally, items, latency, rec in drained:
                by_key.setdefault(tally.key, (tally, []))[1].append((items, latency))
                if rec is not None:
                    head, ids, groups = tally.rec_parts()
                    records.append((rec[0], rec_lists(head, ids, groups, items, rec[1])))
            self.recs.write(records)  # before the counts: an event may cite them at once
            for key, (tally, answers) in by_key.items():
                counts = aggregate(answers, tally.groups, tally.popularity, tally.n_groups)
                if key in self._held:
                    self._held[key].add(counts)
                else:
                    self._held[key] = counts
            bucket = int(self.clock() // BUCKET_S)
            written = 0
            for key in list(self._in_doubt):  # first settle what may have been applied
                if self._settle(self._in_doubt[key], bucket):
                    written += self._in_doubt.pop(key).counts.requests
            for key in list(self._held):  # then what waited, where nothing is in doubt
                if key in self._in_doubt:
                    continue
                delta = Delta(key, self._held.pop(key))
                if self._settle(delta, bucket):
                    written += delta.counts.requests
                else:
                    self._in_doubt[key] = delta
            if written and not self._in_doubt and self._down:
                self._down = False
                logger.info("exposure: flushing to Redis again")
            self.flushed_answers += written
            return written

    def _settle(self, delta: Delta, bucket: int) -> bool:
        """Send `delta`; True once Redis has it (applied now or by an earlier send)."""
        resend = delta.sends > 0
        try:
            applied = self._writer.send(delta, bucket)
        except Exception as exc:  # Redis down, a timeout, a lost reply: send it again later
            if not self._down:
                logger.warning("exposure: cannot flush to Redis (%s); keeping the counts", exc)
            self._down = True
            return False
        if resend and not applied:
            self.applied_before_retry += 1
        return True
