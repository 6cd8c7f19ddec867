"""The events stream as versions read it: stream ids, positive events in chunks, segments.

A segment is the positive events of one range (events_from, events_to] of the events
stream, stored once in the artifact store (`segment_key`) as one `segment.npz` (stream ids,
user ids, item ids, the events' ts, and the range). service/core/versions.py writes one per
version and reads its lineage's back; see its module doc for why this makes compaction
crash-safe, and for the trimming rule `check_not_trimmed` enforces.

Reading never holds the stream in memory: XRANGE in chunks of `CHUNK` entries, projected in
Redis by a script that returns only the positive entries' fields, or only their count (the
projection of service/core/events.py's PositiveReader, plus the `ts` field and a count-only
mode: counting pending events transfers three integers per chunk).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from service.core import keys
from service.core.artifacts import ArtifactStore
from service.core.records import ConflictError

if TYPE_CHECKING:
    import numpy as np

ZERO = "0-0"  # a cursor before every stream id
CHUNK = 1000  # stream entries per XRANGE
SEGMENT_FILE = "segment.npz"

# KEYS[1]: the stream. ARGV[1]: start ("(<id>" exclusive); ARGV[2]: end; ARGV[3]: COUNT;
# ARGV[4]: "rows" or "count"; ARGV[5..]: the positive types.
# Returns {id of the last entry read ("" if none), entries read, positives among them,
# {id, user_id, item_id, ts, ...} of the positives when ARGV[4] is "rows"}.
_READ_LUA = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local wanted = {}
for i = 5, #ARGV do wanted[ARGV[i]] = true end
local rows = ARGV[4] == 'rows'
local out = {}
local last = ''
local hits = 0
for _, e in ipairs(entries) do
  last = e[1]
  local f = e[2]
  local t, u, it, ts
  for j = 1, #f, 2 do
    local k = f[j]
    if k == 'type' then t = f[j + 1] elseif k == 'user_id' then u = f[j + 1]
    elseif k == 'item_id' then it = f[j + 1] elseif k == 'ts' then ts = f[j + 1] end
  end
  if t and wanted[t] and u and it then
    hits = hits + 1
    if rows then
      out[#out + 1] = e[1]; out[#out + 1] = u; out[#out + 1] = it; out[#out + 1] = ts or '0'
    end
  end
end
return {last, #entries, hits, out}
"""


class EventsTrimmedError(ConflictError):
    """The stream no longer holds every event after the parent's cursor (MAXLEN trimming)."""


@dataclass(frozen=True)
class Segment:
    """The positive events of (events_from, events_to], in stream order.

    Attributes:
        stream_ids, user_ids, item_ids: (n,) str; ts: (n,) float64 (the events' own ts).
    """

    events_from: str
    events_to: str
    stream_ids: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return len(self.stream_ids)


# -- stream ids ------------------------------------------------------------------------------


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream id "<ms>-<seq>" as a pair that compares like Redis does."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def stream_last_id(client: redis.Redis) -> str:
    """The id of the events stream's last entry, ZERO when it has none (a root's cursor)."""
    last = client.xrevrange(keys.events_stream(), "+", "-", count=1)
    return _text(last[0][0]) if last else ZERO


def segment_key(root_id: str, events_from: str, events_to: str) -> str:
    """The artifact-store key of a lineage's segment of (events_from, events_to]."""
    return f"segments/{root_id}/{events_from}_{events_to}"


# -- reading the stream ----------------------------------------------------------------------


class StreamReader:
    """Positive events of the events stream in chunks, projected in Redis (_READ_LUA)."""

    def __init__(self, client: redis.Redis, types: Sequence[str]) -> None:
        self.client, self.types = client, [str(t) for t in types]
        self._script = client.register_script(_READ_LUA)

    def _chunks(self, after: str, until: str, rows: bool) -> Iterator[tuple[int, list[str]]]:
        start = f"({after}"
        while True:
            last, n, hits, flat = self._script(
                keys=[keys.events_stream()],
                args=[start, until, CHUNK, "rows" if rows else "count", *self.types],
            )
            if int(n) == 0:
                return
            yield int(hits), [_text(x) for x in flat]
            if int(n) < CHUNK:
                return
            start = f"({_text(last)}"

    def count(self, after: str, until: str = "+") -> int:
        """Positive events with ids in (after, until]."""
        return sum(hits for hits, _ in self._chunks(after, until, rows=False))

    def segment(self, after: str, until: str) -> Segment:
        """The positive events with ids in (after, until], in stream order."""
        import numpy as np

        flat: list[str] = []
        for _, part in self._chunks(after, until, rows=True):
            flat += part
        return Segment(
            events_from=after,
            events_to=until,
            stream_ids=np.asarray(flat[0::4], dtype=str),
            user_ids=np.asarray(flat[1::4], dtype=str),
            item_ids=np.asarray(flat[2::4], dtype=str),
            ts=np.asarray([float(t) for t in flat[3::4]], dtype=np.float64),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_not_trimmed(client: redis.Redis, dataset_id: str, cursor: str) -> None:
    """Raise EventsTrimmedError when events after `cursor` may have been trimmed away."""
    try:
        info = client.xinfo_stream(keys.events_stream())
    except redis.ResponseError:  # no stream: nothing stored, nothing trimmed
        return
    first = info.get("first-entry")
    first_id = _text(first[0]) if first else None
    deleted = info.get("max-deleted-entry-id")  # Redis >= 7
    lost = False
    if deleted is not None and stream_id_key(_text(deleted)) > stream_id_key(cursor):
        lost = True
    if first_id is not None and cursor != ZERO:
        lost = lost or stream_id_key(first_id) > stream_id_key(cursor)
    if lost:
        raise EventsTrimmedError(
            "dataset_id",
            dataset_id,
            f"the events stream no longer holds every event after this lineage's cursor "
            f"{cursor} (its first entry is {first_id}; trimmed by MAXLEN "
            f"UNKD_EVENTS_STREAM_MAXLEN): a version would silently miss events, so none is "
            "built; register a new dataset, and build versions more often than the stream wraps",
        )


def write_segment(store: ArtifactStore, key: str, segment: Segment, scratch: Path) -> None:
    """Store the segment once under `key`; a key already written (a rerun of the same range
    after a kill) holds the same events and is kept."""
    import numpy as np

    if store.exists(key):
        return
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".segment-", dir=scratch))
    try:
        np.savez(
            tmp / SEGMENT_FILE,
            stream_ids=segment.stream_ids,
            user_ids=segment.user_ids,
            item_ids=segment.item_ids,
            ts=segment.ts,
            bounds=np.asarray([segment.events_from, segment.events_to], dtype=str),
        )
        store.put(key, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_segment(store: ArtifactStore, key: str) -> Segment:
    import numpy as np

    with np.load(store.resolve(store.location(key)) / SEGMENT_FILE, allow_pickle=False) as z:
        return Segment(
            events_from=str(z["bounds"][0]),
            events_to=str(z["bounds"][1]),
            stream_ids=z["stream_ids"],
            user_ids=z["user_ids"],
            item_ids=z["item_ids"],
            ts=z["ts"],
        )
