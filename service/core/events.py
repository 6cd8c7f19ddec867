"""The event stream: what users did after the upload, one Redis Stream entry per event.

Written by the API (POST /v1/events), read by every API process's fresh-seen filter
(service/serving/fresh.py) and by whatever attributes outcomes to recommendations (rec_id).
It lives in core because all of those share it and the worker may read it too.

An entry's fields are exactly EVENT_FIELDS, all strings: event_id, user_id, item_id, type,
ts (float seconds since the epoch; the API's clock when the client sent none), rec_id (""
when absent). The entry's stream id is the time Redis stored it.

A batch is appended by one Lua script (Redis runs it atomically: no other command runs in
between): for each event, `SET <event_seen(id)> 1 NX EX <ttl>`, and XADD only when that SET
took, so an event_id repeated within the TTL (a client retrying a batch whose 202 it never
got, or twice in one batch) is stored once. The batch travels as one JSON argument that the
script decodes (Redis's bundled cjson), not as 6 arguments and a key per event: redis-py
encodes each argument in Python, and for a batch of 500 that was 3,500 calls and the
largest part of the API's CPU per event (bench/events.py, profiled with py-spy --gil: 45 %
of the GIL's time in HiredisRespSerializer.pack). The dedup keys are made inside the script
from their prefix, so the script names keys it was not passed, which a single Redis (the
service's) allows and Redis Cluster would not. The caller validates every event first, so the
script has nothing to refuse half-way. The API answers 202 after the script's reply; with the
stack's `appendonly yes` + `appendfsync always` Redis has written and fsynced the script's
effects to its append-only file before it sends that reply (docs/reliability.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from service.core import keys

EVENT_FIELDS = ("event_id", "user_id", "item_id", "type", "ts", "rec_id")

# KEYS[1]: the stream. ARGV[1]: dedup TTL (s); ARGV[2]: MAXLEN ~ bound (0: none); ARGV[3]:
# the dedup keys' prefix (keys.event_seen("")); ARGV[4]: a JSON array with one array of the 6
# EVENT_FIELDS values (strings) per event. Returns one stream id per event, "" for a repeat.
_APPEND_LUA = """
local ttl = ARGV[1]
local maxlen = tonumber(ARGV[2])
local prefix = ARGV[3]
local rows = cjson.decode(ARGV[4])
local out = {}
for i, r in ipairs(rows) do
  if redis.call('SET', prefix .. r[1], '1', 'NX', 'EX', ttl) then
    local fields = {'event_id', r[1], 'user_id', r[2], 'item_id', r[3],
                    'type', r[4], 'ts', r[5], 'rec_id', r[6]}
    if maxlen > 0 then
      out[i] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(fields))
    else
      out[i] = redis.call('XADD', KEYS[1], '*', unpack(fields))
    end
  else
    out[i] = ''
  end
end
return out
"""


# What a reader of positive feedback needs, projected in Redis (service/serving/fresh.py).
# KEYS[1]: the stream. ARGV[1]: "fwd" (XRANGE) or "rev" (XREVRANGE); ARGV[2]: the start, as
# XRANGE takes it ("(<id>" exclusive); ARGV[3]: the end; ARGV[4]: COUNT; ARGV[5..]: the types.
# Returns {id of the last entry read ("" if none), entries read, {id, user_id, item_id, ...}
# of those whose type is listed}.
_POSITIVE_LUA = """
local cmd = ARGV[1] == 'rev' and 'XREVRANGE' or 'XRANGE'
local entries = redis.call(cmd, KEYS[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
local wanted = {}
for i = 5, #ARGV do wanted[ARGV[i]] = true end
local out = {}
local last = ''
for _, e in ipairs(entries) do
  last = e[1]
  local f = e[2]
  local t, u, it
  for j = 1, #f, 2 do
    local k = f[j]
    if k == 'type' then t = f[j + 1] elseif k == 'user_id' then u = f[j + 1]
    elseif k == 'item_id' then it = f[j + 1] end
  end
  if t and wanted[t] and u and it then
    out[#out + 1] = e[1]; out[#out + 1] = u; out[#out + 1] = it
  end
end
return {last, #entries, out}
"""


@dataclass(frozen=True)
class Event:
    """One validated event, ready to store (the API's schema checked every field)."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    rec_id: str = ""


@dataclass(frozen=True)
class StoredEvent:
    """One entry read back from the stream."""

    stream_id: str
    event: Event

    @property
    def stored_at(self) -> float:
        """Seconds since the epoch when Redis stored it (the stream id's milliseconds)."""
        return stored_at(self.stream_id)


def parse_entry(stream_id: str, fields: dict[str, str]) -> StoredEvent:
    """A stream entry as read with decode_responses=True; KeyError/ValueError if malformed."""
    return StoredEvent(
        stream_id,
        Event(
            event_id=fields["event_id"],
            user_id=fields["user_id"],
            item_id=fields["item_id"],
            type=fields["type"],
            ts=float(fields["ts"]),
            rec_id=fields.get("rec_id", ""),
        ),
    )


@dataclass(frozen=True)
class AppendResult:
    """What one batch did: the stream id of each event, None for a repeated event_id."""

    stream_ids: list[str | None]

    @property
    def stored(self) -> int:
        return sum(1 for s in self.stream_ids if s is not None)

    @property
    def duplicates(self) -> int:
        return len(self.stream_ids) - self.stored


class EventLog:
    """Appends batches to the event stream of one Redis (see the module doc).

    Args:
        client: a redis-py client (either decode_responses setting).
        dedup_ttl_s: how long an event_id is remembered.
        maxlen: approximate bound on the stream's length (XADD MAXLEN ~), 0 for none.
    """

    def __init__(self, client: redis.Redis, dedup_ttl_s: int, maxlen: int) -> None:
        self.client = client
        self.dedup_ttl_s = dedup_ttl_s
        self.maxlen = maxlen
        # register_script: EVALSHA, reloading the script after a Redis restart emptied its cache.
        self._append = client.register_script(_APPEND_LUA)

    def append(self, events: Sequence[Event]) -> AppendResult:
        """Store the events not stored before, atomically, in order; returns once Redis replied.

        Raises:
            redis.RedisError: Redis unreachable or refusing (nothing of the batch is known to be
                stored; retrying the same batch stores each event once).
        """
        if not events:
            return AppendResult([])
        rows = json.dumps(
            [
                (e.event_id, e.user_id, e.item_id, e.type, repr(float(e.ts)), e.rec_id)
                for e in events
            ],
            ensure_ascii=False,
        )
        raw = self._append(
            keys=[keys.events_stream()],
            args=[self.dedup_ttl_s, self.maxlen, keys.event_seen(""), rows],
        )
        ids = [r.decode() if isinstance(r, bytes) else str(r) for r in raw]
        return AppendResult([i or None for i in ids])


@dataclass(frozen=True)
class PositiveRead:
    """One read of the stream for positive feedback.

    Attributes:
        last_id: the id of the last entry read (a cursor), "" when none was.
        read: entries read, positive or not.
        hits: (stream id, user_id, item_id) of the positive ones, in reading order.
    """

    last_id: str
    read: int
    hits: list[tuple[str, str, str]]


def stored_at(stream_id: str) -> float:
    """Seconds since the epoch when Redis stored the entry `stream_id`."""
    return int(stream_id.split("-", 1)[0]) / 1000.0


class PositiveReader:
    """Reads (stream id, user, item) of the events of some types, projected in Redis.

    Why a script and not XRANGE: redis-py's pure-Python reply parser takes ~35 ms for 1000
    entries of six fields (13,000 strings; Redis itself spends ~1 ms), which would make a
    process's feed slower than one process's intake. The script returns three strings per
    positive entry and nothing for the others.

    Args:
        client: a redis-py client with decode_responses=True.
        types: the event types wanted.
    """

    def __init__(self, client: redis.Redis, types: Sequence[str]) -> None:
        self.client, self.types = client, list(types)
        self._script = client.register_script(_POSITIVE_LUA)

    def read(self, start: str, end: str, count: int, *, reverse: bool = False) -> PositiveRead:
        """Up to `count` entries from `start` towards `end` (XRANGE syntax: "(<id>" excludes)."""
        last, n, flat = self._script(
            keys=[keys.events_stream()],
            args=["rev" if reverse else "fwd", start, end, count, *self.types],
        )
        hits = [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
        return PositiveRead(str(last), int(n), hits)


def now() -> float:
    """The server time an event without `ts` gets."""
    return time.time()
