"""Live exposure: what the served models show, counted as they answer and summed over every
API process in Redis (GET /v1/serving/exposure, the unkd_exposure_* series of /metrics).

What counts. Every answered recommendation list (the single-user GET and its fallback lists,
by-history, each user of a batch POST) adds, under the model that produced it: one answer,
its filled slots, its slots per popularity group, a count for each of its items, its mean
training popularity (ARP), and the handler's latency (one observation per HTTP answer and
model: a batch answered by two arms counts once for each). Similar-items lists are not
counted: they rank items against an item, which the offline report does not measure.

Design: count in memory, add up in Redis.
- Hot path, a few µs: the route hands the answer's item array and its latency to the
  model's `Tally`, which appends one tuple to a deque (thread-safe without a lock, no numpy).
- A flusher thread per process (`ExposureCounter`) drains the deque every
  `settings.exposure_flush_s` (1 s) and does the numpy work there: a bincount per model for
  the items, one for the groups, the per-answer mean popularity, a latency histogram. It
  writes the deltas of each model in one MULTI:
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
- Reads (`ExposureReader`, for the route and /metrics): per served model, the window's 60
  bucket hashes and item strings and the since-epoch ones, in one pipeline, summed in numpy.
  That reads 61 x n_items x 4 bytes per model (1.6k items: 0.4 MB; 100k: 24 MB, ~20 ms).

Epochs. A model's counts belong to its serving epoch (`since`): the active model's begins
at its publish (the pointer's published_at), an arm's at its experiment's start, except an
arm that is the active model, whose epoch runs on. A new publish starts a new epoch, so
`since_publish` (and the window) start again from zero; the old keys expire.

Window: the 10-s buckets that began within the last 600 s, the current one included, so
between 590 and 600 s of answers; an answer counts in the bucket during which it was
flushed (at most exposure_flush_s after it was answered).

Figures (as the offline report defines them, METRICS.md C and D, over served answers):
head share = slots of group 0 / slots; group share = slots of g / slots; ARP = mean over
non-empty answers of the mean training popularity of their items (an answer with no item
counts in `requests`, not in ARP); coverage = distinct items
shown / n_items; Gini = RecBole's Gini index of the items' counts (training.metrics_popularity,
the report's own function); latency p50/p99 from a histogram of 20 geometric bins per decade
(10 µs .. 100 s), each reported at its bin's geometric centre (within 6 % of the true value).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from service.core import keys
from service.serving.schemas import (
    ExposureGroup,
    ExposureLatency,
    ExposureModel,
    ExposureReport,
    ExposureScope,
)
from training.metrics_popularity import gini_index

if TYPE_CHECKING:
    import redis

    from service.serving.bundle import ServingBundle

logger = logging.getLogger(__name__)

WINDOW_S = 600
BUCKET_S = 10
BUCKET_TTL_S = WINDOW_S + 60  # a bucket outlives the window by a minute, then Redis drops it
SINCE_TTL_S = 30 * 24 * 3600  # since-epoch counts of a model no longer served expire after this
# Latency histogram: bin 0 is below 10 µs, bin i in 1..140 is [EDGES[i-1], EDGES[i]), bin 141
# is 100 s and above.
LATENCY_EDGES_S = 1e-5 * 10.0 ** (np.arange(0, 7 * 20 + 1) / 20.0)
LATENCY_BINS = len(LATENCY_EDGES_S) + 1

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


# -- pure logic: deltas, buckets, figures ---------------------------------------------------


@dataclass
class Counts:
    """Exposure counters of one model over some span (a flush, a bucket, a window).

    Attributes:
        requests: answers (lists) counted.
        slots: filled slots (items shown).
        groups: (G,) int64 slots per popularity group.
        lists: answers with at least one item (ARP's denominator).
        pop_mean_sum: sum over those answers of their items' mean training popularity.
        latency: (LATENCY_BINS,) int64 histogram of answer latencies.
        items: (n_items,) int64 count of each item, or None where not read (the counters of a hash).
    """

    requests: int
    slots: int
    groups: np.ndarray
    lists: int
    pop_mean_sum: float
    latency: np.ndarray
    items: np.ndarray | None = None

    @classmethod
    def zero(cls, n_groups: int, n_items: int | None = None) -> Counts:
        items = np.zeros(n_items, dtype=np.int64) if n_items is not None else None
        zeros = np.zeros(n_groups, dtype=np.int64)
        return cls(0, 0, zeros, 0, 0.0, np.zeros(LATENCY_BINS, dtype=np.int64), items)

    def add(self, other: Counts) -> None:
        """Add `other` into self (groups beyond self's G are dropped; items padded or cut)."""
        self.requests += other.requests
        self.slots += other.slots
        g = min(len(self.groups), len(other.groups))
        self.groups[:g] += other.groups[:g]
        self.lists += other.lists
        self.pop_mean_sum += other.pop_mean_sum
        self.latency += other.latency
        if self.items is not None and other.items is not None:
            m = min(len(self.items), len(other.items))
            self.items[:m] += other.items[:m]

    def fields(self) -> dict[str, int]:
        """The integer counters as hash fields (zeros left out): requests, slots, lists,
        g:<group>, lat:<bin>."""
        out = {"requests": self.requests, "slots": self.slots, "lists": self.lists}
        out.update({f"g:{g}": int(n) for g, n in enumerate(self.groups.tolist()) if n})
        out.update({f"lat:{b}": int(n) for b, n in enumerate(self.latency.tolist()) if n})
        return {k: v for k, v in out.items() if v}

    @classmethod
    def from_hash(cls, raw: dict[Any, Any], n_groups: int) -> Counts:
        """The counters of one Redis hash (fields of `fields()` and pop_mean_sum; bytes or str)."""
        out = cls.zero(n_groups)
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            text = value.decode() if isinstance(value, bytes) else str(value)
            if name == "pop_mean_sum":
                out.pop_mean_sum = float(text)
                continue
            kind, _, index = name.partition(":")
            n = int(text)
            if kind == "requests":
                out.requests = n
            elif kind == "slots":
                out.slots = n
            elif kind == "lists":
                out.lists = n
            elif kind == "g" and int(index) < n_groups:
                out.groups[int(index)] = n
            elif kind == "lat" and int(index) < LATENCY_BINS:
                out.latency[int(index)] = n
        return out

    def item_pairs(self) -> bytes:
        """The non-zero item counts as little-endian u32 (item, count) pairs (ADD_ITEMS_LUA)."""
        if self.items is None:
            return b""
        nz = np.flatnonzero(self.items)
        pairs = np.empty((len(nz), 2), dtype="<u4")
        pairs[:, 0] = nz
        pairs[:, 1] = np.minimum(self.items[nz], 2**32 - 1)
        return pairs.tobytes()


def latency_bins(seconds: np.ndarray) -> np.ndarray:
    """(n,) int64 histogram bin of each latency (see LATENCY_EDGES_S)."""
    return np.searchsorted(LATENCY_EDGES_S, np.asarray(seconds, dtype=np.float64), side="right")


def latency_quantile_ms(hist: np.ndarray, q: float) -> float | None:
    """The q-quantile (nearest rank) of a latency histogram, in ms, at its bin's geometric
    centre; None for an empty histogram."""
    total = int(hist.sum())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    b = int(np.searchsorted(np.cumsum(hist), rank))
    if b == 0:
        return float(LATENCY_EDGES_S[0] * 1e3)
    if b >= len(LATENCY_EDGES_S):
        return float(LATENCY_EDGES_S[-1] * 1e3)
    return float(math.sqrt(LATENCY_EDGES_S[b - 1] * LATENCY_EDGES_S[b]) * 1e3)


def aggregate(
    answers: Sequence[tuple[np.ndarray, float]],
    groups: np.ndarray,
    popularity: np.ndarray,
    n_groups: int,
) -> Counts:
    """The counts of some answers of one model.

    Args:
        answers: (items, latency_s) per HTTP answer; items (k,) for one list or (n, k) for n
            lists, int64 item indices, -1 for an empty slot.
        groups: (n_items,) popularity group of each item.
        popularity: (n_items,) training interactions of each item.
        n_groups: G, the bundle's number of popularity groups.
    """
    n_items = len(groups)
    rows = [np.atleast_2d(items) for items, _ in answers]
    n_rows = sum(r.shape[0] for r in rows)
    out = Counts.zero(n_groups, n_items)
    out.requests = n_rows
    out.latency = np.bincount(
        latency_bins(np.array([lat for _, lat in answers])), minlength=LATENCY_BINS
    )
    if n_rows == 0:
        return out
    flat = np.concatenate([r.ravel() for r in rows]).astype(np.int64, copy=False)
    row_of_slot = np.repeat(
        np.arange(n_rows), np.repeat([r.shape[1] for r in rows], [r.shape[0] for r in rows])
    )
    real = flat >= 0
    shown, row = flat[real], row_of_slot[real]
    out.slots = len(shown)
    out.items = np.bincount(shown, minlength=n_items).astype(np.int64)
    out.groups = np.bincount(groups[shown], minlength=n_groups).astype(np.int64)
    per_row = np.bincount(row, minlength=n_rows)
    pop_sum = np.bincount(row, weights=popularity[shown].astype(np.float64), minlength=n_rows)
    filled = per_row > 0
    out.lists = int(filled.sum())
    out.pop_mean_sum = float((pop_sum[filled] / per_row[filled]).sum())
    return out


def window_buckets(now: float, window_s: int = WINDOW_S, bucket_s: int = BUCKET_S) -> range:
    """The buckets (numbered time // bucket_s) that began within the last window_s, the
    current one included."""
    current = int(now // bucket_s)
    first = math.ceil((now - window_s) / bucket_s)
    return range(first, current + 1)


def decode_items(blobs: Iterable[bytes | None], n_items: int) -> np.ndarray:
    """The sum of dense big-endian u32 item-count strings: (n_items,) int64 (a missing key
    or a short string counts zeros)."""
    total = np.zeros(n_items, dtype=np.int64)
    for blob in blobs:
        if blob:
            arr = np.frombuffer(blob, dtype=">u4")[:n_items]
            total[: len(arr)] += arr
    return total


def coverage(items: np.ndarray, n_items: int) -> float | None:
    """Distinct items shown / catalogue size."""
    return float(np.count_nonzero(items) / n_items) if n_items else None


def scope_figures(
    counts: Counts, n_items: int, offline: Sequence[float | None] | None
) -> ExposureScope:
    """The contract's figures of one span. counts.items: (n_items,) summed item counts."""
    items = counts.items if counts.items is not None else np.zeros(n_items, dtype=np.int64)
    slots = counts.slots
    shares = [int(n) / slots if slots else None for n in counts.groups.tolist()]
    return ExposureScope(
        requests=counts.requests,
        slots=slots,
        head_share=shares[0] if shares else None,
        arp=counts.pop_mean_sum / counts.lists if counts.lists else None,
        coverage=coverage(items, n_items) if slots else None,
        gini=gini_index(items) if slots else None,
        distinct_items=int(np.count_nonzero(items)),
        groups=[
            ExposureGroup(
                group=g,
                share=s,
                offline_share=offline[g] if offline is not None and g < len(offline) else None,
            )
            for g, s in enumerate(shares)
        ],
        latency_ms=ExposureLatency(
            p50=latency_quantile_ms(counts.latency, 0.5),
            p99=latency_quantile_ms(counts.latency, 0.99),
        ),
    )


# -- keys -------------------------------------------------------------------------------------


def epoch_key(model_id: str, since: str) -> str:
    """The key prefix of one model's serving epoch: keys.EXPOSURE:<model_id>:<hash of since>."""
    return f"{keys.EXPOSURE}:{model_id}:{hashlib.sha1(since.encode()).hexdigest()[:12]}"


# -- what a request holds: the served model and its tally ------------------------------------


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
        self.key = epoch_key(bundle.model_id, since)
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


@dataclass(frozen=True)
class ServedModel:
    """One model a request may be answered by, as installed by the IndexStore's swap.

    Attributes:
        bundle: the loaded bundle that searches.
        role: "active" (the published pointer) or "arm" (of the running experiment).
        weight: the arm's share of users; None for the active model.
        tally: where its answers are counted (its epoch key even when counting is off).
    """

    bundle: ServingBundle
    role: Literal["active", "arm"]
    weight: float | None
    tally: Tally

    @property
    def model_id(self) -> str:
        return self.bundle.model_id


# -- the per-process counter and its flusher thread --------------------------------------------


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
        hashes = ((f"{key}:b:{bucket}", BUCKET_TTL_S), (f"{key}:total", SINCE_TTL_S))
        for name, ttl in hashes:
            for fname, value in counts.fields().items():
                pipe.hincrby(name, fname, value)
            if counts.pop_mean_sum:
                pipe.hincrbyfloat(name, "pop_mean_sum", counts.pop_mean_sum)
            pipe.expire(name, ttl)
        pairs = counts.item_pairs()
        if pairs:
            item_keys = [f"{key}:bi:{bucket}", f"{key}:items"]
            self._script(keys=item_keys, args=[pairs, BUCKET_TTL_S, SINCE_TTL_S], client=pipe)
        pipe.execute()


# -- reading: the route and /metrics -----------------------------------------------------------


@dataclass
class ExposureReader:
    """Reads the summed counts of the served models from Redis (module doc).

    Args:
        redis_client: a client without decode_responses.
        offline: model id -> the per-group exposure_share@20 of its offline report, or None
            (no report); called once per model, the answer is cached.
    """

    redis: redis.Redis
    offline: Callable[[str], list[float | None] | None]
    clock: Callable[[], float] = time.time
    _offline_cache: dict[str, list[float | None] | None] = field(default_factory=dict)

    def offline_shares(self, model_id: str) -> list[float | None] | None:
        if model_id not in self._offline_cache:
            if len(self._offline_cache) > 256:  # models come and go; keep the cache small
                self._offline_cache.clear()
            self._offline_cache[model_id] = self.offline(model_id)
        return self._offline_cache[model_id]

    def report(self, models: Sequence[ServedModel], *, counting: bool) -> ExposureReport:
        """The exposure of `models` (the served ones, arms first) in the window and since
        their epoch began."""
        buckets = window_buckets(self.clock())
        pipe = self.redis.pipeline(transaction=False)
        for served in models:
            key = served.tally.key
            for b in buckets:
                pipe.hgetall(f"{key}:b:{b}")
            pipe.hgetall(f"{key}:total")
            pipe.mget([f"{key}:bi:{b}" for b in buckets] + [f"{key}:items"])
        replies = pipe.execute()
        out = []
        per_model = len(buckets) + 2
        for m, served in enumerate(models):
            bundle = served.bundle
            part = replies[m * per_model : (m + 1) * per_model]
            hashes, total_hash, blobs = part[: len(buckets)], part[len(buckets)], part[-1]
            window = Counts.zero(bundle.n_groups)
            for raw in hashes:
                window.add(Counts.from_hash(raw, bundle.n_groups))
            window.items = decode_items(blobs[:-1], bundle.n_items)
            since = Counts.from_hash(total_hash, bundle.n_groups)
            since.items = decode_items(blobs[-1:], bundle.n_items)
            offline = self.offline_shares(served.model_id)
            entry = ExposureModel(
                model_id=served.model_id,
                role=served.role,
                weight=served.weight,
                since=served.tally.since,
                window=scope_figures(window, bundle.n_items, offline),
                since_publish=scope_figures(since, bundle.n_items, offline),
            )
            out.append(entry)
        return ExposureReport(window_s=WINDOW_S, bucket_s=BUCKET_S, counting=counting, models=out)
