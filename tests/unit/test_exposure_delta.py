"""One flushed delta written by its token at most once (service/serving/exposure/delta.py), on
a real Redis: a retried token that Redis already applied adds nothing, in any bucket; a new
token with the same counts adds them again. The expected hashes and item strings are written
out by hand from the counts sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis

from service.serving.exposure.counts import LATENCY_BINS, Counts
from service.serving.exposure.delta import BUCKET_TTL_S, TOKEN_TTL_S, Delta, DeltaWriter

EPOCH = "unkd:exposure:m:0123456789ab"


def two_lists() -> Counts:
    """Two answered lists: items 1, 1, 3 shown (groups 0, 0, 1), one latency in bin 7 and
    one in bin 9, popularity means 4.0 and 0.5."""
    latency = np.zeros(LATENCY_BINS, dtype=np.int64)
    latency[[7, 9]] = 1
    return Counts(
        requests=2,
        slots=3,
        groups=np.array([2, 1]),
        lists=2,
        pop_mean_sum=4.5,
        latency=latency,
        items=np.array([0, 2, 0, 1]),
    )


def hash_of(client: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(key).items()}


def items_of(client: redis.Redis, key: str) -> list[int]:
    return np.frombuffer(client.get(key) or b"", dtype=">u4").tolist()


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_a_retried_token_that_redis_already_applied_adds_nothing(client: redis.Redis) -> None:
    writer = DeltaWriter(client)
    delta = Delta(EPOCH, two_lists())
    once = {"requests": "2", "slots": "3", "lists": "2", "g:0": "2", "g:1": "1"}
    once |= {"lat:7": "1", "lat:9": "1", "pop_mean_sum": "4.5"}

    assert writer.send(delta, 500) is True  # applied now
    assert writer.send(delta, 500) is False  # the same token again: already applied
    assert writer.send(delta, 501) is False  # nor into the bucket current at the retry
    assert hash_of(client, f"{EPOCH}:total") == once
    assert hash_of(client, f"{EPOCH}:b:500") == once
    assert items_of(client, f"{EPOCH}:items") == items_of(client, f"{EPOCH}:bi:500") == [0, 2, 0, 1]
    assert not client.exists(f"{EPOCH}:b:501", f"{EPOCH}:bi:501")
    assert 0 < client.ttl(f"{EPOCH}:t:{delta.token}") <= TOKEN_TTL_S
    assert BUCKET_TTL_S - 5 < client.ttl(f"{EPOCH}:b:500") <= BUCKET_TTL_S


def test_the_token_not_the_payload_decides(client: redis.Redis) -> None:
    """Equal counts under a new token are new answers: added again."""
    writer = DeltaWriter(client)
    assert writer.send(Delta(EPOCH, two_lists()), 500) is True
    assert writer.send(Delta(EPOCH, two_lists()), 500) is True
    total = hash_of(client, f"{EPOCH}:total")
    assert (total["requests"], total["g:0"], total["lat:9"]) == ("4", "4", "2")
    assert float(total["pop_mean_sum"]) == 9.0
    assert items_of(client, f"{EPOCH}:items") == [0, 4, 0, 2]


def test_a_delta_of_counters_only_touches_no_item_string(client: redis.Redis) -> None:
    """Answers that showed nothing: counters, no item string, no popularity sum."""
    latency = np.zeros(LATENCY_BINS, dtype=np.int64)
    latency[3] = 2
    empty = Counts(2, 0, np.zeros(2, dtype=np.int64), 0, 0.0, latency, np.zeros(4, np.int64))
    writer = DeltaWriter(client)
    delta = Delta(EPOCH, empty)
    assert writer.send(delta, 7) is True and writer.send(delta, 7) is False
    assert hash_of(client, f"{EPOCH}:total") == {"requests": "2", "lat:3": "2"}
    assert not client.exists(f"{EPOCH}:items", f"{EPOCH}:bi:7")
