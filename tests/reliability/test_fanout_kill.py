"""A worker SIGKILLed in the middle of a candidate shard of a fanned-out distill job
(worker/fanout.py): the shard's lease expires, the job's parent ranks that shard again,
and the job succeeds on its first attempt. Only that shard ran twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from service.core.registry import Registry
from tests.e2e.test_fanout import PAYLOAD, fanout_settings, seed_teacher, shard_runs
from tests.reliability.conftest import RELIABILITY_SETTINGS, observe, wait_until
from tests.support.workers import WorkerProcess
from training.checkpoint import ModelArtifact
from training.distill.shards import shard_meta
from worker.shards import shards_root

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

JOB_TIMEOUT_S = 150


def test_a_worker_killed_mid_shard_costs_one_shard(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    # One user per scoring chunk: a 500-user shard takes about a second, long enough to
    # be caught in the middle; heartbeats of 0.5 s: a lost shard's lease expires in 1.5 s.
    settings: Settings = fanout_settings(
        redis_url,
        tmp_path / "data",
        fanout_chunk_users=1,
        **{k: v for k, v in RELIABILITY_SETTINGS.items() if k != "device"},
    )
    registry = Registry.from_url(redis_url)
    seed_teacher(settings, registry)
    workers = {w.name: w for w in (start_worker(settings, "a"), start_worker(settings, "b"))}
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", json=PAYLOAD)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        root = shards_root(settings, job_id)

        def parent() -> str | None:
            return next(
                (n for n, w in workers.items() if f"job {job_id} (" in w.log.read_text()), None
            )

        holder = wait_until(parent, 60, "a worker to start the job", interval_s=0.01)
        victim_name = next(n for n in workers if n != holder)

        def in_flight() -> int | None:
            """A shard the other worker started and has not written yet."""
            _, log = shard_runs(registry, job_id)
            for index, who in log:
                if who.startswith(f"{victim_name}-") and shard_meta(root, index) is None:
                    return index
            return None

        killed = wait_until(
            lambda: (i := in_flight()) is not None and (i,),
            60,
            "the second worker to start a shard",
            interval_s=0.002,
        )[0]
        workers[victim_name].kill()
        t_kill = time.monotonic()
        assert shard_meta(root, killed) is None, "the shard finished before the kill landed"
        done = wait_until(
            lambda: (
                (s := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
                and s
            ),
            JOB_TIMEOUT_S,
            "the job to finish",
        )
        t_done = time.monotonic()
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1, done  # the parent never stopped: only the shard was redone
    starts, log = shard_runs(registry, job_id)
    assert starts[killed] == 2, (killed, starts)
    assert all(n == 1 for i, n in starts.items() if i != killed), starts
    assert sorted(starts) == list(range(6)), starts
    rerun_by = [who for i, who in log if i == killed][-1]
    assert rerun_by.startswith(f"{holder}-"), log
    assert (
        ModelArtifact.load(settings.models_dir / done["model_id"]).manifest.id == done["model_id"]
    )
    assert not root.exists()
    observe(
        "worker_sigkill_mid_shard",
        fault="worker SIGKILLed while ranking a candidate shard",
        shards=len(starts),
        shard_rankings=sum(starts.values()),
        attempts=done["attempts"],
        final_status=done["status"],
        seconds_kill_to_done=round(t_done - t_kill, 2),
    )
    registry.close()
