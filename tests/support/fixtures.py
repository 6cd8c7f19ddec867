"""Fixtures for every suite (loaded by tests/conftest.py): Redis, workers, the live API.

When a test fails, the logs of the worker and API processes it ran (and of the suite's
long-lived ones) are added to its report, the way pytest shows captured output.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from service.core.config import Settings
from service.stack.redis_server import RedisServer
from tests.support.live_api import LiveAPI
from tests.support.processes import log_tail
from tests.support.redis_dbs import RedisDatabases, resume_redis
from tests.support.workers import BeatProcess, WorkerProcess

pytest_plugins = ["tests.support.s3"]  # s3_server, s3_env: moto's S3 server for the artifact store

# Logs to show when a test fails: on the test item (label, log), and on the session
# (fixture name, label, log) for processes that outlive one test.
TEST_LOGS = pytest.StashKey[list[tuple[str, Path]]]()
FIXTURE_LOGS = pytest.StashKey[list[tuple[str, str, Path]]]()


def watch_log(request: pytest.FixtureRequest, label: str, log: Path) -> None:
    """Show the tail of `log` in the report of a failing test: the test of this
    function-scoped fixture, or every test using this longer-lived one (a suite's stack)."""
    if request.scope == "function":
        request.node.stash.setdefault(TEST_LOGS, []).append((label, log))
    else:
        name = request.fixturename or ""
        request.session.stash.setdefault(FIXTURE_LOGS, []).append((name, label, log))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        used = set(getattr(item, "fixturenames", ()))
        logs = [
            (label, log)
            for name, label, log in item.session.stash.get(FIXTURE_LOGS, [])
            if name in used
        ]
        for label, log in logs + item.stash.get(TEST_LOGS, []):
            report.sections.append((f"Captured {label} log (tail of {log})", log_tail(log)))
    return report


# -- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's one redis-server on loopback, append-only as shipped; never stopped by a test."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_databases(redis_server: RedisServer) -> RedisDatabases:
    """The databases of the session's Redis: reserve() one for a session, fresh() one per test."""
    return RedisDatabases(redis_server)


@pytest.fixture()
def redis_url(redis_databases: RedisDatabases) -> str:
    """A database of the session's Redis for this test alone, emptied first."""
    return redis_databases.fresh()


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, append-only as shipped: it may kill (kill_redis),
    freeze (SIGSTOP) and restart (start()) it; thawed and stopped afterwards."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    resume_redis(server)
    server.stop()


# -- worker and API processes --------------------------------------------------------------------


@pytest.fixture()
def start_worker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """start_worker(settings, name="w", env=None): a started worker process, logging to
    tmp_path/worker-<name>.log; every one still alive is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(
        settings: Settings, name: str = "w", env: dict[str, str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{name}.log", name, env)
        watch_log(request, f"worker {name}", worker.log)
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture()
def live_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., LiveAPI]]:
    """live_api(settings, ready="/healthz", env=None): the API in a child process, once GET
    `ready` answers 200 (ready=None: just spawned); every one is stopped after the test."""
    started: list[LiveAPI] = []

    def start(
        settings: Settings, ready: str | None = "/healthz", env: dict[str, str] | None = None
    ) -> LiveAPI:
        api = LiveAPI(settings, tmp_path / f"api-{len(started)}.log", env=env)
        watch_log(request, f"API {len(started)}", api.log)
        started.append(api)
        return api.start(ready) if ready is not None else api.spawn()

    yield start
    for api in started:
        api.stop()


@pytest.fixture()
def start_beat(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., BeatProcess]]:
    """start_beat(settings, name="beat"): a started scheduler (celery beat) logging to
    tmp_path/<name>.log; every one is stopped after the test."""
    started: list[BeatProcess] = []

    def start(settings: Settings, name: str = "beat") -> BeatProcess:
        beat = BeatProcess(settings, tmp_path / f"{name}.log")
        watch_log(request, name, beat.log)
        started.append(beat.start())
        return beat

    yield start
    for beat in started:
        beat.stop()
