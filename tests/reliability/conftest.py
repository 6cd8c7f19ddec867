"""Fault-injection fixtures: real redis-server processes, real Celery worker processes that
tests kill, the API served by uvicorn on a loopback port, and models published without
training (random embeddings over a tiny synthetic dataset) so serving tests start fast.

Every test writes what it observed (requests served and failed, jobs lost, ...) with
`observe(name, **figures)` into test-artifacts/reliability.json; bench/reliability_report.py
prints the table of docs/reliability.md from it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import uvicorn
from fastapi import FastAPI

from service.api.app import create_app
from service.core.bundle_format import build_bundle
from service.core.config import Settings
from service.core.registry import ActiveModel, DatasetRecord, ModelRecord, Registry
from service.stack.redis_server import RedisServer, free_port
from tests.e2e.conftest import worker_env
from training.checkpoint import ModelArtifact
from training.dataset import Dataset
from training.synthetic import generate_synthetic

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "test-artifacts" / "reliability.json"
WORKER_START_TIMEOUT_S = 60.0
_artifact_lock = threading.Lock()


def observe(test: str, **figures: Any) -> None:
    """Merge one test's observed figures into test-artifacts/reliability.json."""
    with _artifact_lock:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(ARTIFACT.read_text()) if ARTIFACT.is_file() else {}
        data[test] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        ARTIFACT.write_text(json.dumps(data, indent=2, sort_keys=True))


# -- Redis -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rel_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One append-only Redis for the tests that do not stop it."""
    server = RedisServer(tmp_path_factory.mktemp("rel-redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis this test may kill, freeze and restart; shipped configuration (append-only on)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.pid is not None:
        try:
            os.kill(server.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    server.stop()


def kill_redis(server: RedisServer) -> None:
    """SIGKILL: no SHUTDOWN save; only what the append-only file holds survives."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    server._terminate()  # reap it; the object keeps port and password for start()


_test_dbs = itertools.cycle(range(1, 16))  # database 0 belongs to the session `stack`


@pytest.fixture()
def test_redis_url(rel_redis: RedisServer) -> str:
    """A Redis database of its own for one test, emptied first: listings see only its records."""
    url = f"{rel_redis.url.rsplit('/', 1)[0]}/{next(_test_dbs)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture()
def make_settings(test_redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings of one test: its own data dir, queues and Redis database; fast heartbeat and reloads."""

    def make(**overrides: Any) -> Settings:
        queue = f"rel-{uuid.uuid4().hex[:8]}"
        values: dict[str, Any] = {
            "redis_url": test_redis_url, "data_dir": tmp_path / "data", "device": "cpu",
            "train_queue": f"{queue}-train", "light_queue": f"{queue}-light",
            "reload_poll_s": 0.2, "job_heartbeat_s": 0.5, "job_max_retries": 0,
            "redis_timeout_s": 2.0,
        }  # fmt: skip
        values.update(overrides)
        return Settings(**values)

    return make


# -- worker processes ----------------------------------------------------------------------


class WorkerProcess:
    """`celery -A worker.celery_app worker --pool=solo` on the settings' queues."""

    def __init__(self, settings: Settings, log: Path, name: str = "w") -> None:
        self.settings, self.log, self.name = settings, log, name
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = worker_env(self.settings)
        env.update({
            "UNKD_JOB_HEARTBEAT_S": str(self.settings.job_heartbeat_s),
            "UNKD_MAX_JOB_MEMORY_MB": str(self.settings.max_job_memory_mb),
            "UNKD_JOB_SOFT_TIME_LIMIT_S": str(self.settings.job_soft_time_limit_s),
        })  # fmt: skip
        return env

    def start(self) -> WorkerProcess:
        queues = f"{self.settings.train_queue},{self.settings.light_queue}"
        offset = self.log.stat().st_size if self.log.is_file() else 0
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
                 "-Q", queues, "--loglevel=INFO", "--without-gossip", "--without-mingle",
                 "--hostname", f"{self.name}-{uuid.uuid4().hex[:6]}@%h"],
                cwd=ROOT, env=self.env(), stdout=fh, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while b" ready." not in self.log.read_bytes()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"celery worker did not start:\n{self.tail()}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, the job's message stays unacknowledged."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.is_file() else ""


@pytest.fixture()
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes; every one still alive is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, name: str = "w") -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{name}.log", name).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


# -- the API on a loopback port ------------------------------------------------------------


class LiveAPI:
    """create_app(settings) under uvicorn in a thread of this process, on 127.0.0.1."""

    def __init__(self, app: FastAPI, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=5)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveAPI:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture()
def live_api() -> Iterator[Callable[[Settings], LiveAPI]]:
    started: list[LiveAPI] = []

    def start(settings: Settings) -> LiveAPI:
        api = LiveAPI(create_app(settings)).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- data, models and published bundles without training ---------------------------------------


def seed_dataset(settings: Settings, registry: Registry, *, n_users: int = 200, n_items: int = 150,
                 seed: int = 0) -> Dataset:  # fmt: skip
    """A tiny synthetic dataset, saved and registered under the id `ds-<seed>`."""
    dataset = generate_synthetic(n_users=n_users, n_items=n_items, dim=8, skew=1.0,
                                 interactions_per_user=15, seed=seed, name=f"rel-{seed}")  # fmt: skip
    dataset_id = f"ds-rel{seed}"
    out = dataset.save(settings.datasets_dir.resolve() / dataset_id)
    registry.add_dataset(DatasetRecord(
        id=dataset_id, name=dataset.name, source="synthetic", fingerprint=dataset.fingerprint,
        path=str(out), statistics=dataset.statistics(),
    ))  # fmt: skip
    return dataset


def seed_model(settings: Settings, registry: Registry, dataset: Dataset, model_id: str, *,
               kind: str = "student", dim: int = 8, seed: int = 1,
               dataset_id: str = "ds-rel0") -> ModelArtifact:  # fmt: skip
    """A model of random embeddings, saved and registered (no training)."""
    rng = np.random.default_rng(seed)
    artifact = ModelArtifact(
        user_emb=rng.standard_normal((dataset.n_users, dim)).astype(np.float32),
        item_emb=rng.standard_normal((dataset.n_items, dim)).astype(np.float32),
        manifest={"id": model_id, "kind": kind, "model": "mf", "method": None if kind == "teacher" else "unkd",
                  "dim": dim, "config": {}, "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint}},
    )  # fmt: skip
    out = artifact.save(settings.models_dir.resolve() / model_id)
    registry.add_model(ModelRecord(
        id=model_id, kind=kind, method=artifact.manifest["method"], model="mf", dim=dim,  # type: ignore[arg-type]
        lineage={"dataset_id": dataset_id, "teacher_id": None},
        path=str(out),
    ))  # fmt: skip
    return artifact


def publish_direct(settings: Settings, registry: Registry, dataset: Dataset, model_id: str) -> Path:
    """Build the model's bundle and move the active pointer (what a publish job does)."""
    bundle_dir = settings.bundles_dir.resolve() / model_id
    build_bundle(settings.models_dir.resolve() / model_id, dataset, bundle_dir, model_id=model_id)
    registry.set_active(ActiveModel(model_id=model_id, bundle_dir=str(bundle_dir)))
    return bundle_dir


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


@pytest.fixture()
def registry_of() -> Iterator[Callable[[Settings], Registry]]:
    made: list[Registry] = []

    def make(settings: Settings) -> Registry:
        registry = Registry.from_url(settings.redis_url or "")
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@dataclass
class Stack:
    """One worker process and one live API sharing a data dir, for the whole session."""

    settings: Settings  # the API's
    worker_settings: Settings  # the worker's: a tiny job memory budget (see test_failing_jobs)
    registry: Registry
    worker: WorkerProcess
    api: LiveAPI
    dataset: Dataset
    dataset_id: str = "ds-rel0"


STACK_WORKER_MEMORY_MB = 2


@pytest.fixture(scope="session")
def stack(rel_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    queue = f"stack-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=rel_redis.url, data_dir=root / "data", device="cpu", train_queue=f"{queue}-train",
        light_queue=f"{queue}-light", reload_poll_s=0.2, job_heartbeat_s=0.5, job_max_retries=0,
        redis_timeout_s=2.0,
    )  # fmt: skip
    worker_settings = settings.model_copy(update={"max_job_memory_mb": STACK_WORKER_MEMORY_MB})
    registry = Registry.from_url(rel_redis.url)
    dataset = seed_dataset(settings, registry)
    worker = WorkerProcess(worker_settings, root / "worker.log", "steady").start()
    api = LiveAPI(create_app(settings)).start()
    try:
        yield Stack(settings, worker_settings, registry, worker, api, dataset)
    finally:
        api.stop()
        worker.stop()
        registry.close()


os.environ.setdefault("OMP_NUM_THREADS", "1")  # two shared cores: no thread oversubscription
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per load request otherwise
