"""Publishing and rolling back under load: no request fails, and no answer comes from the
model a swap replaced once that swap was seen.

Threads hammer GET /v1/recommendations/{user} on an API with keys while model B is
published by a real publish job over model A, then POST /v1/serving/rollback (an admin
key) puts A back, B again (two rollbacks in a row go back to where they started), and A
again. Each action starts a phase that should end served by its target model. For every
phase: once one answer named the target, no request sent after that answer and answered
before the next action was asked for names any other model; before the first action only
A answers. The API runs beside the session stack's (same Redis, data dir, queues and
worker), with an admin key, since a rollback needs one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import httpx
import pytest

from service.core.bundle_format import build_bundle
from service.core.registry import PublishEntry
from tests.reliability.conftest import RELIABILITY_SETTINGS, Stack, observe, seed_model, wait_until
from tests.reliability.load import Load, Sample
from tests.support.config import make_test_settings
from tests.support.live_api import LiveAPI

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

A, B = "student-rollback-a", "student-rollback-b"
ADMIN = "rollback-admin-key-0123"
JOB_TIMEOUT_S = 60
SETTLE_S = 0.7  # load kept running after each swap is seen, before the next action


def _served(client: httpx.Client) -> str | None:
    return client.get("/v1/serving").json().get("model_id")


def _first_answer(load: Load, model_id: str, after: float, timeout_s: float = 20) -> float:
    """When the first answer naming `model_id` to a request sent after `after` arrived."""

    def seen() -> float | None:
        times = [
            s.received for s in list(load.samples) if s.model_id == model_id and s.sent > after
        ]
        return min(times) if times else None

    found: float = wait_until(seen, timeout_s, f"an answer from {model_id}")
    return found


def after_swap(
    samples: list[Sample], phases: list[tuple[str, float, float]], i: int
) -> list[Sample]:
    """The answers of phase i: to requests sent after its swap was seen (its model's first
    answer) and answered before the next action was asked for.

    Args:
        phases: (model, asked at, first answer from it) per phase; the first phase's times
            are -inf (its model was served before the load started).
    """
    seen_at = phases[i][2]
    next_asked = phases[i + 1][1] if i + 1 < len(phases) else math.inf
    return [s for s in samples if seen_at < s.sent and s.received < next_asked]


def test_publish_then_rollbacks_under_load_fail_no_request(
    stack: Stack, live_api: Callable[..., LiveAPI]
) -> None:
    settings, registry = stack.settings, stack.registry
    for model_id, seed in ((A, 31), (B, 32)):
        seed_model(settings, registry, stack.dataset, model_id, seed=seed)
    # A is served through the publish history (what a publish job records), so that a
    # rollback from B finds it.
    bundle_a = settings.bundles_dir.resolve() / f"{A}-direct"
    build_bundle(settings.models_dir.resolve() / A, stack.dataset, bundle_a, model_id=A)
    registry.record_publish(PublishEntry(model_id=A, bundle_dir=str(bundle_a)))
    keyed = make_test_settings(
        "rollback",
        **{
            **RELIABILITY_SETTINGS,
            "redis_url": settings.redis_url,
            "data_dir": settings.data_dir,
            "train_queue": settings.train_queue,
            "light_queue": settings.light_queue,
            "api_keys": [f"ops:admin:{ADMIN}"],
        },
    )
    api = live_api(keyed, ready="/readyz")
    client = httpx.Client(
        base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    wait_until(lambda: _served(client) == A, 20, "model A to be served")
    users = [str(u) for u in stack.dataset.user_ids[:50]]
    phases: list[tuple[str, float, float]] = [(A, -math.inf, -math.inf)]
    rollbacks = []

    with Load(
        api.url,
        lambda i: f"/v1/recommendations/{users[i % len(users)]}?k=10",
        threads=4,
        max_requests=40_000,
        max_seconds=90,
    ) as load:
        time.sleep(1.0)
        asked = time.monotonic()
        r = client.post(f"/v1/models/{B}/publish")
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job = wait_until(
            lambda: (
                (s := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
                and s
            ),
            JOB_TIMEOUT_S,
            f"publish job {job_id}",
        )
        assert job["status"] == "succeeded", job
        phases.append((B, asked, _first_answer(load, B, asked)))
        time.sleep(SETTLE_S)
        for target in (A, B, A):
            asked = time.monotonic()
            r = client.post("/v1/serving/rollback")
            assert r.status_code == 200, r.text
            rollbacks.append(r.json())
            assert (r.json()["model_id"], r.json()["action"]) == (target, "rollback"), r.json()
            phases.append((target, asked, _first_answer(load, target, asked)))
            time.sleep(SETTLE_S)
    client.close()

    samples = list(load.samples)
    assert load.failed == [], load.failed[:5]
    assert {s.model_id for s in samples} == {A, B}
    per_phase = [after_swap(samples, phases, i) for i in range(len(phases))]
    stale = [
        (i, s) for i, answers in enumerate(per_phase) for s in answers if s.model_id != phases[i][0]
    ]
    assert stale == [], (
        f"{len(stale)} answers from the replaced model after a swap was seen: {stale[:5]}"
    )
    answered = [len(answers) for answers in per_phase]
    assert all(n > 0 for n in answered), answered  # every phase was under load after its swap
    assert [(e["model_id"], e["previous_model_id"], e["key_name"]) for e in rollbacks] == [
        (A, B, "ops"),
        (B, A, "ops"),
        (A, B, "ops"),
    ]
    history = [e.model_id for e in registry.publish_history(limit=5)[0]]
    assert history == [A, B, A, B, A], history
    observe(
        "rollback_under_load",
        fault="publish (real worker), then 3 rollbacks (admin key), while 4 threads "
        "request recommendations",
        requests_served=load.served,
        requests_failed=len(load.failed),
        swaps=len(phases) - 1,
        answered_by_replaced_after_swap=len(stale),
        answered_per_phase=answered,
        seconds_to_swap=[round(seen - asked, 3) for _, asked, seen in phases[1:]],
        models_seen=sorted(m for m in {s.model_id for s in samples} if m),
        seconds=round(max(s.received for s in samples) - min(s.sent for s in samples), 1),
    )
