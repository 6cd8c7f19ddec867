"""Lost-worker recovery and job bounds, with task bodies called as plain functions (real
Redis, pipelines monkeypatched): the heartbeat lease, the reaper, a lease lost mid-job,
MemoryError, stale temp dirs and the memory budget estimate."""

# ruff: noqa: F811 - the fixtures of test_worker_tasks are imported and then requested by name

from __future__ import annotations

import time

import pytest
from celery.exceptions import Retry

from service.core import keys
from service.core.payloads import DistillPayload, new_job
from service.core.registry import JobRecord
from tests.unit.test_worker_tasks import (  # noqa: F401 - fixtures
    FakeTask,
    dataset,
    fake_train,
    registry,
    settings,
    teacher_job,
)
from training import pipelines
from training.budget import MemoryBudgetError, check_distill, check_teacher, lists_mapped
from training.config import DistillConfig, TeacherConfig
from worker import jobs
from worker.jobs import JobType
from worker.recovery import JobLease, reap_lost_jobs
from worker.training_jobs import DISTILL_JOB, TEACHER_JOB


def test_a_job_whose_lease_is_held_elsewhere_is_not_run_twice(
    monkeypatch, settings, registry, dataset
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls))
    teacher_job(registry)
    other = JobLease(registry.redis, "j1", settings)
    assert other.acquire()  # another live worker runs it
    try:
        summary = jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    finally:
        other.release()
    assert summary["status"] == "running" and calls == []
    assert registry.get_job("j1").attempts == 0
    assert not registry.redis.exists(keys.job_lease("j1"))  # released: a later delivery may run it


def test_lease_is_refreshed_while_the_job_runs_and_released_after(settings, registry) -> None:
    settings = settings.model_copy(update={"job_heartbeat_s": 0.1})
    lease = JobLease(registry.redis, "jx", settings)
    assert lease.acquire()
    time.sleep(0.5)  # past the 0.3s TTL: only the refreshes keep it alive
    assert registry.redis.exists(keys.job_lease("jx")) and not lease.lost
    lease.release()
    assert not registry.redis.exists(keys.job_lease("jx"))


def test_reaper_requeues_running_jobs_without_a_lease_only(settings, registry) -> None:
    for job_id in ("dead", "alive"):
        registry.create_job(JobRecord(id=job_id, kind="teacher"))
        registry.start_job(job_id)
    live = JobLease(registry.redis, "alive", settings)
    assert live.acquire()
    resent: list[tuple[str, str]] = []
    try:
        recovered = reap_lost_jobs(
            registry,
            settings,
            FakeTask(settings).app,
            lambda job_id, kind: resent.append((job_id, kind)),
        )
        # A second reaper (another worker starting at the same moment) does nothing.
        again = reap_lost_jobs(registry, settings, FakeTask(settings).app, lambda *_: None)
    finally:
        live.release()
    assert recovered == ["dead"] and resent == [
        ("dead", "teacher")
    ]  # no unacked message: a new one
    assert again == []
    dead, alive = registry.get_job("dead"), registry.get_job("alive")
    assert dead.status == "queued" and "worker lost" in (dead.error or "")
    assert alive.status == "running"


def test_a_job_that_lost_its_lease_stops_without_recording(
    monkeypatch, settings, registry, dataset
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls))
    acquire = JobLease.acquire

    def acquire_then_lose(self: JobLease) -> bool:
        taken = acquire(self)
        self.lost = True  # as if the heartbeat thread had found the lease expired
        return taken

    monkeypatch.setattr(JobLease, "acquire", acquire_then_lose)
    teacher_job(registry)
    summary = jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    assert summary["status"] == "lost"
    job = registry.get_job("j1")
    assert job.status == "running" and job.model_id is None  # the run that took over records it
    assert not (settings.models_dir / "teacher-j1").exists()


def test_memory_error_fails_the_job_without_retry(monkeypatch, settings, registry, dataset) -> None:
    def oom(*_args, **_kwargs):
        raise MemoryError("cannot allocate 64 GiB")

    monkeypatch.setattr(pipelines, "train_teacher", oom)
    teacher_job(registry)
    task = FakeTask(settings)
    summary = jobs.run_job(task, "j1", TEACHER_JOB)
    assert (
        summary["status"] == "failed"
        and summary["error"] == "out of memory: cannot allocate 64 GiB"
    )
    assert task.retries == []


def test_stale_temp_dirs_of_an_interrupted_attempt_are_removed(
    monkeypatch, settings, registry, dataset
) -> None:
    monkeypatch.setattr(pipelines, "train_teacher", fake_train([]))
    stale = settings.models_dir.resolve() / ".teacher-j1.tmp-abc123"
    stale.mkdir(parents=True)
    (stale / "embeddings.npz").write_bytes(b"half written")
    teacher_job(registry)
    assert jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)["status"] == "succeeded"
    assert not stale.exists()


def test_a_fanned_out_jobs_shards_outlive_a_retry_and_not_the_job(settings, registry) -> None:
    """Shards kept for the retry of a transient failure are removed once the job gives up."""
    from worker.shards import shards_root

    def no_space(_ctx: object) -> str:
        raise OSError(28, "No space left on device")

    no_space_job = JobType(DistillPayload, no_space, ended=DISTILL_JOB.ended)
    payload = DistillPayload(teacher_id="t", config=DistillConfig(method="unkd"))
    registry.create_job(new_job("jd", payload, output_model_id="student-jd"))
    shard = shards_root(settings, "jd") / "shard-00000"
    shard.mkdir(parents=True)
    with pytest.raises(Retry):
        jobs.run_job(FakeTask(settings), "jd", no_space_job)
    assert shard.is_dir()  # the retry ranks only the shards that are missing
    summary = jobs.run_job(FakeTask(settings, retries=settings.job_max_retries), "jd", no_space_job)
    assert summary["status"] == "failed" and summary["error"].startswith("gave up after")
    assert not shards_root(settings, "jd").exists()


def test_worker_refuses_a_job_over_its_memory_budget(
    monkeypatch, settings, registry, dataset
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls))
    settings = settings.model_copy(update={"max_job_memory_mb": 1})
    monkeypatch.setattr(jobs, "settings_of", lambda _app: settings)
    teacher_job(registry, dim=4096)
    summary = jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    assert summary["status"] == "failed" and calls == []
    assert summary["error"].startswith(
        "dim: a mf teacher of dim=4096 over 20 users x 30 items needs about"
    )


def test_budget_estimates_name_the_parameter_to_lower() -> None:
    limit = 64 * 2**20
    assert check_teacher(1000, 1000, TeacherConfig(model="mf", dim=64), limit) < limit
    with pytest.raises(
        MemoryBudgetError, match=r"^dim: .* over the max_job_memory_mb=64 MiB limit"
    ):
        check_teacher(1_000_000, 100_000, TeacherConfig(model="mf", dim=64), limit)
    # UnKD keeps groups x top_l teacher candidates per user: that is what to lower here.
    cfg = DistillConfig(dim=8, unkd={"groups": 4, "top_l": 100_000})
    with pytest.raises(MemoryBudgetError) as err:
        check_distill(100_000, 50_000, cfg, teacher_dim=8, limit_bytes=limit)
    assert err.value.field == "unkd.top_l"
    # A job that fans out keeps its lists on disk (memory-mapped shards): they are not counted,
    # except for RRD, which reads them into memory.
    limit = 2 * 2**30
    cfg = DistillConfig(dim=10, unkd={"top_l": 500})
    assert lists_mapped(1_000_000, cfg, fanout_min_users=200_000)
    assert not lists_mapped(100_000, cfg, fanout_min_users=200_000)
    assert not lists_mapped(1_000_000, DistillConfig(method="rrd"), fanout_min_users=200_000)
    with pytest.raises(MemoryBudgetError):  # 1M x 2,000 int32 entries in memory: 7.5 GiB
        check_distill(1_000_000, 20_000, cfg, teacher_dim=64, limit_bytes=limit)
    assert (
        check_distill(1_000_000, 20_000, cfg, teacher_dim=64, limit_bytes=limit, mapped=True)
        < limit
    )
    lightgcn = TeacherConfig(dim=64, model="lightgcn", n_layers=3)
    assert check_teacher(1000, 1000, lightgcn, 2**40) > check_teacher(
        1000, 1000, TeacherConfig(model="mf", dim=64), 2**40
    )
