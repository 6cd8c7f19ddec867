"""The exposure flush across Redis faults: what is tallied while Redis is down is written
once it is back, and a write whose reply never came (Redis frozen, the connection cut after
the command ran) is not counted twice (service/serving/exposure: counter.py, delta.py).

A real redis-server of the test's own (tests/support: own_redis) is killed, frozen, or
reached through a proxy that cuts connections after Redis answered. The expected counts are
tallied here from the answers handed to the counter, with the items' groups and training
popularity read from the dataset, and compared with what the public reader (ExposureReader)
and the raw hashes hold afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import redis
from bundle_fixtures import make_bundle
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.serving.bundle import ServingBundle, load_bundle
from service.serving.exposure.counter import ExposureCounter
from service.serving.exposure.reader import ExposureReader
from service.serving.served_model import ServedModel
from service.stack.redis_server import RedisServer
from tests.support.redis_dbs import kill_redis, resume_redis
from training.dataset import Dataset

N_ITEMS = 60


@dataclass
class Expected:
    """Counts of the answers one model was handed, tallied by hand."""

    groups_of: np.ndarray
    pop: np.ndarray
    lists: int = 0
    answers: int = 0
    items: Counter[int] = field(default_factory=Counter)
    arp_sum: float = 0.0
    non_empty: int = 0

    def add(self, answer: np.ndarray) -> None:
        self.answers += 1
        for row in np.atleast_2d(answer).tolist():
            self.lists += 1
            shown = [i for i in row if i >= 0]
            self.items.update(shown)
            if shown:
                self.non_empty += 1
                self.arp_sum += sum(int(self.pop[i]) for i in shown) / len(shown)

    @property
    def slots(self) -> int:
        return sum(self.items.values())

    def group_slots(self) -> list[int]:
        out = [0, 0, 0, 0]
        for item, n in self.items.items():
            out[int(self.groups_of[item])] += n
        return out


def make_answers(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """n answers: single lists of k=5 and batches of 3 lists, some slots empty (-1)."""
    out = []
    for j in range(n):
        shape = (5,) if j % 2 else (3, 4)
        a = rng.integers(0, N_ITEMS, size=shape)
        a[rng.random(shape) < 0.2] = -1
        out.append(a.astype(np.int64))
    return out


@pytest.fixture()
def bundles(tmp_path: Path) -> tuple[ServingBundle, ServingBundle, Dataset]:
    path_x, ds, _ = make_bundle(tmp_path, model_id="x", n_users=20, n_items=N_ITEMS)
    path_y, _, _ = make_bundle(tmp_path, model_id="y", n_users=20, n_items=N_ITEMS)
    return load_bundle(path_x), load_bundle(path_y), ds


def check(
    client: redis.Redis, bundle: ServingBundle, tally_key_model: ServedModel, want: Expected
) -> None:
    """The since-epoch figures the reader gives equal the hand tally."""
    reader = ExposureReader(client, lambda model_id: None)
    (m,) = reader.report([tally_key_model], counting=True).models
    since = m.since_publish
    assert (since.requests, since.slots) == (want.lists, want.slots)
    assert since.distinct_items == len(want.items)
    shares = [g.share for g in since.groups]
    assert shares == pytest.approx([n / want.slots for n in want.group_slots()])
    assert since.arp == pytest.approx(want.arp_sum / want.non_empty)
    raw = client.get(f"{tally_key_model.tally.key}:items") or b""
    counts = np.frombuffer(raw, dtype=">u4")
    got = {i: int(n) for i, n in enumerate(counts.tolist()) if n}
    assert got == dict(want.items)
    latency = client.hgetall(f"{tally_key_model.tally.key}:total")
    n_latency = sum(int(v) for k, v in latency.items() if k.startswith(b"lat:"))
    assert n_latency == want.answers  # one latency per HTTP answer, none twice


def bucket_requests(client: redis.Redis, key: str, bucket: int) -> int:
    return int(client.hget(f"{key}:b:{bucket}", "requests") or 0)


def aof_written(client: redis.Redis) -> bool:
    """Whether every write so far is in the append-only file (written, maybe not fsynced): with
    appendfsync everysec Redis may hold writes in its buffer while a background fsync runs."""
    return int(client.info("persistence")["aof_buffer_length"]) == 0


def total_requests(client: redis.Redis, key: str) -> int:
    return int(client.hget(f"{key}:total", "requests") or 0)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def few_retries_client(url: str, timeout_s: float) -> redis.Redis:
    """The API's exposure client (timeouts, redis-py's own resend after a lost connection),
    with one resend instead of ten so that a failing flush ends in seconds."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
    )


def test_counts_tallied_while_redis_is_down_are_written_once_when_it_is_back(
    own_redis: RedisServer, bundles
) -> None:
    bx, by, ds = bundles
    groups, pop = ds.groups(4), np.bincount(ds.train[:, 1], minlength=ds.n_items)
    client = redis.Redis.from_url(own_redis.url, socket_timeout=2, socket_connect_timeout=2)
    now = [1_000.0]  # bucket 100
    counter = ExposureCounter(client, flush_s=60, clock=lambda: now[0])
    tx, ty = counter.tally(bx, "epoch-x"), counter.tally(by, "epoch-y")
    want_x, want_y = Expected(groups, pop), Expected(groups, pop)
    rng = np.random.default_rng(0)

    before = make_answers(rng, 6)  # flushed while Redis is up
    for a in before:
        tx.add(a, 0.001)
        want_x.add(a)
    assert counter.flush() == want_x.lists

    wait_for(lambda: aof_written(client))  # SIGKILL keeps only what reached the append-only file
    kill_redis(own_redis)
    during_x, during_y, later_x = make_answers(rng, 7), make_answers(rng, 5), make_answers(rng, 4)
    for a in during_x:
        tx.add(a, 0.002)
        want_x.add(a)
    for a in during_y:
        ty.add(a, 0.003)
        want_y.add(a)
    now[0] = 1_015.0
    assert counter.flush() == 0  # Redis down: nothing written, everything kept
    for a in later_x:  # tallied after a failed flush: joins the carried counts
        tx.add(a, 0.004)
        want_x.add(a)
    now[0] = 1_025.0
    assert counter.flush() == 0  # down again: the carry is kept, not added twice

    own_redis.start()
    now[0] = 1_035.0  # bucket 103: the carried counts land in the bucket current when written
    carried = sum(np.atleast_2d(a).shape[0] for a in during_x + during_y + later_x)
    assert counter.flush() == carried
    assert counter.flush() == 0  # written once: a further flush has nothing to add
    assert counter.flushed_answers == want_x.lists + want_y.lists

    check(client, bx, ServedModel(bx, "active", None, tx), want_x)
    check(client, by, ServedModel(by, "arm", 0.5, ty), want_y)
    first = sum(np.atleast_2d(a).shape[0] for a in before)
    assert bucket_requests(client, tx.key, 100) == first
    assert bucket_requests(client, tx.key, 101) == bucket_requests(client, tx.key, 102) == 0
    assert bucket_requests(client, tx.key, 103) == want_x.lists - first
    assert bucket_requests(client, ty.key, 103) == want_y.lists
    client.close()


def test_a_flush_that_times_out_on_a_frozen_redis_is_not_counted_twice(
    own_redis: RedisServer, bundles
) -> None:
    """The send reaches a frozen server's socket buffer; the client times out and gives up;
    the server resumes and runs it. The next flush sends the same delta again: Redis answers
    that it has it, and nothing is added. Answers with no item make a flush of counters only."""
    bx, _, ds = bundles
    groups, pop = ds.groups(4), np.bincount(ds.train[:, 1], minlength=ds.n_items)
    client = few_retries_client(own_redis.url, 1.0)
    direct = redis.Redis.from_url(own_redis.url)
    counter = ExposureCounter(client, flush_s=60)
    tx = counter.tally(bx, "epoch-x")
    want = Expected(groups, pop)
    warm = np.array([1, 2, -1, 3], dtype=np.int64)  # loads the script: the frozen send runs
    tx.add(warm, 0.001)
    want.add(warm)
    assert counter.flush() == 1
    assert own_redis.pid is not None
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            empty = np.full(4, -1, dtype=np.int64)
            tx.add(empty, 0.001)
            want.add(empty)
        assert counter.flush() == 0  # timed out: in doubt, kept for the next flush
    finally:
        resume_redis(own_redis)
    wait_for(lambda: total_requests(direct, tx.key) == want.lists)  # it ran after all
    assert counter.flush() == 3  # settled: Redis had it
    assert counter.flush() == 0
    assert counter.applied_before_retry == 1
    total = direct.hgetall(f"{tx.key}:total")
    assert int(total[b"requests"]) == want.lists  # was 1 + 6 before tokens: each answer twice
    check(direct, bx, ServedModel(bx, "active", None, tx), want)
    client.close()
    direct.close()


class ReplyCutter:
    """A TCP proxy in front of Redis. It forwards every request; while `cut` is set, it closes
    the connection when the reply to a script (EVALSHA) comes back instead of forwarding it:
    the script ran, and the client sees only a lost connection. Other replies (AUTH when
    redis-py reconnects) pass.

    Args:
        port: the Redis server's port on 127.0.0.1.
    """

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.cut = threading.Event()
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, redis_url: str) -> str:
        return redis_url.replace(f":{self.upstream_port}/", f":{self.port}/")

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            link = _Link(downstream, upstream)
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._replies, args=(link,), daemon=True).start()

    def _requests(self, link: _Link) -> None:
        try:
            while data := link.downstream.recv(65536):
                link.script = b"evalsha" in data.lower()
                link.upstream.sendall(data)
        except OSError:
            pass
        link.close()

    def _replies(self, link: _Link) -> None:
        try:
            while data := link.upstream.recv(65536):
                if link.script and self.cut.is_set():
                    self.cuts += 1
                    break
                link.downstream.sendall(data)
        except OSError:
            pass
        link.close()


@dataclass
class _Link:
    """One client connection through the proxy and its connection to Redis."""

    downstream: socket.socket
    upstream: socket.socket
    script: bool = False  # the last request was a script

    def close(self) -> None:
        for sock in (self.downstream, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.fixture()
def reply_cutter(own_redis: RedisServer) -> Iterator[ReplyCutter]:
    assert own_redis.port is not None
    proxy = ReplyCutter(own_redis.port)
    yield proxy
    proxy.close()


def test_a_write_whose_reply_is_lost_is_sent_again_and_counted_once(
    own_redis: RedisServer, reply_cutter: ReplyCutter, bundles
) -> None:
    """The connection is cut after Redis ran the flush's script and before its reply reached
    the client. The delta stays in doubt and is sent again, unchanged, until a reply comes;
    answers tallied meanwhile are held back and written once it is settled, under a token of
    their own, into the bucket current then."""
    bx, _, ds = bundles
    groups, pop = ds.groups(4), np.bincount(ds.train[:, 1], minlength=ds.n_items)
    client = few_retries_client(reply_cutter.url(own_redis.url), 2.0)
    direct = redis.Redis.from_url(own_redis.url)
    now = [2_000.0]  # bucket 200
    counter = ExposureCounter(client, flush_s=60, clock=lambda: now[0])
    tx = counter.tally(bx, "epoch-x")
    want_first, want = Expected(groups, pop), Expected(groups, pop)
    rng = np.random.default_rng(1)
    warm, first, later = make_answers(rng, 1), make_answers(rng, 5), make_answers(rng, 4)
    tx.add(warm[0], 0.001)  # loads the script: the sends below run it
    want_first.add(warm[0])
    want.add(warm[0])
    assert counter.flush() == want.lists
    for a in first:
        tx.add(a, 0.002)
        want_first.add(a)
        want.add(a)

    reply_cutter.cut.set()
    assert counter.flush() == 0  # no reply: in doubt
    assert reply_cutter.cuts >= 2  # the first send and redis-py's own resend both ran
    assert total_requests(direct, tx.key) == want_first.lists  # applied, and only once
    for a in later:
        tx.add(a, 0.004)
        want.add(a)
    now[0] = 2_010.0
    assert counter.flush() == 0  # the retry's reply is cut too
    assert total_requests(direct, tx.key) == want_first.lists  # the later answers wait

    reply_cutter.cut.clear()
    now[0] = 2_020.0  # bucket 202
    # the first settled (Redis had it) and the later written: all but the warm-up
    assert counter.flush() == want.lists - np.atleast_2d(warm[0]).shape[0]
    assert counter.flush() == 0
    assert counter.applied_before_retry == 1
    check(direct, bx, ServedModel(bx, "active", None, tx), want)
    assert bucket_requests(direct, tx.key, 200) == want_first.lists  # where it was applied
    assert bucket_requests(direct, tx.key, 201) == 0
    assert bucket_requests(direct, tx.key, 202) == want.lists - want_first.lists
    client.close()
    direct.close()
