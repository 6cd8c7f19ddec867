"""Fault-injection fixtures: real redis-server processes, real Celery worker processes that
tests kill, the API served by uvicorn in its own process on a loopback port (all three from
tests/support), and models published without training (random embeddings over a tiny
synthetic dataset) so serving tests start fast.

Every test writes what it observed (requests served and failed, jobs lost, ...) with
`observe(name, **figures)` into test-artifacts/reliability.json; bench/reliability_report.py
prints the table of docs/reliability.md from it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.bundle_format import build_bundle
from service.core.config import Settings
from service.core.registry import ActiveModel, DatasetRecord, ModelRecord, Registry
from tests.support.config import make_test_settings
from tests.support.fixtures import watch_log
from tests.support.live_api import LiveAPI
from tests.support.polling import wait_until  # noqa: F401  (the reliability tests import it from here)
from tests.support.redis_dbs import RedisDatabases
from tests.support.workers import WorkerProcess
from training.checkpoint import ModelArtifact
from training.dataset import Dataset
from training.manifest import DatasetInfo, Lineage, ModelManifest
from training.synthetic import generate_synthetic

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "test-artifacts" / "reliability.json"
# Fast heartbeats and reloads, no retries, a short Redis timeout: faults show within seconds.
RELIABILITY_SETTINGS: dict[str, Any] = {
    "device": "cpu",
    "reload_poll_s": 0.2,
    "job_heartbeat_s": 0.5,
    "job_max_retries": 0,
    "redis_timeout_s": 2.0,
}
_artifact_lock = threading.Lock()


def observe(test: str, **figures: Any) -> None:
    """Merge one test's observed figures into test-artifacts/reliability.json."""
    with _artifact_lock:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(ARTIFACT.read_text()) if ARTIFACT.is_file() else {}
        data[test] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        ARTIFACT.write_text(json.dumps(data, indent=2, sort_keys=True))


# -- Redis, settings, processes: tests/support (redis_url, own_redis, start_worker, live_api) --


@pytest.fixture()
def make_settings(redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings of one test: its own data dir, queues and Redis database; fast heartbeat and reloads."""

    def make(**overrides: Any) -> Settings:
        return make_test_settings(
            "rel",
            **{
                **RELIABILITY_SETTINGS,
                "redis_url": redis_url,
                "data_dir": tmp_path / "data",
                **overrides,
            },
        )

    return make


# -- data, models and published bundles without training ---------------------------------------


def seed_dataset(
    settings: Settings, registry: Registry, *, n_users: int = 200, n_items: int = 150, seed: int = 0
) -> Dataset:
    """A tiny synthetic dataset, saved and registered under the id `ds-<seed>`."""
    dataset = generate_synthetic(
        n_users=n_users,
        n_items=n_items,
        dim=8,
        skew=1.0,
        interactions_per_user=15,
        seed=seed,
        name=f"rel-{seed}",
    )
    dataset_id = f"ds-rel{seed}"
    out = dataset.save(settings.datasets_dir.resolve() / dataset_id)
    registry.add_dataset(
        DatasetRecord(
            id=dataset_id,
            name=dataset.name,
            source="synthetic",
            fingerprint=dataset.fingerprint,
            path=str(out),
            statistics=dataset.statistics(),
        )
    )
    return dataset


def seed_model(
    settings: Settings,
    registry: Registry,
    dataset: Dataset,
    model_id: str,
    *,
    kind: str = "student",
    dim: int = 8,
    seed: int = 1,
    dataset_id: str = "ds-rel0",
) -> ModelArtifact:
    """A model of random embeddings, saved and registered (no training)."""
    rng = np.random.default_rng(seed)
    artifact = ModelArtifact(
        user_emb=rng.standard_normal((dataset.n_users, dim)).astype(np.float32),
        item_emb=rng.standard_normal((dataset.n_items, dim)).astype(np.float32),
        manifest=ModelManifest(
            id=model_id,
            kind=kind,
            model="mf",
            method=None if kind == "teacher" else "unkd",  # type: ignore[arg-type]
            dim=dim,
            dataset=DatasetInfo(name=dataset.name, fingerprint=dataset.fingerprint),
        ),
    )
    out = artifact.save(settings.models_dir.resolve() / model_id)
    registry.add_model(
        ModelRecord(
            id=model_id,
            kind=kind,
            method=artifact.manifest.method,
            model="mf",
            dim=dim,  # type: ignore[arg-type]
            lineage=Lineage(dataset_id=dataset_id),
            path=str(out),
        )
    )
    return artifact


def publish_direct(settings: Settings, registry: Registry, dataset: Dataset, model_id: str) -> Path:
    """Build the model's bundle and move the active pointer (what a publish job does)."""
    bundle_dir = settings.bundles_dir.resolve() / model_id
    build_bundle(settings.models_dir.resolve() / model_id, dataset, bundle_dir, model_id=model_id)
    registry.set_active(ActiveModel(model_id=model_id, bundle_dir=str(bundle_dir)))
    return bundle_dir


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
def stack(
    request: pytest.FixtureRequest,
    redis_databases: RedisDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    redis_url = redis_databases.reserve()
    settings = make_test_settings(
        "stack", **RELIABILITY_SETTINGS, redis_url=redis_url, data_dir=root / "data"
    )
    worker_settings = settings.model_copy(update={"max_job_memory_mb": STACK_WORKER_MEMORY_MB})
    registry = Registry.from_url(redis_url)
    dataset = seed_dataset(settings, registry)
    worker = WorkerProcess(worker_settings, root / "worker.log", "steady")
    api = LiveAPI(settings, root / "api.log")
    watch_log(request, "stack worker", worker.log)
    watch_log(request, "stack API", api.log)
    try:
        worker.start()
        api.start()
        yield Stack(settings, worker_settings, registry, worker, api, dataset)
    finally:
        api.stop()
        worker.stop()
        registry.close()


os.environ.setdefault("OMP_NUM_THREADS", "1")  # two shared cores: no thread oversubscription
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per load request otherwise
