"""Writing rec records: what each answer showed, stored by the exposure flusher in its batch.

The request path only appends (rec_id, users) to the tuple its Tally already queues
(service/serving/exposure/counter.py); the flusher, once a second, hands the drained answers
here, and one pipeline writes every record: HSET of its lists (attribution.rec_lists) and an
EXPIRE of REC_TTL_S. A write is idempotent (the same fields, the same values), so records a
failed flush could not write are kept (up to MAX_CARRY lists, the oldest dropped first) and
written again by the next one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from service.core import keys

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

REC_TTL_S = 24 * 3600  # events citing an answer older than a day are unattributed
MAX_CARRY = 200_000  # lists kept through a Redis outage (~100 B each)

# What an answer hands its Tally besides the items: its rec_id and the user of each list.
Rec = tuple[str, tuple[str | None, ...]]


class RecWriter:
    """Writes the rec records of the answers a flush drained (module doc)."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self.redis = redis_client
        self._carry: deque[tuple[str, dict[str, str]]] = deque()
        self.written = 0  # lists written (statistics, read by tests)

    def write(self, records: Iterable[tuple[str, dict[str, str]]]) -> int:
        """Write `records` ((rec_id, fields of attribution.rec_lists)) and those a failed write
        kept; returns the lists written, 0 when Redis failed (they are kept)."""
        self._carry.extend(records)
        if not self._carry:
            return 0
        work = list(self._carry)
        pipe = self.redis.pipeline(transaction=False)
        for rec_id, fields in work:
            key = keys.rec_record(rec_id)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, REC_TTL_S)
        try:
            pipe.execute()
        except Exception as exc:  # Redis down or slow: keep them for the next flush
            dropped = len(self._carry) - MAX_CARRY
            for _ in range(max(0, dropped)):
                self._carry.popleft()
            logger.warning("outcomes: cannot write %d rec records (%s); kept", len(work), exc)
            return 0
        for _ in range(len(work)):
            self._carry.popleft()
        n = sum(len(fields) for _, fields in work)
        self.written += n
        return n
