"""Attributing events: a consumer per API process on the events stream, one consumer group
for all of them, so that each event is attributed exactly once whatever the processes.

Each pass (every `period_s`, or sooner when events arrive):
1. XAUTOCLAIM the group's entries idle for `claim_idle_s` (their process died or stopped
   before acknowledging them): they become this consumer's;
2. read this consumer's pending entries (XREADGROUP ... 0): events whose rec record was not
   written yet when they were first read;
3. read new entries (XREADGROUP ... >, blocking up to period_s);
4. look up the rec records they cite (one pipeline of HGETALL) and decide each event
   (attribution.attribute). An event whose record is missing stays pending and is tried
   again by the next passes: the answer's process may not have flushed it yet (up to
   exposure_flush_s). Once the event is older than `wait_s` (by its stream id's time) it
   counts as `unknown_rec_id`.
5. Count and acknowledge the decided events in one Lua script call per pass: per event XACK
   first, and its counters only if XACK acknowledged it (returned 1). Two consumers that both
   hold an entry (one claimed it from the other, which was only slow) cannot both count it,
   and a process that dies between counting and acknowledging cannot exist: both happen in
   one atomic script. (One call per pass, not per event: redis-py encodes every argument in
   Python, and a script call per event was 13 % of the API's GIL time during a 500-event
   batch intake; bench/events.py, py-spy --gil.)

Counts land in the 10-s bucket current when the event is attributed (like exposure, which
lands in the bucket of its flush), and in the since-epoch hash of the answer's model.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis as redis_lib

from service.core import keys
from service.serving.exposure.counts import BUCKET_S
from service.serving.exposure.delta import BUCKET_TTL_S, SINCE_TTL_S
from service.serving.outcomes.attribution import Attributed, Unattributed, attribute

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

WAIT_S = 30.0  # how long an event citing an unknown rec_id waits for its record
CLAIM_IDLE_S = 60.0  # an entry pending this long in another consumer is taken over
BATCH = 500  # entries read per call

# One call per pass. KEYS[1]: the stream. ARGV[1]: the group; ARGV[2], ARGV[3]: the hashes'
# TTLs (bucket, since); ARGV[4]: a JSON array of [entry id, bucket hash, since hash, [fields
# to increment by 1]] per decided event. Returns 1 per event counted, 0 per event that
# another consumer had acknowledged first. The hashes are named in ARGV, not KEYS: one
# argument per event instead of a key list, fine on the single Redis the service uses.
COUNT_AND_ACK_LUA = """
local decided = cjson.decode(ARGV[4])
local out = {}
local touched = {}
for n, d in ipairs(decided) do
  if redis.call('XACK', KEYS[1], ARGV[1], d[1]) == 1 then
    for h = 2, 3 do
      for _, f in ipairs(d[4]) do redis.call('HINCRBY', d[h], f, 1) end
      touched[d[h]] = ARGV[h]
    end
    out[n] = 1
  else
    out[n] = 0
  end
end
for key, ttl in pairs(touched) do redis.call('EXPIRE', key, ttl) end
return out
"""

Entry = tuple[str, dict[str, str] | None]  # fields None (or empty): trimmed while pending


def entry_age_s(entry_id: str, now: float) -> float:
    """Seconds since the stream stored the entry (its id's milliseconds)."""
    return now - int(entry_id.split("-", 1)[0]) / 1000.0


class OutcomeConsumer:
    """One API process's consumer of the events stream (module doc).

    Args:
        redis_client: a client with decode_responses=True.
        name: the consumer's name in the group (unique per process).
        period_s: the longest wait of a pass for new entries.
        wait_s: how long an event whose rec record is missing waits for it.
        claim_idle_s: idle time after which another consumer's pending entry is taken over.
        clock: seconds since the epoch (tests move time).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        name: str | None = None,
        period_s: float = 1.0,
        wait_s: float = WAIT_S,
        claim_idle_s: float = CLAIM_IDLE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis_client
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.period_s = period_s
        self.wait_s = wait_s
        self.claim_idle_s = claim_idle_s
        self.clock = clock
        self.stream = keys.events_stream()
        self._script = redis_client.register_script(COUNT_AND_ACK_LUA)
        self._group_ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = False
        # statistics, read by tests: events this consumer counted, by outcome
        self.attributed = 0
        self.unattributed = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outcome-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (what it has not acknowledged is taken over by another consumer,
        or by this one's successor, after claim_idle_s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period_s + 5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(block=True)
                if self._down:
                    self._down = False
                    logger.info("outcomes: reading events again")
            except Exception as exc:  # never let the consumer die: Redis comes back
                if not self._down:
                    logger.warning("outcomes: cannot read events (%s); retrying", exc)
                self._down = True
                self._stop.wait(self.period_s)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the stream's start: events stored before any API process ran are attributed.
            self.redis.xgroup_create(self.stream, keys.OUTCOME_GROUP, id="0", mkstream=True)
        except redis_lib.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, entry_id: str, block_ms: int | None) -> list[Entry]:
        try:
            reply: Any = self.redis.xreadgroup(
                keys.OUTCOME_GROUP, self.name, {self.stream: entry_id}, count=BATCH, block=block_ms
            )
        except redis_lib.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream (and its group) was deleted: make them again
                self._group_ready = False
            raise
        return [(eid, fields) for _, entries in reply or [] for eid, fields in entries]

    def step(self, *, block: bool = False) -> int:
        """One pass (module doc); returns the events decided (counted and acknowledged)."""
        self._ensure_group()
        self.redis.xautoclaim(
            self.stream,
            keys.OUTCOME_GROUP,
            self.name,
            min_idle_time=int(self.claim_idle_s * 1000),
            start_id="0-0",
            count=BATCH,
        )
        entries = self._read("0", None)
        seen = {eid for eid, _ in entries}
        # Blocks even with pending entries in hand: a pass then runs every period_s at most
        # while events wait for their records, and at once when new ones come.
        block_ms = int(self.period_s * 1000) if block else None
        entries += [e for e in self._read(">", block_ms) if e[0] not in seen]
        return self._decide(entries) if entries else 0

    def _decide(self, entries: list[Entry]) -> int:
        rec_ids = sorted({f["rec_id"] for _, f in entries if f and f.get("rec_id")})
        pipe = self.redis.pipeline(transaction=False)
        for rec_id in rec_ids:
            pipe.hgetall(keys.rec_record(rec_id))
        records: dict[str, dict[str, str]] = dict(zip(rec_ids, pipe.execute(), strict=True))
        now = self.clock()
        bucket = int(now // BUCKET_S)
        unattributed = keys.outcomes_unattributed()
        decided: list[tuple[str, str, str, tuple[str, ...]]] = []
        attributed: list[bool] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed from the stream (MAXLEN) while pending: nothing to count
                self.redis.xack(self.stream, keys.OUTCOME_GROUP, entry_id)
                continue
            outcome = attribute(fields, records.get(fields.get("rec_id", "")))
            if isinstance(outcome, Unattributed) and outcome.reason == "unknown_rec_id":
                if entry_age_s(entry_id, now) < self.wait_s:
                    continue  # its answer may not be flushed yet: stays pending
            if isinstance(outcome, Attributed):
                epoch, names = outcome.outcome_key, outcome.fields
            else:
                epoch, names = unattributed, (outcome.reason,)
            hashes = keys.outcomes_bucket(epoch, bucket), keys.outcomes_total(epoch)
            decided.append((entry_id, *hashes, names))
            attributed.append(isinstance(outcome, Attributed))
        if not decided:
            return 0
        applied = self._script(
            keys=[self.stream],
            args=[keys.OUTCOME_GROUP, BUCKET_TTL_S, SINCE_TTL_S, json.dumps(decided)],
        )
        for ok, was_attributed in zip(applied, attributed, strict=True):
            if ok:
                if was_attributed:
                    self.attributed += 1
                else:
                    self.unattributed += 1
        return sum(1 for ok in applied if ok)
