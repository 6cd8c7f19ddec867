"""Pipelines under faults, with real worker and scheduler (celery beat) processes:

- a worker SIGKILLed during a scheduled run: the run ends exactly once, `failed`, with its
  step job; the pipeline's lock is released; the next scheduled run (on a new worker)
  succeeds and the failed run's record never changes again;
- two schedulers (and two workers taking their ticks) at once: one run per slot, never two.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core import keys
from service.core.config import Settings
from tests.reliability.conftest import RELIABILITY_SETTINGS, observe, wait_until
from tests.support.config import make_test_settings
from tests.support.workers import BeatProcess, WorkerProcess

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

ENDED = ("skipped", "succeeded", "refused", "failed")
DISTILL = {"method": "unkd", "dim": 4, "epochs": 2, "batch_size": 256}


def interactions(n_users: int = 50, n_items: int = 30, per_user: int = 6) -> bytes:
    rng = np.random.default_rng(11)
    weights = 1.0 / np.arange(1, n_items + 1)
    rows = ["user,item"]
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False, p=weights / weights.sum())
        rows += [f"u{u},i{i}" for i in items]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture()
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_test_settings(
        "pipefault",
        **{
            **RELIABILITY_SETTINGS,
            "redis_url": redis_url,
            "data_dir": tmp_path / "data",
            "pipeline_tick_s": 0.5,
        },
    )


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture()
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def upload(api: TestClient) -> str:
    r = api.post("/v1/datasets", files={"file": ("p.csv", interactions())}, data={"seed": "1"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def runs_of(api: TestClient, name: str) -> list[dict[str, Any]]:
    """Oldest first."""
    items = api.get(f"/v1/pipelines/{name}/runs", params={"limit": 500}).json()["items"]
    return list(reversed(items))


def test_a_worker_killed_during_a_scheduled_run_fails_it_once(
    api: TestClient,
    settings: Settings,
    redis_client: redis.Redis,
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[..., BeatProcess],
) -> None:
    dataset_id = upload(api)
    # min_new_events 0: every slot trains on the dataset's latest version (no events needed).
    # The teacher is slow enough to be killed in the middle of it.
    slow = {"model": "mf", "dim": 8, "epochs": 400, "patience": 400, "batch_size": 16}
    body = {
        "dataset_id": dataset_id,
        "teacher": slow,
        "distill": DISTILL,
        "every_s": 2,
        "min_new_events": 0,
    }
    assert api.put("/v1/pipelines/p", json=body).status_code == 201
    worker = start_worker(settings, "w1")
    beat = start_beat(settings)

    def teacher_running() -> dict[str, Any] | None:
        runs = runs_of(api, "p")
        if not runs or runs[0]["teacher_job"] is None:
            return None
        job = api.get(f"/v1/jobs/{runs[0]['teacher_job']}").json()
        return runs[0] if job["status"] == "running" and job["progress"].get("epoch") else None

    victim = wait_until(
        teacher_running, 60, interval_s=0.2, what="the first run's teacher to be training"
    )
    assert victim["trigger"] == "schedule" and victim["status"] == "running"
    assert redis_client.get(keys.pipeline_lock("p")) == victim["run_id"]
    worker.kill()
    killed_at = time.monotonic()

    # The recipe's next runs train a quick teacher (a PUT keeps the runs and the lock).
    quick = {"model": "mf", "dim": 8, "epochs": 3, "batch_size": 256}
    assert api.put("/v1/pipelines/p", json={**body, "teacher": quick}).status_code == 200
    start_worker(settings, "w2")

    def next_succeeded() -> list[dict[str, Any]] | None:
        runs = runs_of(api, "p")
        return runs if any(r["status"] == "succeeded" for r in runs) else None

    wait_until(next_succeeded, 120, interval_s=0.3, what="a run after the kill to succeed")
    # Every 2 s another run trains and publishes: stop the schedule, let the open run end, and
    # judge the runs as they stand then (the newest succeeded run's student is the one served).
    beat.stop()

    def settled() -> list[dict[str, Any]] | None:
        now = runs_of(api, "p")
        return None if any(r["status"] in ("queued", "running") for r in now) else now

    runs = wait_until(settled, 120, interval_s=0.3, what="the open runs to end")
    failed = api.get(f"/v1/pipelines/p/runs/{victim['run_id']}").json()
    assert failed["status"] == "failed" and "worker lost" in failed["reason"], failed
    assert failed["finished_at"] is not None
    teacher = api.get(f"/v1/jobs/{victim['teacher_job']}").json()
    assert teacher["status"] == "failed" and victim["run_id"] in teacher["error"], teacher
    # exactly one run per start: the victim first, then runs that came after it
    assert runs[0]["run_id"] == victim["run_id"]
    assert all(r["status"] == "succeeded" for r in runs[1:]), runs
    ok = [r for r in runs if r["status"] == "succeeded"][-1]
    assert ok["trigger"] == "schedule" and ok["published"]["model_id"] == ok["student_id"]
    assert api.get(f"/v1/models/{ok['student_id']}").json()["active"] is True
    recovered_s = time.monotonic() - killed_at

    assert api.delete("/v1/pipelines/p").status_code == 200
    start_beat(settings, "beat2")  # the ticks again
    time.sleep(2.0)  # a few more ticks: the failed run is never ended (or changed) again
    assert api.get(f"/v1/pipelines/p/runs/{victim['run_id']}").json() == failed
    holder = redis_client.get(keys.pipeline_lock("p"))
    assert holder is None or holder != victim["run_id"]
    observe(
        "pipeline_worker_kill",
        fault="worker SIGKILLed while a scheduled pipeline run's teacher trains",
        runs=len(runs),
        recovered_s=round(recovered_s, 1),
    )


def test_two_schedulers_start_one_run_per_slot(
    api: TestClient,
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[..., BeatProcess],
) -> None:
    dataset_id = upload(api)
    every_s = 2
    teacher = {"model": "mf", "dim": 8, "epochs": 3}
    body = {"dataset_id": dataset_id, "teacher": teacher, "distill": DISTILL, "every_s": every_s}
    start_worker(settings, "w1")  # two workers: two ticks may run at the same moment
    start_worker(settings, "w2")
    beats = [start_beat(settings, "beat-1"), start_beat(settings, "beat-2")]
    assert api.put("/v1/pipelines/p", json=body).status_code == 201
    start = time.time()
    time.sleep(5 * every_s + 1)
    assert api.delete("/v1/pipelines/p").status_code == 200
    end = time.time()
    time.sleep(1.0)  # the last run queued ends (skipped: no new events)

    runs = runs_of(api, "p")
    # every slot boundary crossed while the pipeline existed: at most one run each
    slots = math.floor(end / every_s) - math.floor(start / every_s)
    assert len(runs) <= slots, (slots, runs)
    assert len(runs) >= slots - 2, (slots, runs)  # and the schedule did run
    assert all(r["trigger"] == "schedule" for r in runs)
    assert all(r["status"] in (*ENDED, "queued", "running") for r in runs)
    for beat in beats:  # both schedulers sent ticks
        sent = re.findall(r"Sending due task", beat.log.read_text())
        assert len(sent) >= 5, beat.log.read_text()[-2000:]
    observe(
        "pipeline_two_schedulers",
        fault="two schedulers (celery beat) and two workers on one pipeline's schedule",
        slots=slots,
        runs=len(runs),
    )
