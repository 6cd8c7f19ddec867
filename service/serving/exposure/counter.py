"""Counting exposure: the hot path's Tally and the per-process counter that flushes to Redis.

- Hot path, a few µs: the route hands the answer's item array and its latency to the
  model's `Tally`, which appends one tuple to a deque (thread-safe without a lock, no numpy).
- A flusher thread per process (`ExposureCounter`) drains the deque every
  `settings.exposure_flush_s` (1 s) and does the numpy work there (counts.aggregate): a
  bincount per model for the items, one for the groups, the per-answer mean popularity, a
  latency histogram. It writes the deltas of each model in one MULTI:
    - counters with HINCRBY (HINCRBYFLOAT for the popularity sum) into the hash of the
      current 10-s bucket (TTL: the window + 60 s) and into the since-epoch hash (TTL 30
      days, refreshed by every flush);
    - item counts into dense big-endian u32 strings (the bucket's and the since-epoch one),
      added server-side by a small Lua script from one packed blob of (item, count) pairs.
      HINCRBY per distinct item would cost the API process ~7 µs an item (250 ms a flush
      for the 33k distinct items of 40k slots over 100k items, measured); the script costs
      it one command and Redis ~40 ms. A dense string also reads back in one GET as a
      numpy array, where HGETALL of 100k fields takes ~100 ms to parse.
  Processes add up because every write is an increment: no key belongs to one process. A
  flush that fails (Redis down) keeps its deltas and adds them at the next one (merged into
  the bucket current then).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.core import keys
from service.serving.exposure.counts import BUCKET_S, WINDOW_S, Counts, aggregate

if TYPE_CHECKING:
    import redis

    from service.serving.bundle import ServingBundle

logger = logging.getLogger(__name__)

BUCKET_TTL_S = WINDOW_S + 60  # a bucket outlives the window by a minute, then Redis drops it
SINCE_TTL_S = 30 * 24 * 3600  # since-epoch counts of a model no longer served expire after this

# KEYS: dense u32 strings to add the pairs into; ARGV[1]: (item, count) pairs as '<I4I4';
# ARGV[1 + j]: the TTL of KEYS[j]. BITFIELD takes many INCRBYs per call; unpack() is bounded
# by Lua's C stack (8,000 values), hence batches of 1,000 pairs.
ADD_ITEMS_LUA = """
local blob = ARGV[1]
local n = #blob / 8
for k = 1, #KEYS do
  local args = {'OVERFLOW', 'SAT'}
  local pos, item, count = 1, 0, 0
  for _ = 1, n do
    item, count, pos = struct.unpack('<I4I4', blob, pos)
    args[#args + 1] = 'INCRBY'
    args[#args + 1] = 'u32'
    args[#args + 1] = '#' .. item
    args[#args + 1] = count
    if #args >= 4002 then
      redis.call('BITFIELD', KEYS[k], unpack(args))
      args = {'OVERFLOW', 'SAT'}
    end
  end
  if #args > 2 then redis.call('BITFIELD', KEYS[k], unpack(args)) end
  redis.call('EXPIRE', KEYS[k], ARGV[k + 1])
end
return n
"""


class Tally:
    """Where one served model's answers are counted: the hot path's only contact with counting.

    `add` appends to the counter's deque (or does nothing when counting is off); the item
    groups and popularity travel with the tally so the flusher needs no bundle lookup.
    """

    __slots__ = ("model_id", "since", "key", "groups", "popularity", "n_groups", "_sink")

    def __init__(
        self, bundle: ServingBundle, since: str, sink: deque[tuple[Tally, np.ndarray, float]] | None
    ) -> None:
        self.model_id = bundle.model_id
        self.since = since
        self.key = keys.exposure_epoch(bundle.model_id, since)
        self.groups = bundle.groups
        self.popularity = bundle.item_popularity
        self.n_groups = bundle.n_groups
        self._sink = sink

    @property
    def counting(self) -> bool:
        return self._sink is not None

    def add(self, items: np.ndarray, latency_s: float) -> None:
        """Count one HTTP answer: items (k,) or (n, k) int64 (-1: empty slot), its latency."""
        sink = self._sink
        if sink is not None:
            sink.append((self, items, latency_s))


@dataclass
class _Pending:
    tally: Tally
    counts: Counts


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
        self._pending: deque[tuple[Tally, np.ndarray, float]] = deque()
        self._carry: dict[str, _Pending] = {}  # deltas of a failed flush, added to the next
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = False
        self._script = redis_client.register_script(ADD_ITEMS_LUA)
        self.flushed_answers = 0  # statistics, read by tests

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
        """Write every pending answer's counts to Redis now; returns the answers written."""
        with self._flush_lock:
            n = len(self._pending)
            drained = [self._pending.popleft() for _ in range(n)]
            by_key: dict[str, tuple[Tally, list[tuple[np.ndarray, float]]]] = {}
            for tally, items, latency in drained:
                by_key.setdefault(tally.key, (tally, []))[1].append((items, latency))
            work = self._carry
            self._carry = {}
            for key, (tally, answers) in by_key.items():
                counts = aggregate(answers, tally.groups, tally.popularity, tally.n_groups)
                if key in work:
                    work[key].counts.add(counts)
                else:
                    work[key] = _Pending(tally, counts)
            if not work:
                return 0
            bucket = int(self.clock() // BUCKET_S)
            written = 0
            for key, pending in work.items():
                try:
                    self._write(key, bucket, pending.counts)
                    written += pending.counts.requests
                except (
                    Exception
                ) as exc:  # Redis down, a timeout: keep the deltas for the next flush
                    self._carry[key] = pending
                    if not self._down:
                        logger.warning(
                            "exposure: cannot flush to Redis (%s); keeping the counts", exc
                        )
                    self._down = True
            if written and not self._carry and self._down:
                self._down = False
                logger.info("exposure: flushing to Redis again")
            self.flushed_answers += written
            return written

    def _write(self, key: str, bucket: int, counts: Counts) -> None:
        """One MULTI: counters into the bucket's and the since-epoch hash, items by script."""
        pipe = self.redis.pipeline(transaction=True)
        hashes = (
            (keys.exposure_bucket(key, bucket), BUCKET_TTL_S),
            (keys.exposure_total(key), SINCE_TTL_S),
        )
        for name, ttl in hashes:
            for fname, value in counts.fields().items():
                pipe.hincrby(name, fname, value)
            if counts.pop_mean_sum:
                pipe.hincrbyfloat(name, "pop_mean_sum", counts.pop_mean_sum)
            pipe.expire(name, ttl)
        pairs = counts.item_pairs()
        if pairs:
            item_keys = [keys.exposure_bucket_items(key, bucket), keys.exposure_items(key)]
            self._script(keys=item_keys, args=[pairs, BUCKET_TTL_S, SINCE_TTL_S], client=pipe)
        pipe.execute()
