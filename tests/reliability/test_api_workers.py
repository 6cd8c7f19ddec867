"""Several API processes on one port (`unkd api --workers 2`): each loads the served model,
a publish reaches both, and no request fails while they swap.

Each process reports its own `loaded_at` on GET /v1/serving, so a probe on a fresh
connection tells which process answered; the kernel hands new connections to whichever
process accepts first, so a few dozen probes meet both.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from service.core.registry import Registry
from tests.reliability.conftest import observe, publish_direct, seed_dataset, seed_model, wait_until
from tests.reliability.load import Load
from tests.support.live_api import LiveAPI

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


def _probe_processes(url: str, model_id: str, probes: int = 200) -> set[str]:
    """`loaded_at` of every process seen answering with `model_id` over fresh connections."""
    seen: set[str] = set()
    for _ in range(probes):
        with httpx.Client(base_url=url, timeout=10) as client:  # a new connection each time
            body = client.get("/v1/serving").json()
        if body.get("model_id") == model_id:
            seen.add(body["loaded_at"])
        if len(seen) >= 2:
            break
    return seen


def test_a_publish_reaches_every_api_process_without_a_failed_request(
    make_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    registry = Registry.from_url(settings.redis_url or "")
    dataset = seed_dataset(settings, registry)
    for model_id, seed in (("student-w-a", 21), ("student-w-b", 22)):
        seed_model(settings, registry, dataset, model_id, seed=seed)
    publish_direct(settings, registry, dataset, "student-w-a")
    api = LiveAPI(settings, tmp_path / "api.log", workers=2)
    try:
        api.start(ready="/readyz")
        # Both processes up and serving A (the supervisor answers /readyz through either one).
        seen_a = wait_until(
            lambda: len(s := _probe_processes(api.url, "student-w-a")) == 2 and s,
            60,
            "two API processes serving model A",
        )
        users = [str(u) for u in dataset.user_ids[:50]]
        with Load(
            api.url,
            lambda i: f"/v1/recommendations/{users[i % len(users)]}?k=10",
            threads=4,
            max_requests=20_000,
            max_seconds=60,
        ) as load:
            time.sleep(0.5)
            t_publish = time.monotonic()
            publish_direct(settings, registry, dataset, "student-w-b")
            seen_b = wait_until(
                lambda: len(s := _probe_processes(api.url, "student-w-b")) == 2 and s,
                30,
                "both API processes serving model B",
            )
            t_both = time.monotonic()
            time.sleep(0.5)
        assert load.failed == [], load.failed[:5]
        models = {s.model_id for s in load.samples}
        assert models == {"student-w-a", "student-w-b"}, models
        assert seen_a.isdisjoint(seen_b)  # each process loaded B itself, after A
        observe(
            "api_workers_publish",
            fault="publish while 4 threads request recommendations from 2 API processes",
            requests_served=load.served,
            requests_failed=len(load.failed),
            processes=2,
            seconds_to_all_processes=round(t_both - t_publish, 2),
            models_seen=sorted(m for m in models if m),
        )
    finally:
        api.stop()
        registry.close()
