"""Redis killed (SIGKILL, no chance to save) and restarted, then frozen (SIGSTOP), while
the API serves: recommendations never fail, the registry endpoints answer 503 quickly
with a clear message and recover by themselves, and every record written before the
outage is still there afterwards (append-only file, fsynced before each reply).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest
import redis

from service.core import keys
from service.core.config import Settings
from service.core.registry import JobRecord, Registry
from service.stack.redis_server import RedisServer
from tests.reliability.conftest import observe, publish_direct, seed_dataset, seed_model, wait_until
from tests.reliability.load import Load
from tests.support.live_api import LiveAPI
from tests.support.redis_dbs import kill_redis

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

OUTAGE_S = 3.0
AOF_FSYNC_S = 1.2  # margin: the stack's appendfsync always has a write on disk at its reply


def snapshot(client: redis.Redis) -> dict[str, object]:
    """Every unkd:* record with its value, whatever its type (strings, sorted sets, hashes);
    what live traffic writes is not a record: exposure counters (unkd:exposure:*, binary),
    answers' rec records and outcome counters, and the events stream (its consumer group)."""
    read = {
        "string": client.get,
        "hash": client.hgetall,
        "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
    }
    return {
        k: read[client.type(k)](k)
        for k in client.keys("unkd:*")
        if not k.startswith((f"{keys.EXPOSURE}:", f"{keys.OUTCOMES}:", f"{keys.REC}:"))
        and k != keys.events_stream()
    }


def _registry_answers(client: httpx.Client, job_id: str) -> list[tuple[str, int, str, float]]:
    """(request, status, detail, seconds) of the endpoints that need Redis."""
    calls = [
        ("GET /v1/jobs/{id}", lambda: client.get(f"/v1/jobs/{job_id}")),
        ("GET /v1/jobs", lambda: client.get("/v1/jobs")),
        ("GET /v1/models", lambda: client.get("/v1/models")),
        ("GET /v1/datasets", lambda: client.get("/v1/datasets")),
        (
            "POST /v1/jobs",
            lambda: client.post(
                "/v1/jobs", json={"kind": "teacher", "model": "mf", "dataset_id": "ds-rel0"}
            ),
        ),
    ]
    out = []
    for name, call in calls:
        t0 = time.monotonic()
        r = call()
        out.append((name, r.status_code, r.json().get("detail", ""), time.monotonic() - t0))
    return out


def test_redis_killed_and_frozen_while_serving(
    own_redis: RedisServer,
    make_settings: Callable[..., Settings],
    live_api: Callable[..., LiveAPI],
) -> None:
    settings = make_settings(redis_url=own_redis.url)
    registry = Registry.from_url(own_redis.url)
    dataset = seed_dataset(settings, registry)
    seed_model(settings, registry, dataset, "student-a")
    publish_direct(settings, registry, dataset, "student-a")
    registry.create_job(
        JobRecord(id="job-before-outage", kind="teacher", params={"dataset_id": "ds-rel0"})
    )
    before = snapshot(registry.redis)
    registry.close()

    api = live_api(settings)
    client = httpx.Client(base_url=api.url, timeout=30)
    wait_until(lambda: client.get("/readyz").status_code == 200, 20, "the API to be ready")
    users = [str(u) for u in dataset.user_ids[:50]]
    time.sleep(AOF_FSYNC_S)

    with Load(
        api.url,
        lambda i: f"/v1/recommendations/{users[i % len(users)]}?k=5",
        threads=3,
        max_seconds=40,
    ) as load:
        time.sleep(0.5)
        # -- kill: the process dies without a SHUTDOWN save -----------------------------------
        t_down = time.monotonic()
        kill_redis(own_redis)
        down = _registry_answers(client, "job-before-outage")
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
        own_redis.start()
        t_up = time.monotonic()
        recovered = wait_until(
            lambda: client.get("/v1/jobs/job-before-outage").status_code == 200,
            15,
            "the job endpoint to recover by itself",
        )
        t_recovered = time.monotonic()
        # -- freeze: the process is alive but answers nothing ---------------------------------
        assert own_redis.pid is not None
        os.kill(own_redis.pid, signal.SIGSTOP)
        t_frozen = time.monotonic()
        frozen = _registry_answers(client, "job-before-outage")[:1]
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_frozen)))
        os.kill(own_redis.pid, signal.SIGCONT)
        t_thawed = time.monotonic()
        wait_until(
            lambda: client.get("/v1/jobs/job-before-outage").status_code == 200,
            15,
            "the job endpoint to recover after the freeze",
        )
        time.sleep(0.5)

    for name, status, detail, _ in down + frozen:
        assert status == 503, (name, status, detail)
        assert "Redis" in detail and "retry later" in detail, (name, detail)
    slowest = max(seconds for *_, seconds in down + frozen)
    assert slowest < settings.redis_timeout_s * 4 + 2, (down, frozen)  # bounded, never hangs
    assert ready.status_code == 503 and ready.json() == {
        "status": "not ready",
        "redis": False,
        "index_loaded": True,
        "model_id": "student-a",
    }
    assert "unkd_registry_up 0.0" in metrics
    assert recovered

    assert load.failed == [], load.failed[:5]
    served_down = load.served_between(t_down, t_up)
    served_frozen = load.served_between(t_frozen, t_thawed)
    assert served_down > 0 and served_frozen > 0, (served_down, served_frozen)

    after_registry = Registry.from_url(own_redis.url)
    after = snapshot(after_registry.redis)
    after_registry.close()
    lost = sorted(k for k in before if after.get(k) != before[k])
    assert lost == [], f"records lost or changed across the Redis kill: {lost}"
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/models/student-a").json()["active"] is True
    client.close()
    observe(
        "redis_kill_restart_freeze",
        fault=f"Redis SIGKILLed for {OUTAGE_S:.0f}s, restarted, then SIGSTOPped for {OUTAGE_S:.0f}s",
        requests_served=load.served,
        requests_failed=len(load.failed),
        served_while_killed=served_down,
        served_while_frozen=served_frozen,
        registry_answers_while_down=sorted({s for _, s, _, _ in down + frozen}),
        slowest_503_s=round(slowest, 2),
        seconds_to_recover=round(t_recovered - t_up, 2),
        records_before=len(before),
        records_lost=len(lost),
        jobs_lost=0,
    )
