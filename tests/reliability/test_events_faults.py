"""Events under faults: the API SIGKILLed, Redis SIGKILLed and restarted, while a client
streams batches of events to POST /v1/events.

The client behaves as docs/service.md tells one to: every event carries its own event_id,
and a batch without a 202 is sent again (to whichever API answers) until one comes. Then
every acknowledged event must be in the stream exactly once: the 202 came after Redis had
the batch on disk (appendfsync always), and a resent batch is dropped by its event ids.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from service.core import keys
from service.core.config import Settings
from service.stack.redis_server import RedisServer
from tests.reliability.conftest import observe
from tests.support.live_api import LiveAPI
from tests.support.redis_dbs import kill_redis

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

BATCH = 50


@dataclass
class Streamer:
    """A client thread sending numbered batches until stopped, resending any batch without a
    202 (to `urls()[0]`, read afresh on each try) until it gets one."""

    urls: Callable[[], list[str]]
    max_batches: int = 400
    acked: list[str] = field(default_factory=list)
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Streamer:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the client never got its last batch acknowledged"

    def _run(self) -> None:
        deadline = time.monotonic() + 90
        with httpx.Client(timeout=5.0) as client:
            for b in range(self.max_batches):
                if self._stop.is_set():
                    return
                ids = [f"b{b}-e{i}" for i in range(BATCH)]
                body = {
                    "events": [
                        {"user_id": f"u{i}", "item_id": f"i{b}", "type": "click", "event_id": e}
                        for i, e in enumerate(ids)
                    ]
                }
                while time.monotonic() < deadline:
                    try:
                        r = client.post(f"{self.urls()[0]}/v1/events", json=body)
                        if r.status_code == 202:
                            self.acked += ids
                            break
                        self.failures[str(r.status_code)] += 1
                    except httpx.TransportError as exc:
                        self.failures[type(exc).__name__] += 1
                    self.retries += 1
                    time.sleep(0.05)
                else:
                    return


def stream_ids(client: redis.Redis) -> Counter[str]:
    return Counter(f[b"event_id"].decode() for _, f in client.xrange(keys.events_stream()))


def wait_acked(streamer: Streamer, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(streamer.acked) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(streamer.acked) >= n, f"only {len(streamer.acked)} events acknowledged"


def test_api_sigkilled_while_a_client_streams_events(
    make_settings: Callable[..., Settings], live_api: Callable[..., LiveAPI]
) -> None:
    settings = make_settings()
    api = live_api(settings)
    current = [api.url]
    streamer = Streamer(lambda: current).start()
    wait_acked(streamer, 20 * BATCH)
    api.kill()  # mid-stream: a batch may be stored without its 202 ever reaching the client
    killed_at = len(streamer.acked)
    second = live_api(settings)
    current[0] = second.url
    wait_acked(streamer, killed_at + 20 * BATCH)
    streamer.stop()
    client = redis.Redis.from_url(settings.redis_url or "")
    counts = stream_ids(client)
    client.close()
    lost = [e for e in streamer.acked if counts[e] == 0]
    twice = sorted(e for e, c in counts.items() if c > 1)
    observe(
        "events_api_sigkill",
        attack="SIGKILL the API while a client streams batches of 50 events, resending "
        "unacknowledged batches to a restarted API",
        acknowledged=len(streamer.acked),
        stored=sum(counts.values()),
        lost=len(lost),
        stored_twice=len(twice),
        client_retries=streamer.retries,
    )
    assert lost == [] and twice == []
    assert set(counts) == set(streamer.acked)  # nothing stored that the client did not send


def test_redis_restarted_while_a_client_streams_events(
    own_redis: RedisServer,
    make_settings: Callable[..., Settings],
    live_api: Callable[..., LiveAPI],
) -> None:
    settings = make_settings(redis_url=own_redis.url)
    api = live_api(settings)
    streamer = Streamer(lambda: [api.url]).start()
    wait_acked(streamer, 10 * BATCH)
    kill_redis(own_redis)  # SIGKILL: only what the append-only file holds comes back
    acked_at_kill = len(streamer.acked)
    time.sleep(1.0)
    own_redis.start()
    wait_acked(streamer, acked_at_kill + 10 * BATCH)
    streamer.stop()
    client = redis.Redis.from_url(own_redis.url)
    counts = stream_ids(client)
    client.close()
    lost = [e for e in streamer.acked if counts[e] == 0]
    observe(
        "events_redis_restart",
        attack="SIGKILL Redis (appendfsync always) and restart it after 1 s while a client "
        "streams batches of 50 events",
        acknowledged=len(streamer.acked),
        acknowledged_before_kill=acked_at_kill,
        lost=len(lost),
        stored_twice=sum(1 for c in counts.values() if c > 1),
        refusals=dict(streamer.failures),
    )
    assert lost == []
    assert all(c == 1 for c in counts.values())
    assert sum(streamer.failures.values()) > 0  # the outage was seen by the client
