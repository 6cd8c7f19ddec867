"""End-to-end fixtures: a real Redis database, a real Celery worker subprocess on unique
queues and the API, in two layouts (`e2e` is parametrised: every test using it runs in both).

- ``data-dir``, the local default: the worker and the API app from create_app (in this
  process, under TestClient) share one data directory, as `unkd up` runs them.
- ``s3``: every process has a data directory of its own, as if on its own host, and they
  share nothing but Redis and an S3 artifact store (UNKD_ARTIFACT_URL=s3://…, moto's server
  on loopback, tests/support/s3.py): the worker, and two API processes under uvicorn
  (tests/support/live_api.py). Every request of a test goes to API process 1; process 2 is
  there to follow publishes and read what process 1 and the worker stored. Skipped, with
  the reason, where moto or s3fs is missing.

The worker is tests.support's WorkerProcess (`celery -A worker.celery_app worker --pool=solo
-Q <unique queues>`), configured by settings_env(settings) as `unkd up` configures its worker.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.artifacts import ArtifactStore
from service.core.config import Settings
from service.core.registry import Registry
from tests.support.config import make_test_settings
from tests.support.fixtures import watch_log
from tests.support.live_api import LiveAPI
from tests.support.redis_dbs import RedisDatabases
from tests.support.s3 import S3Server
from tests.support.workers import WorkerProcess

LAYOUTS = ("data-dir", "s3")


@dataclass(frozen=True)
class E2EStack:
    """One layout's running processes, and how a test looks behind them."""

    layout: str
    settings: Settings  # the worker's (data-dir: the API's too)
    api: httpx.Client  # API process 1: every request of the flow
    replica: httpx.Client | None  # s3: API process 2, on its own data dir
    api_data_dirs: tuple[Path, ...]  # s3: the data dirs of API processes 1 and 2
    registry: Registry
    store: ArtifactStore  # the artifact store as this test process sees it (s3: its own cache)


@pytest.fixture(scope="module", params=LAYOUTS)
def e2e(
    request: pytest.FixtureRequest,
    redis_databases: RedisDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[E2EStack]:
    layout: str = request.param
    root = tmp_path_factory.mktemp(f"e2e-{layout}")
    values: dict[str, Any] = {
        "redis_url": redis_databases.reserve(),
        "data_dir": root / ("data" if layout == "data-dir" else "worker"),
        "device": "cpu",
        "reload_poll_s": 0.2,
        "job_max_retries": 0,
    }
    env: dict[str, str] = {}
    if layout == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")  # skips where moto or s3fs is missing
        values["artifact_url"], env = f"s3://{s3.make_bucket()}/artifacts", s3.env
    settings = make_test_settings("e2e", **values)
    with contextlib.ExitStack() as cleanup:
        registry = Registry.from_url(settings.redis_url or "")
        cleanup.callback(registry.close)
        worker = WorkerProcess(settings, root / "worker.log", "e2e", env)
        watch_log(request, f"e2e {layout} worker", worker.log)
        cleanup.callback(worker.stop)
        worker.start()
        if layout == "data-dir":
            api = cleanup.enter_context(TestClient(create_app(settings)))
            yield E2EStack(
                layout, settings, api, None, (), registry, ArtifactStore.from_settings(settings)
            )
            return
        patch = cleanup.enter_context(pytest.MonkeyPatch.context())
        for name, value in env.items():  # this process reads the store too (the test's checks)
            patch.setenv(name, value)
        clients, data_dirs = [], []
        for n in (1, 2):
            data_dirs.append(root / f"api-{n}")
            live = LiveAPI(
                settings.model_copy(update={"data_dir": data_dirs[-1]}),
                root / f"api-{n}.log",
                env=env,
            )
            watch_log(request, f"e2e {layout} API {n}", live.log)
            cleanup.callback(live.stop)
            live.start()
            clients.append(cleanup.enter_context(httpx.Client(base_url=live.url, timeout=30)))
        yield E2EStack(
            layout,
            settings,
            clients[0],
            clients[1],
            tuple(data_dirs),
            registry,
            ArtifactStore(settings.artifact_url, root / "tests"),
        )


@pytest.fixture(scope="module")
def e2e_settings(e2e: E2EStack) -> Settings:
    """The worker's settings (in the data-dir layout, the API's too)."""
    return e2e.settings


@pytest.fixture(scope="module")
def api(e2e: E2EStack) -> httpx.Client:
    """API process 1 (data-dir layout: the app in this process, under TestClient)."""
    return e2e.api


def wait_for(
    client: httpx.Client, job_id: str, until: Callable[[dict[str, Any]], bool], timeout_s: float
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
