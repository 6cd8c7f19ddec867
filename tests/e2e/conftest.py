"""End-to-end fixtures: a database of the session's real Redis, a real Celery worker
subprocess on unique queues, and the API app from create_app, all sharing one data directory.

The worker is tests.support's WorkerProcess (`celery -A worker.celery_app worker --pool=solo
-Q <unique queues>`), configured by settings_env(settings) as `unkd up` configures its worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from tests.support.config import make_test_settings
from tests.support.fixtures import watch_log
from tests.support.redis_dbs import RedisDatabases
from tests.support.workers import WorkerProcess


@pytest.fixture(scope="session")
def e2e_settings(redis_databases: RedisDatabases, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_test_settings(
        "e2e", redis_url=redis_databases.reserve(), data_dir=tmp_path_factory.mktemp("e2e-data"),
        device="cpu", reload_poll_s=0.2, job_max_retries=0,
    )  # fmt: skip


@pytest.fixture(scope="session")
def worker(
    request: pytest.FixtureRequest, e2e_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(e2e_settings, tmp_path_factory.mktemp("e2e-worker") / "worker.log", "e2e")
    watch_log(request, "e2e worker", worker.log)
    yield worker.start()
    worker.stop()


@pytest.fixture(scope="session")
def api(e2e_settings: Settings, worker: WorkerProcess) -> Iterator[TestClient]:
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
