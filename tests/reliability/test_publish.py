"""Publishing under load, and publishing something broken.

- A publish job (real worker) while threads hammer the recommendations endpoint: no
  request fails, every answer names model A or B, B never before the publish was asked
  for, and once one answer named B, no request sent after it is answered by A.
- A model whose files are missing or corrupt, a pre-built bundle that is corrupt, and an
  active pointer moved to a broken bundle behind the API's back: the publish fails with a
  message that names the problem (or the API refuses the bundle) and the previous model
  keeps serving every request.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from service.core.bundle_format import build_bundle
from service.core.queue import PUBLISH, make_celery
from service.core.registry import ActiveModel, JobRecord
from tests.reliability.conftest import Stack, observe, publish_direct, seed_model, wait_until
from tests.reliability.load import Load

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

JOB_TIMEOUT_S = 60


def _served(client: httpx.Client) -> str | None:
    return client.get("/v1/serving").json().get("model_id")


def _finished(client: httpx.Client, job_id: str) -> dict:
    return wait_until(
        lambda: (
            (s := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
            and s
        ),
        JOB_TIMEOUT_S,
        f"job {job_id} to finish",
    )


def _users(stack: Stack, n: int = 50) -> list[str]:
    return [str(u) for u in stack.dataset.user_ids[:n]]


def test_publish_under_load_fails_no_request(stack: Stack) -> None:
    settings, registry = stack.settings, stack.registry
    for model_id, seed in (("student-load-a", 11), ("student-load-b", 12)):
        seed_model(settings, registry, stack.dataset, model_id, seed=seed)
    publish_direct(settings, registry, stack.dataset, "student-load-a")
    client = httpx.Client(base_url=stack.api.url, timeout=30)
    wait_until(lambda: _served(client) == "student-load-a", 20, "model A to be served")
    users = _users(stack)

    with Load(
        stack.api.url,
        lambda i: f"/v1/recommendations/{users[i % len(users)]}?k=10",
        threads=4,
        max_requests=30_000,
        max_seconds=40,
    ) as load:
        time.sleep(1.0)
        t_publish = time.monotonic()
        r = client.post("/v1/models/student-load-b/publish")
        assert r.status_code == 202, r.text
        job = _finished(client, r.json()["id"])
        assert job["status"] == "succeeded", job
        wait_until(
            lambda: any(s.model_id == "student-load-b" for s in load.samples),
            20,
            "an answer from model B",
        )
        time.sleep(1.0)

    assert load.failed == [], load.failed[:5]
    models = {s.model_id for s in load.samples}
    assert models == {"student-load-a", "student-load-b"}, models
    b_answers = [s for s in load.samples if s.model_id == "student-load-b"]
    assert min(s.received for s in b_answers) > t_publish  # B never before the publish
    first_b = min(s.received for s in b_answers)
    stale = [s for s in load.samples if s.sent > first_b and s.model_id != "student-load-b"]
    assert stale == [], f"{len(stale)} requests sent after the swap were answered by model A"
    swap_window = [s for s in load.samples if t_publish <= s.sent <= first_b]
    client.close()
    observe(
        "publish_under_load",
        fault="publish job (real worker) while 4 threads request recommendations",
        requests_served=load.served,
        requests_failed=len(load.failed),
        served_during_publish=len(swap_window),
        answered_by_old_after_swap=len(stale),
        models_seen=sorted(m for m in models if m),
        seconds=round(max(s.received for s in load.samples) - min(s.sent for s in load.samples), 1),
    )


def _corrupt(path: Path) -> None:
    """Flip bytes in the middle of a file (same size, so only a checksum can tell)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    path.write_bytes(bytes(data))


def test_broken_bundles_never_replace_the_serving_model(stack: Stack) -> None:
    settings, registry = stack.settings, stack.registry
    seed_model(settings, registry, stack.dataset, "student-good", seed=21)
    publish_direct(settings, registry, stack.dataset, "student-good")
    client = httpx.Client(base_url=stack.api.url, timeout=30)
    wait_until(lambda: _served(client) == "student-good", 20, "the good model to be served")
    for model_id, seed in (
        ("student-missing", 22),
        ("student-corrupt", 23),
        ("student-badbundle", 24),
    ):
        seed_model(settings, registry, stack.dataset, model_id, seed=seed)
    models_dir = settings.models_dir.resolve()
    shutil.rmtree(models_dir / "student-missing")
    _corrupt(models_dir / "student-corrupt" / "embeddings.npz")
    users = _users(stack)
    errors: dict[str, str] = {}

    with Load(
        stack.api.url,
        lambda i: f"/v1/recommendations/{users[i % len(users)]}?k=10",
        threads=2,
        max_requests=20_000,
        max_seconds=60,
    ) as load:
        for model_id in ("student-missing", "student-corrupt"):
            r = client.post(f"/v1/models/{model_id}/publish")
            assert r.status_code == 202, r.text
            job = _finished(client, r.json()["id"])
            assert job["status"] == "failed", job
            errors[model_id] = job["error"]

        # A bundle already on disk for this publish job, corrupted after it was built: the
        # worker must verify it (checksums) before it moves the pointer.
        job_id = "publish-corrupt-bundle-0001"
        planted = settings.bundles_dir.resolve() / f"student-badbundle-{job_id[:8]}"
        build_bundle(
            models_dir / "student-badbundle", stack.dataset, planted, model_id="student-badbundle"
        )
        _corrupt(planted / "items.faiss")
        registry.create_job(
            JobRecord(id=job_id, kind="publish", params={"model_id": "student-badbundle"})
        )
        celery_app = make_celery(settings, set_as_current=False)
        celery_app.send_task(PUBLISH, args=[job_id], task_id=job_id, queue=settings.light_queue)
        job = _finished(client, job_id)
        celery_app.close()
        assert job["status"] == "failed", job
        errors["bundle"] = job["error"]

        # The pointer moved to a broken bundle behind the API's back (a manual edit, files
        # lost on a shared volume): the API refuses to load it and keeps the good model.
        registry.set_active(ActiveModel(model_id="student-badbundle", bundle_dir=str(planted)))
        time.sleep(1.5)  # several reload polls
        refused_pointer = _served(client)
        ready = client.get("/readyz").json()
        registry.set_active(
            ActiveModel(
                model_id="student-good",
                bundle_dir=str(settings.bundles_dir.resolve() / "student-good"),
            )
        )
        time.sleep(0.5)

    assert "not a model directory" in errors["student-missing"], errors
    assert "student-corrupt/embeddings.npz: unreadable" in errors["student-corrupt"], errors
    assert "checksum mismatch" in errors["bundle"] and "items.faiss" in errors["bundle"], errors
    assert refused_pointer == "student-good" and ready["model_id"] == "student-good", ready
    assert load.failed == [], load.failed[:5]
    assert {s.model_id for s in load.samples} == {"student-good"}
    client.close()
    observe(
        "broken_bundles",
        fault="publish of a missing model, a corrupt model, a corrupt bundle; "
        "pointer moved to a corrupt bundle",
        publishes_failed=3,
        pointer_refused=True,
        requests_served=load.served,
        requests_failed=len(load.failed),
        models_seen=sorted({s.model_id for s in load.samples if s.model_id}),
        errors=errors,
    )
