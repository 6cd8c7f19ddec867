"""Jobs that fan out (worker/fanout.py): a distill job over more than fanout_min_users
users ranks its teacher's candidates in shards that every worker takes, through real
Celery worker processes and a real Redis; small thresholds make a 3,000-user job 6 shards.

Shards are made slow enough to share (a few users per scoring chunk) so that two workers
both take some.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core import keys
from service.core.artifacts import ArtifactStore, dataset_key, model_key
from service.core.config import Settings
from service.core.registry import DatasetRecord, ModelRecord, Registry
from tests.support.config import make_test_settings
from tests.support.s3 import S3Server
from tests.support.workers import WorkerProcess
from training.checkpoint import ModelArtifact
from training.config import DistillConfig
from training.dataset import Dataset
from training.evaluation import evaluated_users
from training.manifest import DatasetInfo, Lineage, ModelManifest
from training.pipelines import distill_student
from training.synthetic import generate_synthetic
from worker.shards import scratch_prefix, shards_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

N_USERS, SHARD_USERS = 3000, 500  # 6 shards
JOB_TIMEOUT_S = 150
PAYLOAD: dict[str, Any] = {
    "kind": "distill",
    "teacher_id": "teacher-fan",
    "method": "unkd",
    "dim": 8,
    "epochs": 3,
    "batch_size": 512,
    "seed": 7,
    "unkd": {"pairs_per_user": 8, "top_l": 40},
}


def fanout_settings(redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values = {
        "redis_url": redis_url,
        "data_dir": data_dir,
        "device": "cpu",
        "job_max_retries": 0,
        "fanout_min_users": 1000,
        "fanout_shard_users": SHARD_USERS,
        "fanout_chunk_users": 2,
    }
    return make_test_settings("fan", **{**values, **overrides})


def seed_teacher(settings: Settings, registry: Registry) -> tuple[Dataset, Path]:
    """A 3,000-user dataset and a random MF teacher over it, saved and registered."""
    dataset = generate_synthetic(
        n_users=N_USERS, n_items=300, dim=8, skew=1.0, interactions_per_user=15, seed=0, name="fan"
    )
    out = dataset.save(settings.datasets_dir.resolve() / "ds-fan")
    registry.add_dataset(
        DatasetRecord(
            id="ds-fan",
            name=dataset.name,
            source="synthetic",
            fingerprint=dataset.fingerprint,
            path=str(out),
            statistics=dataset.statistics(),
        )
    )
    rng = np.random.default_rng(1)
    teacher = ModelArtifact(
        user_emb=rng.standard_normal((dataset.n_users, 16)).astype(np.float32),
        item_emb=rng.standard_normal((dataset.n_items, 16)).astype(np.float32),
        manifest=ModelManifest(
            id="teacher-fan",
            kind="teacher",
            model="mf",
            dim=16,
            dataset=DatasetInfo(name=dataset.name, fingerprint=dataset.fingerprint),
        ),
    )
    path = teacher.save(settings.models_dir.resolve() / "teacher-fan")
    registry.add_model(
        ModelRecord(
            id="teacher-fan",
            kind="teacher",
            model="mf",
            dim=16,
            lineage=Lineage(dataset_id="ds-fan"),
            path=str(path),
        )
    )
    return dataset, path


def shard_runs(
    registry: Registry, job_id: str, phase: str = "candidates"
) -> tuple[Counter[int], list[tuple[int, str]]]:
    """How often each shard's ranking started, and (shard, worker) of every start."""
    starts = Counter(
        {
            int(k): int(v)
            for k, v in registry.redis.hgetall(keys.fanout_shards(job_id, phase, "starts")).items()
        }
    )
    entries = [
        e.decode() if isinstance(e, bytes) else e
        for e in registry.redis.lrange(keys.fanout_shards(job_id, phase, "log"), 0, -1)
    ]
    log = [(int(s), w) for s, w in (e.split(" ", 1) for e in entries)]
    return starts, log


def same_report(a: ModelArtifact, b: ModelArtifact) -> bool:
    """The quality reports agree on every figure (metrics, groups, CIs, the teacher's deltas)."""
    assert a.report is not None and b.report is not None
    ra, rb = a.report.model_dump(mode="json"), b.report.model_dump(mode="json")
    for key in ("users_evaluated", "metrics", "groups", "ci", "teacher"):
        assert ra.get(key) == rb.get(key), key
    return True


def run_job(
    client: TestClient,
    payload: dict[str, Any],
    timeout_s: float = JOB_TIMEOUT_S,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=payload)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if on_status is not None:
            on_status(status)
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return dict(status)
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish in {timeout_s}s (a deadlock?)")


def _candidate_progress(seen: list[tuple[int, int]]) -> Callable[[dict[str, Any]], None]:
    def watch(status: dict[str, Any]) -> None:
        p = status["progress"]
        if p["stage"] == "candidates" and p["epochs"]:
            seen.append((p["epoch"], p["epochs"]))

    return watch


def test_a_large_distill_job_shares_its_shards_between_two_workers(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = fanout_settings(redis_url, tmp_path / "data")
    registry = Registry.from_url(redis_url)
    dataset, teacher_dir = seed_teacher(settings, registry)
    workers = [start_worker(settings, "a"), start_worker(settings, "b")]
    seen: list[tuple[int, int]] = []
    with TestClient(create_app(settings)) as client:
        done = run_job(client, PAYLOAD, on_status=_candidate_progress(seen))
    assert done["status"] == "succeeded", done
    job_id, model_id = done["id"], done["model_id"]
    starts, log = shard_runs(registry, job_id)
    assert sorted(starts) == list(range(6)) and set(starts.values()) == {1}, starts  # each once
    by_worker = Counter(w.split("@")[0].split("-")[0] for _, w in log)
    assert set(by_worker) == {"a", "b"}, f"both workers rank shards: {log}"
    assert seen and all(n == 6 for _, n in seen) and max(d for d, _ in seen) >= 1, seen
    assert not shards_root(settings, job_id).exists(), "the job's shards are removed when it ends"

    # The same job without fan-out, in this process: the same candidate lists, the same student.
    job = registry.get_job(job_id)
    cfg = DistillConfig.model_validate(job.params["config"])
    one = distill_student(dataset, teacher_dir, cfg, tmp_path / "one", device=torch.device("cpu"))
    fanned = ModelArtifact.load(settings.models_dir / model_id)
    assert np.array_equal(fanned.user_emb, one.user_emb) and np.array_equal(
        fanned.item_emb, one.item_emb
    )
    # Its report, ranked in evaluation shards by both workers, is the one-process report.
    assert same_report(fanned, one)
    eval_starts, eval_log = shard_runs(registry, job_id, "evaluate")
    n_eval = -(-len(evaluated_users(dataset, "test")) // SHARD_USERS)  # users with a test positive
    assert (
        n_eval > 1
        and sorted(eval_starts) == list(range(n_eval))
        and set(eval_starts.values()) == {1}
    ), eval_starts
    assert fanned.manifest.training is not None and one.manifest.training is not None
    assert fanned.manifest.training.candidate_bytes == one.manifest.training.candidate_bytes
    for w in workers:
        assert w.alive()
    registry.close()


def test_workers_on_separate_hosts_share_shards_through_the_store(
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    s3_server: S3Server,
    s3_env: dict[str, str],
) -> None:
    """With an artifact URL each worker has its own data dir: a shard ranked on one host is
    uploaded to the store's scratch and fetched by the parent; the scratch goes with the job."""
    url = f"s3://{s3_server.make_bucket()}/artifacts"
    api_settings = fanout_settings(redis_url, tmp_path / "api-host", artifact_url=url)
    hosts = [
        api_settings.model_copy(update={"data_dir": tmp_path / name})
        for name in ("host-a", "host-b")
    ]
    registry = Registry.from_url(redis_url)
    dataset, _ = seed_teacher(api_settings, registry)
    store = ArtifactStore.from_settings(api_settings)
    for record, key in (
        (registry.get_dataset("ds-fan"), dataset_key("ds-fan")),
        (registry.get_model("teacher-fan"), model_key("teacher-fan")),
    ):
        location = store.commit(key, Path(record.path))
        update = record.model_copy(update={"path": location})
        registry.add_dataset(update) if key.startswith("datasets/") else registry.add_model(update)  # type: ignore[arg-type]
    workers = [start_worker(hosts[0], "a", env=s3_env), start_worker(hosts[1], "b", env=s3_env)]
    seen: list[tuple[int, int]] = []
    with TestClient(create_app(api_settings)) as client:
        done = run_job(client, PAYLOAD, on_status=_candidate_progress(seen))
    assert done["status"] == "succeeded", done
    job_id = done["id"]
    starts, log = shard_runs(registry, job_id)
    assert sorted(starts) == list(range(6)) and set(starts.values()) == {1}, starts
    assert {w.split("@")[0].split("-")[0] for _, w in log} == {"a", "b"}, (
        f"both hosts rank shards: {log}"
    )
    assert seen and all(n == 6 for _, n in seen) and max(d for d, _ in seen) >= 1, seen
    written = [d for d, _ in seen]
    assert written == sorted(written), f"progress counts the shards of every host: {seen}"
    assert store.complete_keys(scratch_prefix(job_id)) == set(), (
        "the job's scratch is deleted when it ends"
    )
    for host in hosts:
        assert not shards_root(host, job_id).exists()

    # The same student as one process ranking every list itself.
    cfg = DistillConfig.model_validate(registry.get_job(job_id).params["config"])
    teacher_dir = store.resolve(registry.get_model("teacher-fan").path)
    one = distill_student(dataset, teacher_dir, cfg, tmp_path / "one", device=torch.device("cpu"))
    fanned = ModelArtifact.load(store.resolve(registry.get_model(done["model_id"]).path))
    assert np.array_equal(fanned.user_emb, one.user_emb) and np.array_equal(
        fanned.item_emb, one.item_emb
    )
    assert same_report(fanned, one)
    eval_starts, eval_log = shard_runs(registry, job_id, "evaluate")
    n_eval = -(-len(evaluated_users(dataset, "test")) // SHARD_USERS)  # users with a test positive
    assert (
        n_eval > 1
        and sorted(eval_starts) == list(range(n_eval))
        and set(eval_starts.values()) == {1}
    ), eval_starts
    for w in workers:
        assert w.alive()
    registry.close()


def test_one_worker_runs_a_fanned_out_job_alone(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The parent ranks every shard itself: no deadlock on a --pool=solo worker."""
    settings = fanout_settings(redis_url, tmp_path / "data", fanout_chunk_users=256)
    registry = Registry.from_url(redis_url)
    seed_teacher(settings, registry)
    worker = start_worker(settings, "solo")
    with TestClient(create_app(settings)) as client:
        done = run_job(client, PAYLOAD, timeout_s=90)
        assert done["status"] == "succeeded", done
        starts, log = shard_runs(registry, done["id"])
        assert sorted(starts) == list(range(6)) and set(starts.values()) == {1}, starts
        assert {w.split("@")[0].rsplit("-", 1)[0] for _, w in log} == {"solo"}
        # The group's tasks run after the job and find nothing to rank.
        time.sleep(1.0)
        assert shard_runs(registry, done["id"])[0] == starts
        assert "unkd.candidate_shard" in worker.log.read_text()
        assert not shards_root(settings, done["id"]).exists()
    registry.close()
