"""API restart: a fresh API process (uvicorn, as `unkd api` runs it) loads the active model
before it reports ready, and never says ready without one; restarted while Redis is down,
it comes up not ready (503) and loads the model by itself once Redis is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from service.core.config import Settings
from service.core.registry import Registry
from service.stack.redis_server import RedisServer
from tests.reliability.conftest import observe, publish_direct, seed_dataset, seed_model, wait_until
from tests.support.live_api import LiveAPI
from tests.support.redis_dbs import kill_redis

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

START_TIMEOUT_S = 40.0


def readiness_until_ready(api: LiveAPI) -> list[tuple[int, dict]]:
    """Poll /readyz of a just-spawned API; (status, body) of every answer
    (0 = connection refused) until the first 200."""
    seen: list[tuple[int, dict]] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=api.url, timeout=5) as client:
        while time.monotonic() < deadline:
            assert api.alive(), api.tail(2000)
            try:
                r = client.get("/readyz")
                seen.append((r.status_code, r.json()))
                if r.status_code == 200:
                    return seen
            except httpx.TransportError:
                seen.append((0, {}))
            time.sleep(0.02)
    pytest.fail(f"API not ready after {START_TIMEOUT_S}s: {seen[-3:]}\n{api.tail(2000)}")


def test_api_restart_reports_ready_only_with_the_model_loaded(
    own_redis: RedisServer,
    make_settings: Callable[..., Settings],
    live_api: Callable[..., LiveAPI],
) -> None:
    settings = make_settings(redis_url=own_redis.url, redis_timeout_s=1.0)
    registry = Registry.from_url(own_redis.url)
    dataset = seed_dataset(settings, registry)
    seed_model(settings, registry, dataset, "student-restart")
    publish_direct(settings, registry, dataset, "student-restart")
    registry.close()
    user = str(dataset.user_ids[0])

    # 1. A normal (re)start: refused or 503 until the model is loaded, then 200 with it.
    first = live_api(settings, ready=None)  # spawned: every answer from the start is watched
    seen = readiness_until_ready(first)
    assert seen[-1] == (
        200,
        {"status": "ready", "redis": True, "index_loaded": True, "model_id": "student-restart"},
    )
    early = seen[:-1]
    assert all(status in (0, 503) for status, _ in early), early
    assert all(not body.get("index_loaded") for status, body in early if status == 503), early
    r = httpx.get(f"{first.url}/v1/recommendations/{user}", params={"k": 5})
    assert r.status_code == 200 and r.json()["model_id"] == "student-restart", r.text
    first.kill()

    # 2. Restarted while Redis is down: up, alive, not ready; ready on its own once Redis is back.
    kill_redis(own_redis)
    second = live_api(settings, ready=None)
    down = wait_until(lambda: _get(second.url, "/readyz"), START_TIMEOUT_S, "the API to answer")
    assert down == (
        503,
        {"status": "not ready", "redis": False, "index_loaded": False, "model_id": None},
    )
    assert _get(second.url, "/healthz")[0] == 200
    rec_down = httpx.get(f"{second.url}/v1/recommendations/{user}", params={"k": 5})
    assert (
        rec_down.status_code == 503 and "no model is being served yet" in rec_down.json()["detail"]
    )
    t_redis = time.monotonic()
    own_redis.start()
    ready = wait_until(
        lambda: (a := _get(second.url, "/readyz")) and a[0] == 200 and a,
        30,
        "the API to load the model once Redis is back",
    )
    seconds_to_ready = time.monotonic() - t_redis
    assert ready[1]["model_id"] == "student-restart"
    r = httpx.get(f"{second.url}/v1/recommendations/{user}", params={"k": 5})
    assert r.status_code == 200 and r.json()["model_id"] == "student-restart", r.text
    observe(
        "api_restart",
        fault="API process SIGKILLed and restarted; restarted again while Redis was down",
        readiness_answers_before_ready=len(early),
        ready_without_model=0,
        not_ready_503_while_redis_down=True,
        seconds_to_ready_after_redis=round(seconds_to_ready, 2),
        requests_failed_after_ready=0,
    )


def _get(base: str, path: str) -> tuple[int, dict] | None:
    try:
        r = httpx.get(base + path, timeout=5)
    except httpx.TransportError:
        return None
    return r.status_code, r.json()
