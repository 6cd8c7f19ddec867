"""A worker SIGKILLed in the middle of a job: the job is requeued through its expired
heartbeat lease, runs again to the end (attempts = 2), and no partial model is ever
visible, neither in the registry nor in the models directory.

Two ways back: a new worker that reaps at startup (teacher job), and a standby worker
that was already running and reaps on its periodic check (distillation job).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from service.core.registry import Registry
from tests.reliability.conftest import observe, seed_dataset, seed_model, wait_until
from tests.support.workers import WorkerProcess
from training.checkpoint import ModelArtifact

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

JOB_TIMEOUT_S = 90


class PartialModelWatch:
    """Polls the registry and the models dir for one model id until stopped.

    Records every sighting that is not a complete model: a registered model whose files do
    not load, or a visible (non-hidden) directory without its manifest and embeddings.
    """

    def __init__(self, registry: Registry, models_dir: Path, model_id: str) -> None:
        self.registry, self.models_dir, self.model_id = registry, models_dir, model_id
        self.partial: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        path = self.models_dir / self.model_id
        while not self._stop.is_set():
            self.polls += 1
            registered = self.registry.has_model(self.model_id)
            if path.exists() or registered:
                try:
                    ModelArtifact.load(path)
                except Exception as exc:  # noqa: BLE001 - any failure to load is a partial model
                    # The rename is atomic, so a load can only fail on a partial directory
                    # (or one the test itself removed, which it never does).
                    self.partial.append(f"registered={registered}: {exc}")
            self._stop.wait(0.02)

    def __enter__(self) -> PartialModelWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _holder(workers: list[WorkerProcess], job_id: str) -> WorkerProcess:
    """The worker whose log says it started the job."""
    for worker in workers:
        if f"job {job_id} (" in worker.log.read_text(errors="replace"):
            return worker
    pytest.fail(f"no worker log mentions job {job_id}")


def _kill_mid_job(
    client: TestClient,
    registry: Registry,
    settings: Settings,
    payload: dict[str, object],
    workers: list[WorkerProcess],
    recover: Callable[[], object],
    name: str,
) -> None:
    r = client.post("/v1/jobs", json=payload)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    model_id = registry.get_job(job_id).output_model_id
    assert model_id
    with PartialModelWatch(registry, settings.models_dir.resolve(), model_id) as watch:
        running = wait_until(
            lambda: (s := client.get(f"/v1/jobs/{job_id}").json())["progress"]["epoch"] >= 3 and s,
            JOB_TIMEOUT_S,
            "the job to reach epoch 3",
        )
        assert running["status"] == "running" and running["attempts"] == 1
        victim = _holder(workers, job_id)
        victim.kill()
        t_kill = time.monotonic()
        assert not registry.has_model(model_id)
        recover()
        requeued = wait_until(
            lambda: client.get(f"/v1/jobs/{job_id}").json()["attempts"] >= 2,
            30,
            "the job to be requeued and started again",
        )
        t_restart = time.monotonic()
        done = wait_until(
            lambda: (
                (s := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
                and s
            ),
            JOB_TIMEOUT_S,
            "the retried job to finish",
        )
    assert requeued
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["model_id"] == model_id and done["error"] is None, done
    assert ModelArtifact.load(settings.models_dir / model_id).manifest.id == model_id
    assert client.get(f"/v1/models/{model_id}").status_code == 200
    assert watch.partial == [], watch.partial
    assert not list(settings.models_dir.glob(f".{model_id}.tmp-*")), "temp dirs left behind"
    observe(
        name,
        fault=f"worker SIGKILLed at epoch {running['progress']['epoch']} of a {payload['kind']} job",
        jobs_submitted=1,
        jobs_lost=0,
        attempts=done["attempts"],
        final_status=done["status"],
        seconds_kill_to_restart=round(t_restart - t_kill, 2),
        partial_model_sightings=len(watch.partial),
        registry_polls=watch.polls,
    )


def test_killed_teacher_job_is_rerun_by_the_next_worker(
    make_settings: Callable[..., Settings], start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings()
    registry = Registry.from_url(settings.redis_url or "")
    seed_dataset(settings, registry)
    w1 = start_worker(settings, "w1")
    payload = {
        "kind": "teacher",
        "model": "mf",
        "dataset_id": "ds-rel0",
        "dim": 16,
        "epochs": 100,
        "patience": 1000,
        "eval_every": 1000,
        "batch_size": 128,
    }
    with TestClient(create_app(settings)) as client:
        # The next worker starts after the kill: it finds the stale job at startup.
        _kill_mid_job(
            client,
            registry,
            settings,
            payload,
            [w1],
            lambda: start_worker(settings, "w2"),
            "worker_sigkill_teacher",
        )
    registry.close()


def test_killed_distill_job_is_taken_over_by_a_standby_worker(
    make_settings: Callable[..., Settings], start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings()
    registry = Registry.from_url(settings.redis_url or "")
    dataset = seed_dataset(settings, registry)
    seed_model(settings, registry, dataset, "teacher-seeded", kind="teacher", dim=16)
    workers = [start_worker(settings, "a"), start_worker(settings, "b")]
    payload = {
        "kind": "distill",
        "teacher_id": "teacher-seeded",
        "method": "unkd",
        "dim": 8,
        "epochs": 100,
        "patience": 1000,
        "eval_every": 1000,
        "batch_size": 128,
        "unkd": {"pairs_per_user": 8, "top_l": 50},
    }
    with TestClient(create_app(settings)) as client:
        # The other worker is already up: its periodic reaper takes the job over.
        _kill_mid_job(
            client, registry, settings, payload, workers, lambda: None, "worker_sigkill_distill"
        )
    registry.close()
