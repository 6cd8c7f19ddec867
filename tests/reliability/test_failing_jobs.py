"""Jobs that raise: bad parameters stored by an old client, a job over the worker's memory
budget (the "out of memory" of a worker with little RAM, simulated by a tiny
max_job_memory_mb on the worker only), and a dataset whose files vanished. Each ends
`failed` with a reason that names the cause, is never retried, and the same worker
process stays up and runs the next job to success. (A MemoryError raised inside training
takes the same path: tests/unit/test_recovery.py.)
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from service.core.queue import TRAIN_TEACHER, make_celery
from service.core.registry import JobRecord
from tests.reliability.conftest import STACK_WORKER_MEMORY_MB, Stack, observe, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

SMALL = {"dim": 8, "epochs": 3, "patience": 100, "eval_every": 100, "batch_size": 256}


def _final(client: httpx.Client, job_id: str) -> dict:
    return wait_until(
        lambda: (
            (s := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
            and s
        ),
        60,
        f"job {job_id} to finish",
    )


def test_failing_jobs_leave_the_worker_up(stack: Stack) -> None:
    settings, registry = stack.settings, stack.registry
    client = httpx.Client(base_url=stack.api.url, timeout=30)
    pid = stack.worker.pid
    celery_app = make_celery(settings, set_as_current=False)

    def send(job: JobRecord) -> str:
        registry.create_job(job)
        celery_app.send_task(
            TRAIN_TEACHER, args=[job.id], task_id=job.id, queue=settings.train_queue
        )
        return job.id

    # The copy of the dataset that will vanish under the worker.
    gone = stack.dataset.save(settings.datasets_dir.resolve() / "ds-gone")
    record = registry.get_dataset(stack.dataset_id).model_copy(
        update={"id": "ds-gone", "path": str(gone)}
    )
    registry.add_dataset(record)
    shutil.rmtree(gone)

    jobs = {
        # A payload no API would accept any more (queued by an old client, edited in Redis).
        "bad_params": send(
            JobRecord(
                id="job-bad-params",
                kind="teacher",
                output_model_id="teacher-badp",
                params={"dataset_id": stack.dataset_id, "config": {**SMALL, "dim": 0}},
            )
        ),
        # Accepted by the API (16 GiB budget), over the worker's budget of 2 MiB.
        "memory_budget": client.post(
            "/v1/jobs",
            json={
                "kind": "teacher",
                "model": "mf",
                "dataset_id": stack.dataset_id,
                **SMALL,
                "dim": 512,
            },
        ).json()["id"],
        "dataset_gone": client.post(
            "/v1/jobs", json={"kind": "teacher", "model": "mf", "dataset_id": "ds-gone", **SMALL}
        ).json()["id"],
        "next_job": client.post(
            "/v1/jobs",
            json={"kind": "teacher", "model": "mf", "dataset_id": stack.dataset_id, **SMALL},
        ).json()["id"],
    }
    results = {name: _final(client, job_id) for name, job_id in jobs.items()}
    celery_app.close()

    bad, mem, gone_job, nxt = (
        results[k] for k in ("bad_params", "memory_budget", "dataset_gone", "next_job")
    )
    assert bad["status"] == "failed" and bad["error"].startswith(
        "teacher.config.dim: Input should be greater than or equal to 1"
    ), bad
    assert mem["status"] == "failed", mem
    assert (
        mem["error"].startswith("dim: a mf teacher of dim=512")
        and f"max_job_memory_mb={STACK_WORKER_MEMORY_MB} MiB" in mem["error"]
    ), mem
    assert gone_job["status"] == "failed" and "not a dataset artifact" in gone_job["error"], (
        gone_job
    )
    for job in (bad, mem, gone_job):
        assert job["attempts"] == 1 and job["model_id"] is None, job  # never retried
    assert nxt["status"] == "succeeded" and nxt["model_id"], nxt
    assert stack.worker.alive() and stack.worker.pid == pid
    client.close()
    observe(
        "failing_jobs",
        fault="bad parameters, over the memory budget, dataset files gone",
        jobs_submitted=len(jobs),
        jobs_failed_with_reason=3,
        jobs_lost=0,
        worker_restarts=0,
        next_job=nxt["status"],
        errors={k: results[k]["error"] for k in ("bad_params", "memory_budget", "dataset_gone")},
    )
