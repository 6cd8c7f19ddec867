"""The Redis registry against a real redis-server: records, listing, job state machine,
and that concurrent writers (worker progress vs API cancel) never lose an update."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from service.core import keys
from service.core.records import Experiment, ExperimentArm, PublishEntry, StagedBundle
from service.core.registry import (
    ActiveModel,
    ConflictError,
    DatasetRecord,
    JobProgress,
    JobRecord,
    ModelRecord,
    NotFoundError,
    Registry,
    utcnow,
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


def test_the_registry_writes_the_documented_key_names(registry: Registry) -> None:
    """The layout keys.py documents, spelled out here: other tools read these keys by name."""
    registry.add_dataset(
        DatasetRecord(id="d1", name="n", source="synthetic", fingerprint="f", path="/d")
    )
    registry.add_model(ModelRecord(id="m1", kind="teacher", model="mf", dim=8, path="/m/1"))
    registry.create_job(job("j1"))
    assert registry.claim_publish("m1", "j1", ttl_s=60) is None
    assert sorted(registry.redis.keys("unkd:*")) == [
        "unkd:dataset:d1",
        "unkd:datasets",
        "unkd:job:j1",
        "unkd:jobs",
        "unkd:jobs:kind:teacher",
        "unkd:jobs:status:queued",
        "unkd:model:m1",
        "unkd:model:m1:publishing",
        "unkd:models",
        "unkd:stats:jobs",
    ]


def experiment(*model_ids: str) -> Experiment:
    arms = [
        ExperimentArm(model_id=m, weight=1 / len(model_ids), bundle_dir=f"/b/{m}")
        for m in model_ids
    ]
    return Experiment(arms=arms, salt="s", started_at=utcnow(), started_by="alice")


def next_message(pubsub: redis.client.PubSub, timeout_s: float = 3.0) -> dict | None:
    """The next published message (subscribe confirmations are skipped: they read as None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    return None


def test_experiment_is_stored_published_read_and_ended(registry: Registry) -> None:
    pubsub = registry.serving_events()
    assert registry.get_experiment() is None and registry.end_experiment() is None
    spec = experiment("m1", "m2")
    registry.start_experiment(spec)
    assert registry.get_experiment() == spec
    assert registry.redis.get("unkd:serving:experiment") == spec.model_dump_json()
    message = next_message(pubsub)
    assert message is not None and message["channel"] == "unkd:serving:experiment:events"
    state = registry.serving_state()
    assert state.active_json is None and state.experiment() == spec
    assert registry.end_experiment() == spec
    assert registry.get_experiment() is None and registry.serving_state().experiment_json is None
    message = next_message(pubsub)
    assert message is not None and message["data"] == ""
    pubsub.close()


def test_serving_state_reads_the_pointer_as_stored(registry: Registry) -> None:
    active = ActiveModel(model_id="m1", bundle_dir="/b/m1")
    registry.set_active(active)
    state = registry.serving_state()
    assert state.active() == active and state.active_json == registry.redis.get(keys.ACTIVE_MODEL)
    registry.redis.set(keys.ACTIVE_MODEL, "{not json")
    with pytest.raises(ValidationError):
        registry.serving_state().active()


def test_newest_bundle_of_a_model(registry: Registry) -> None:
    """The active pointer's bundle first, then a staged one, then the newest publish."""
    assert registry.newest_bundle("m1") is None
    for bundle in ("/b/m1-old", "/b/m1-new"):
        registry.record_publish(PublishEntry(model_id="m1", bundle_dir=bundle))
    registry.record_publish(PublishEntry(model_id="m2", bundle_dir="/b/m2"))
    assert registry.newest_bundle("m1") == "/b/m1-new"
    registry.record_staged(StagedBundle(model_id="m1", bundle_dir="/b/m1-staged"))
    assert registry.newest_bundle("m1") == "/b/m1-staged"
    assert registry.newest_bundle("m2") == "/b/m2"  # served: its pointer
    assert registry.newest_bundle("m3") is None


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
