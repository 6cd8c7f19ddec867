"""A scheduled pipeline end to end: a real Redis, a real Celery worker process and a real
scheduler process (celery beat, as `unkd up` starts them), the API in this process.

The pipeline runs every few seconds. Before any event arrives its runs are `skipped` for no
data; once events are pushed through POST /v1/events a scheduled run builds a version,
trains the teacher and the student on it, gates and activates the student, and the
recommendations answer with its model id. The expected counts come from the events sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from tests.support.config import make_test_settings
from tests.support.workers import BeatProcess, WorkerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

POSITIVE = ("click", "purchase")  # the default UNKD_EVENTS_POSITIVE_TYPES
ENDED = ("skipped", "succeeded", "refused", "failed")
TEACHER = {"model": "mf", "dim": 8, "epochs": 4, "batch_size": 256, "seed": 1}
DISTILL = {"method": "unkd", "dim": 4, "epochs": 3, "batch_size": 256}


def interactions(n_users: int = 50, n_items: int = 30, per_user: int = 6) -> bytes:
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, n_items + 1)
    rows = ["user,item"]
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False, p=weights / weights.sum())
        rows += [f"u{u},i{i}" for i in items]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture()
def pipeline_settings(redis_url: str, tmp_path: Any) -> Settings:
    return make_test_settings(
        "pipe",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        device="cpu",
        reload_poll_s=0.2,
        job_max_retries=0,
        pipeline_tick_s=1.0,
        job_heartbeat_s=1.0,
    )


@pytest.fixture()
def api(pipeline_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(pipeline_settings)) as client:
        yield client


def ended_runs(api: TestClient, name: str) -> list[dict[str, Any]]:
    """The pipeline's ended runs, oldest first."""
    items = api.get(f"/v1/pipelines/{name}/runs", params={"limit": 500}).json()["items"]
    return [r for r in reversed(items) if r["status"] in ENDED]


def wait_runs(
    api: TestClient, name: str, until: Callable[[list[dict[str, Any]]], bool], timeout_s: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = ended_runs(api, name)
        if until(runs):
            return runs
        time.sleep(0.2)
    pytest.fail(f"pipeline {name}: timed out after {timeout_s}s; runs {runs}")


def test_scheduled_runs_skip_without_data_then_publish_after_events(
    api: TestClient,
    pipeline_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[..., BeatProcess],
) -> None:
    r = api.post(
        "/v1/datasets", files={"file": ("p.csv", interactions())}, data={"split": "random"}
    )
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    body = {"dataset_id": dataset_id, "teacher": TEACHER, "distill": DISTILL, "every_s": 3}
    assert api.put("/v1/pipelines/loop", json=body).status_code == 201
    start_worker(pipeline_settings)
    start_beat(pipeline_settings)

    runs = wait_runs(api, "loop", lambda rs: len(rs) >= 1, 60)
    first = runs[0]
    assert first["trigger"] == "schedule" and first["status"] == "skipped", first
    assert first["new_events"] == 0 and "no new data" in first["reason"]
    assert first["teacher_job"] is None and first["published"] is None

    sent = [
        {"user_id": f"u{u}", "item_id": f"i{(u * 7) % 30}", "type": t}
        for u, t in zip(range(12), ["click", "view", "purchase"] * 4, strict=True)
    ]
    sent.append({"user_id": "newcomer", "item_id": "i3", "type": "click"})
    assert api.post("/v1/events", json={"events": sent}).status_code == 202
    positive = sum(e["type"] in POSITIVE for e in sent)

    # The schedule goes on after the run that trains: later runs skip again (no new data), so
    # the run to find is the first that did not skip, wherever it is in the list.
    runs = wait_runs(api, "loop", lambda rs: any(r["status"] != "skipped" for r in rs), 180)
    assert api.delete("/v1/pipelines/loop").status_code == 200  # no more runs
    at = next(k for k, r in enumerate(runs) if r["status"] != "skipped")
    done = runs[at]
    assert all(r["status"] == "skipped" for r in runs[:at]), runs
    assert done["status"] == "succeeded" and done["trigger"] == "schedule", done
    assert done["new_events"] == positive
    assert done["dataset_version"] not in (None, dataset_id)
    assert done["published"]["action"] == "activate"
    assert done["published"]["model_id"] == done["student_id"]
    for key in ("teacher_job", "distill_job"):
        job = api.get(f"/v1/jobs/{done[key]}").json()
        assert job["status"] == "succeeded" and job["pipeline_run"] == done["run_id"], job
    created = [r["created_at"] for r in runs]
    assert created == sorted(created) and len(set(created)) == len(created)

    deadline = time.monotonic() + 20  # the API swaps the bundle in after the publish event
    while True:
        rec = api.get("/v1/recommendations/newcomer", params={"k": 5})
        if rec.status_code == 200 and rec.json()["model_id"] == done["student_id"]:
            break
        assert time.monotonic() < deadline, rec.text
        time.sleep(0.2)
