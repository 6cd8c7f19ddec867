"""End-to-end fixtures: a real Redis, a real Celery worker subprocess on unique queues,
and the API app from create_app, all sharing one data directory.

The worker is `celery -A worker.celery_app worker --pool=solo -Q <unique queues>`,
configured through the same UNKD_* variables that `unkd worker` reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from service.stack.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def e2e_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("e2e-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def e2e_settings(e2e_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    return Settings(
        redis_url=e2e_redis.url, data_dir=tmp_path_factory.mktemp("e2e-data"),
        train_queue=f"{queue}-train", light_queue=f"{queue}-light", device="cpu",
        reload_poll_s=0.2, job_max_retries=0,
    )  # fmt: skip


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "UNKD_REDIS_URL": settings.redis_url or "", "UNKD_DATA_DIR": str(settings.data_dir),
        "UNKD_TRAIN_QUEUE": settings.train_queue, "UNKD_LIGHT_QUEUE": settings.light_queue,
        "UNKD_DEVICE": settings.device, "UNKD_JOB_MAX_RETRIES": str(settings.job_max_retries),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    return env


@pytest.fixture(scope="session")
def worker(e2e_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path_factory.mktemp("e2e-worker") / "worker.log"
    queues = f"{e2e_settings.train_queue},{e2e_settings.light_queue}"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
             "-Q", queues, "--loglevel=INFO", "--without-gossip", "--without-mingle",
             "--hostname", f"e2e-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=worker_env(e2e_settings), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while b" ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"celery worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    print(f"\n--- worker log tail ({log}) ---\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def api(e2e_settings: Settings, worker: subprocess.Popen[bytes]) -> Iterator[TestClient]:
    with TestClient(create_app(e2e_settings)) as client:
        yield client


def wait_for(
    client: TestClient, job_id: str, until: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until `until(status)` holds; fail with the last status."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if until(body):
            return body
        time.sleep(0.05)
    pytest.fail(f"job {job_id} timed out after {timeout_s}s; last status {body}")
