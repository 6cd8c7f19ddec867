"""The Redis registry against a real redis-server: records, listing, job state machine,
and that concurrent writers (worker progress vs API cancel) never lose an update."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.core import keys
from service.core.registry import (
    ActiveModel,
    ConflictError,
    DatasetRecord,
    JobProgress,
    JobRecord,
    ModelRecord,
    NotFoundError,
    Registry,
)
from service.stack.redis_server import RedisServer


@pytest.fixture()
def registry(redis_url: str) -> Iterator[Registry]:
    reg = Registry.from_url(redis_url)  # an emptied database of its own
    yield reg
    reg.close()


def job(job_id: str, kind: str = "teacher") -> JobRecord:
    return JobRecord(id=job_id, kind=kind, output_model_id=f"m-{job_id}")  # type: ignore[arg-type]


def test_redis_server_persists_across_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r") as s:
        redis.Redis.from_url(s.url).set("k", "v")
    with RedisServer(tmp_path / "r") as s:
        assert redis.Redis.from_url(s.url).get("k") == b"v"
    assert (tmp_path / "r" / "appendonly.aof").is_file()


def test_redis_server_needs_its_password(redis_server: RedisServer) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_server.port).ping()


def test_dataset_and_model_records(registry: Registry) -> None:
    for i in range(3):
        registry.add_dataset(
            DatasetRecord(
                id=f"ds{i}", name=f"n{i}", source="synthetic", fingerprint="f", path=f"/d/{i}"
            )
        )
    items, total = registry.list_datasets(limit=2, offset=0)
    assert total == 3 and [d.id for d in items] == ["ds2", "ds1"]  # newest first
    assert [d.id for d in registry.list_datasets(limit=2, offset=2)[0]] == ["ds0"]
    with pytest.raises(NotFoundError, match="dataset_id='nope': no such dataset"):
        registry.get_dataset("nope")
    model = ModelRecord(id="m1", kind="teacher", model="mf", dim=8, path="/m/1")
    registry.add_model(model)
    assert registry.get_model("m1") == model and registry.has_model("m1")
    with pytest.raises(NotFoundError, match="teacher_id='m2'"):
        registry.get_model("m2", field="teacher_id")


def test_active_pointer_is_set_and_published(registry: Registry) -> None:
    pubsub = registry.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.SERVING_EVENTS)
    pubsub.get_message(timeout=1)
    active = ActiveModel(model_id="m1", bundle_dir="/b/m1")
    registry.set_active(active)
    assert registry.get_active() == active
    message = pubsub.get_message(timeout=2)
    assert message is not None and ActiveModel.model_validate_json(message["data"]) == active
    pubsub.close()


def test_job_lifecycle_and_filters(registry: Registry) -> None:
    for i, kind in enumerate(["teacher", "distill", "distill", "publish"]):
        registry.create_job(job(f"j{i}", kind))
    rec, run = registry.start_job("j1")
    assert run and rec.status == "running" and rec.attempts == 1 and rec.timings.started_at
    registry.update_progress("j1", JobProgress(stage="train", epoch=2, epochs=5), {"loss": 0.5})
    registry.update_progress("j1", JobProgress(stage="evaluate"), {"ndcg": 0.1})
    rec = registry.get_job("j1")
    assert (rec.progress.stage, rec.progress.epoch, rec.progress.epochs) == ("evaluate", 2, 5)
    assert rec.metrics == {"loss": 0.5, "ndcg": 0.1}
    rec = registry.finish_job("j1", "succeeded", model_id="m-j1")
    assert rec.model_id == "m-j1" and rec.timings.elapsed_s is not None

    assert registry.list_jobs(status="queued")[1] == 3
    assert [j.id for j in registry.list_jobs(kind="distill")[0]] == ["j2", "j1"]
    items, total = registry.list_jobs(status="queued", kind="distill")
    assert total == 1 and items[0].id == "j2"
    assert registry.list_jobs(status="succeeded", kind="teacher")[1] == 0
    assert registry.jobs_by_status()["succeeded"] == 1
    counts = registry.job_counts()
    assert counts[("distill", "queued")] == 2 and counts[("distill", "succeeded")] == 1


def test_redelivery_counts_attempts_and_finished_jobs_do_not_rerun(registry: Registry) -> None:
    registry.create_job(job("j"))
    registry.start_job("j")
    rec, run = registry.start_job("j")  # the worker died; the message came back
    assert run and rec.attempts == 2
    registry.finish_job("j", "succeeded", model_id="m")
    rec, run = registry.start_job("j")
    assert not run and rec.status == "succeeded" and rec.attempts == 2


def test_cancel(registry: Registry) -> None:
    registry.create_job(job("q"))
    rec = registry.request_cancel("q")
    assert rec.status == "cancelled" and rec.cancel_requested
    assert registry.start_job("q") == (registry.get_job("q"), False)  # a cancelled job never runs
    assert registry.request_cancel("q").status == "cancelled"  # idempotent

    registry.create_job(job("r"))
    registry.start_job("r")
    rec = registry.request_cancel("r")
    assert rec.status == "running" and registry.cancel_requested("r")
    registry.finish_job("r", "cancelled")
    registry.create_job(job("s"))
    registry.start_job("s")
    registry.finish_job("s", "succeeded", model_id="m")
    with pytest.raises(ConflictError, match="already succeeded"):
        registry.request_cancel("s")


def test_progress_writes_never_undo_a_cancel(registry: Registry) -> None:
    registry.create_job(job("c"))
    registry.start_job("c")

    def hammer() -> None:
        for epoch in range(200):
            registry.update_progress("c", JobProgress(stage="train", epoch=epoch, epochs=200))

    worker = threading.Thread(target=hammer)
    worker.start()
    registry.request_cancel("c")
    worker.join()
    assert registry.get_job("c").cancel_requested


def test_publish_claims(registry: Registry) -> None:
    registry.create_job(job("p1", "publish"))
    assert registry.claim_publish("m", "p1", ttl_s=60) is None
    assert registry.claim_publish("m", "p2", ttl_s=60) == "p1"
    registry.finish_job("p1", "failed", error="x")  # a finished holder is taken over
    assert registry.claim_publish("m", "p2", ttl_s=60) is None
    registry.release_publish("m", "p2")
    assert registry.claim_publish("m", "p3", ttl_s=60) is None
