"""Writing one flush's counts of one epoch to Redis at most once, however often it is sent.

A write that times out or loses its connection may or may not have been applied: the request
can sit in a frozen server's socket buffer and run when the server resumes, after the client
gave up. Sending the counts again would then count them twice, dropping them would lose them
when the first send never arrived. So each delta carries a random token and is written by one
Lua script (atomic in Redis): `SET <epoch>:t:<token> 1 NX EX TOKEN_TTL_S`, and only when that
succeeds, the increments. A delta whose outcome is unknown is sent again, unchanged, until a
reply comes: 1 (applied now) or 0 (an earlier send was applied); either settles it.

The bucket is not part of what a token guards: each send names the bucket current when it is
sent, and the send that Redis applies decides where the counts land (so counts kept through an
outage land in the bucket current when Redis is back, as before tokens).

The guarantee holds while a delta is settled within TOKEN_TTL_S of reaching Redis; the token
keys cost about 150 bytes each, one per model, process and flush (1 s): ~0.5 MB an hour.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.core import keys
from service.serving.exposure.counts import WINDOW_S, Counts

if TYPE_CHECKING:
    import redis

BUCKET_TTL_S = WINDOW_S + 60  # a bucket outlives the window by a minute, then Redis drops it
SINCE_TTL_S = 30 * 24 * 3600  # since-epoch counts of a model no longer served expire after this
TOKEN_TTL_S = 3600  # how long an applied delta is remembered: a retry within it adds nothing

# KEYS: the token, the bucket's hash, the since-epoch hash, the bucket's item string, the
# since-epoch item string. ARGV: the token's TTL, the hashes' TTLs (bucket, since), the
# popularity sum (HINCRBYFLOAT), the (item, count) pairs as '<I4I4', then field, value, ... of
# the integer counters. Item counts go into dense u32 strings by BITFIELD, many INCRBYs a
# call; unpack() is bounded by Lua's C stack (8,000 values), hence batches of 1,000 pairs.
APPLY_DELTA_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for h = 2, 3 do
  for i = 6, #ARGV - 1, 2 do redis.call('HINCRBY', KEYS[h], ARGV[i], ARGV[i + 1]) end
  if tonumber(ARGV[4]) ~= 0 then redis.call('HINCRBYFLOAT', KEYS[h], 'pop_mean_sum', ARGV[4]) end
  redis.call('EXPIRE', KEYS[h], ARGV[h])
end
local blob = ARGV[5]
local n = #blob / 8
if n == 0 then return 1 end
for k = 4, 5 do
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
  redis.call('EXPIRE', KEYS[k], ARGV[k - 2])
end
return 1
"""


@dataclass
class Delta:
    """The counts of one epoch written under one token; never changed once sent.

    Attributes:
        epoch: the epoch's key prefix (keys.exposure_epoch, a Tally's key).
        counts: the counts to add.
        token: random, unique per delta (80 bits).
        sends: how often it was sent without a reply.
    """

    epoch: str
    counts: Counts
    token: str = field(default_factory=lambda: secrets.token_hex(10))
    sends: int = 0


class DeltaWriter:
    """Sends deltas by the one script (module doc).

    Args:
        redis_client: a client *without* decode_responses (item counts are binary).
        token_ttl_s: how long Redis remembers an applied token.
    """

    def __init__(self, redis_client: redis.Redis, token_ttl_s: int = TOKEN_TTL_S) -> None:
        self.redis = redis_client
        self.token_ttl_s = token_ttl_s
        self._script = redis_client.register_script(APPLY_DELTA_LUA)

    def send(self, delta: Delta, bucket: int) -> bool:
        """Send `delta` into `bucket`; True when Redis applied it now, False when an earlier
        send had. Raises what the client raises (timeout, connection lost): then it may or
        may not have been applied, and the same delta must be sent again."""
        epoch, counts = delta.epoch, delta.counts
        script_keys = [
            keys.exposure_token(epoch, delta.token),
            keys.exposure_bucket(epoch, bucket),
            keys.exposure_total(epoch),
            keys.exposure_bucket_items(epoch, bucket),
            keys.exposure_items(epoch),
        ]
        args: list[str | int | float | bytes] = [
            self.token_ttl_s,
            BUCKET_TTL_S,
            SINCE_TTL_S,
            counts.pop_mean_sum,
            counts.item_pairs(),
        ]
        for name, value in counts.fields().items():
            args += [name, value]
        delta.sends += 1
        return bool(self._script(keys=script_keys, args=args))
