"""Writing rec records: what each answer showed, stored by the exposure flusher in its batch.

The request path only appends (rec_id, users) to the tuple its Tally already queues
(service/serving/exposure/counter.py); the flusher, once a second, hands the drained answers
here, and one Lua call per PER_CALL records writes them: HSET of its lists
(attribution.rec_lists) and an EXPIRE of REC_TTL_S. A write is idempotent (the same fields,
the same values), so records a failed flush could not write are kept (up to MAX_CARRY
records, the oldest dropped first) and written again by the next one.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from service.core import keys

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

# Events citing an answer older than this are unattributed. A record costs Redis ~0.7 KB at
# k = 20 (measured), so it holds rate x TTL of them: an hour at 100 answers/s is 250 MB, a day
# would be 6 GB (and 190 GB at the 3,000/s one process serves). Clicks come within a visit.
REC_TTL_S = 3600
MAX_CARRY = 200_000  # records kept through a Redis outage (~150 B each)
PER_CALL = 2000  # records per script call: Redis runs a call of them in a few ms

# What an answer hands its Tally besides the items: its rec_id and the user of each list.
Rec = tuple[str, tuple[str | None, ...]]

# ARGV[1]: the records packed by pack_records, ARGV[2]: their TTL, ARGV[3]: the key prefix
# (keys.rec_record("")). One argument for all: redis-py packs each argument of a command in
# Python (~4 us), which for HSET + EXPIRE per answer cost the flusher more than the answers.
WRITE_RECS_LUA = """
local blob, pos, count = ARGV[1], 1, 0
while pos <= #blob do
  local rec_id, n
  rec_id, n, pos = struct.unpack('<I4c0I4', blob, pos)
  local key = ARGV[3] .. rec_id
  for _ = 1, n do
    local field, value
    field, value, pos = struct.unpack('<I4c0I4c0', blob, pos)
    redis.call('HSET', key, field, value)
  end
  redis.call('EXPIRE', key, ARGV[2])
  count = count + 1
end
return count
"""


def _sized(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<I", len(raw)) + raw


def pack_records(records: Iterable[tuple[str, dict[str, str]]]) -> bytes:
    """Records as one blob: per record its rec_id and number of lists, then per list its
    field and value, each string prefixed by its u32 little-endian length."""
    parts = []
    for rec_id, fields in records:
        parts.append(_sized(rec_id) + struct.pack("<I", len(fields)))
        parts += [_sized(name) + _sized(value) for name, value in fields.items()]
    return b"".join(parts)


class RecWriter:
    """Writes the rec records of the answers a flush drained (module doc)."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self.redis = redis_client
        self._script = redis_client.register_script(WRITE_RECS_LUA)
        self._carry: deque[tuple[str, dict[str, str]]] = deque()
        self._down = False
        self.written = 0  # lists written (statistics, read by tests)

    def write(self, records: Iterable[tuple[str, dict[str, str]]]) -> int:
        """Write `records` ((rec_id, fields of attribution.rec_lists)) and those a failed write
        kept; returns the lists written (those of a call Redis failed are kept)."""
        self._carry.extend(records)
        written = 0
        while self._carry:
            work = [self._carry[i] for i in range(min(PER_CALL, len(self._carry)))]
            args: list[bytes | int | str] = [pack_records(work), REC_TTL_S, keys.rec_record("")]
            try:
                self._script(keys=[], args=args)
            except Exception as exc:  # Redis down or slow: keep them for the next flush
                for _ in range(max(0, len(self._carry) - MAX_CARRY)):
                    self._carry.popleft()
                if not self._down:
                    logger.warning("outcomes: cannot write rec records (%s); keeping them", exc)
                self._down = True
                break
            for _ in range(len(work)):
                self._carry.popleft()
            written += sum(len(fields) for _, fields in work)
            self._down = False
        self.written += written
        return written
