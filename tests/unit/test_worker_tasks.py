"""Task bodies called as plain functions with training.pipelines monkeypatched: status
bookkeeping, progress, cancellation, no retry for deterministic errors, retry (and
attempts > 1) for transient ones, idempotent redelivery. Real Redis, no Celery worker.

The fake pipelines leave on disk what an interrupted real one can (a model directory cut
short, atomic_dir's temp sibling of a killed save), so "no model left" checks the
worker's cleanup rather than a directory that was never written."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from celery.exceptions import Retry

from service.core.config import Settings
from service.core.queue import make_celery
from service.core.registry import DatasetRecord, JobProgress, JobRecord, Registry
from tests.report_samples import sample_report
from training import pipelines
from training.artifacts import atomic_dir
from training.checkpoint import EMBEDDINGS, MANIFEST, ModelArtifact
from training.errors import ConfigError, JobCancelled
from training.manifest import DatasetInfo, Lineage, ModelManifest, QualityReport
from training.progress import ProgressEvent
from training.synthetic import generate_synthetic
from worker import jobs
from worker.progress import JobReporter, StopCheck
from worker.training_jobs import TEACHER_JOB


@pytest.fixture()
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path, device="cpu", job_max_retries=2)


@pytest.fixture()
def registry(settings: Settings) -> Registry:
    return jobs.registry_for(settings)  # redis_url: an emptied database of its own


@pytest.fixture()
def dataset(settings: Settings, registry: Registry):
    ds = generate_synthetic(n_users=20, n_items=30, interactions_per_user=6, dim=4)
    path = ds.save(settings.datasets_dir / "ds-1")
    registry.add_dataset(
        DatasetRecord(
            id="ds-1", name="s", source="synthetic", fingerprint=ds.fingerprint, path=str(path)
        )
    )
    return ds


class FakeTask:
    """What run_job uses of a bound Celery task."""

    def __init__(self, settings: Settings, retries: int = 0) -> None:
        self.app = make_celery(settings, set_as_current=False)
        self.request = SimpleNamespace(id=None, retries=retries)
        self.retries: list[int] = []

    def retry(self, exc: BaseException, countdown: int) -> Retry:
        self.retries.append(countdown)
        return Retry(exc=exc, when=countdown)


def teacher_job(registry: Registry, job_id: str = "j1", **config: Any) -> JobRecord:
    job = JobRecord(
        id=job_id,
        kind="teacher",
        output_model_id=f"teacher-{job_id}",
        params={"dataset_id": "ds-1", "config": {"model": "mf", "dim": 4, "epochs": 3, **config}},
    )
    return registry.create_job(job)


def write_partial_model(out_dir: Path) -> None:
    """A model directory cut short: the embeddings are written, the manifest is not."""
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        out_dir / EMBEDDINGS,
        user_emb=np.zeros((2, 4), np.float32),
        item_emb=np.zeros((3, 4), np.float32),
    )
    assert (out_dir / EMBEDDINGS).is_file() and not (out_dir / MANIFEST).exists()


# atomic_dir contexts entered and never left, as a worker killed inside ModelArtifact.save
# leaves them; holding them keeps their cleanup (run when a generator is collected) from running.
_killed_saves: list[AbstractContextManager[Path]] = []


def write_killed_save(out_dir: Path) -> Path:
    """What a worker killed inside ModelArtifact.save leaves: atomic_dir's hidden temp sibling."""
    save = atomic_dir(out_dir)
    tmp = save.__enter__()
    _killed_saves.append(save)
    np.savez(tmp / EMBEDDINGS, user_emb=np.zeros((2, 4), np.float32))
    assert tmp.parent == out_dir.parent and tmp.name.startswith(f".{out_dir.name}.tmp-")
    return tmp


def fake_train(
    calls: list[str],
    behaviour: str = "ok",
    leave: str | None = None,
    left: list[Path] | None = None,
) -> Callable[..., ModelArtifact]:
    """A train_teacher stand-in. `leave`: "partial" writes a partial model directory before
    the first stop check, "killed-save" an interrupted save's temp dir; `left` collects them."""
    written = left if left is not None else []

    def train_teacher(
        dataset: Any,
        cfg: Any,
        out_dir: Path,
        *,
        device: Any,
        on_progress: Any,
        should_stop: Any,
        model_id: str,
        dataset_id: str,
    ) -> ModelArtifact:
        calls.append(model_id)
        if leave == "partial":
            write_partial_model(out_dir)
            written.append(out_dir)
        for epoch in range(1, cfg.epochs + 1):
            if should_stop():
                raise JobCancelled(f"cancelled before epoch {epoch}")
            on_progress(
                ProgressEvent(stage="train", epoch=epoch, epochs=cfg.epochs, loss=1.0 / epoch)
            )
            on_progress(
                ProgressEvent(
                    stage="train",
                    epoch=epoch,
                    epochs=cfg.epochs,
                    loss=1.0 / epoch,
                    metrics={"valid_ndcg@20": 0.1 * epoch},
                )
            )
        if behaviour == "config":
            raise ConfigError("dim=4: not allowed here")
        if behaviour == "disk":
            if leave == "killed-save":
                written.append(write_killed_save(out_dir))
            raise OSError(28, "No space left on device")
        rng = np.random.default_rng(0)
        report = sample_report(0) | {"metrics": {"recall@20": 0.5, "ndcg@20": 0.25, "arp@20": None}}
        art = ModelArtifact(
            rng.random((dataset.n_users, cfg.dim), dtype=np.float32),
            rng.random((dataset.n_items, cfg.dim), dtype=np.float32),
            ModelManifest(
                id=model_id,
                kind="teacher",
                model=cfg.model,
                dim=cfg.dim,
                config=cfg,
                dataset=DatasetInfo(fingerprint=dataset.fingerprint),
                lineage=Lineage(dataset_id=dataset_id),
            ),
            QualityReport.model_validate(report),
        )
        art.save(out_dir)
        return art

    return train_teacher


def test_teacher_job_succeeds(monkeypatch, settings, registry, dataset) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls))
    teacher_job(registry)
    summary = jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    assert summary == {
        "job_id": "j1",
        "status": "succeeded",
        "model_id": "teacher-j1",
        "error": None,
    }
    job = registry.get_job("j1")
    assert job.status == "succeeded" and job.attempts == 1 and job.model_id == "teacher-j1"
    assert (job.progress.epoch, job.progress.epochs) == (3, 3)
    assert job.metrics == {"loss": pytest.approx(1 / 3), "valid_ndcg@20": pytest.approx(0.3)}
    model = registry.get_model("teacher-j1")
    assert model.metrics == {"recall@20": 0.5, "ndcg@20": 0.25}  # None dropped
    assert model.lineage == Lineage(dataset_id="ds-1", teacher_id=None) and model.job_id == "j1"
    assert Path(model.path) == settings.models_dir.resolve() / "teacher-j1"

    # The same message delivered again: nothing runs twice.
    jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    assert calls == ["teacher-j1"] and registry.get_job("j1").attempts == 1


def test_deterministic_error_fails_without_retry(monkeypatch, settings, registry, dataset) -> None:
    monkeypatch.setattr(pipelines, "train_teacher", fake_train([], "config"))
    teacher_job(registry)
    task = FakeTask(settings)
    summary = jobs.run_job(task, "j1", TEACHER_JOB)
    assert summary["status"] == "failed" and summary["error"] == "dim=4: not allowed here"
    assert task.retries == [] and registry.get_job("j1").error == "dim=4: not allowed here"


def test_invalid_payload_names_the_field(monkeypatch, settings, registry, dataset) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls))
    teacher_job(registry, lr=-1)
    jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    job = registry.get_job("j1")
    assert job.status == "failed" and calls == []
    # The payload's kind, then the field's path in it.
    assert job.error == "teacher.config.lr: Input should be greater than 0 (got -1)"


def test_transient_error_is_retried_and_counts_attempts(
    monkeypatch, settings, registry, dataset
) -> None:
    left: list[Path] = []
    monkeypatch.setattr(
        pipelines, "train_teacher", fake_train([], "disk", leave="killed-save", left=left)
    )
    teacher_job(registry)
    task = FakeTask(settings)
    with pytest.raises(Retry):
        jobs.run_job(task, "j1", TEACHER_JOB)
    job = registry.get_job("j1")
    assert job.status == "queued" and "No space left" in (job.error or "") and task.retries == [2]
    assert len(left) == 1  # the failed attempt left a half-written save behind

    monkeypatch.setattr(pipelines, "train_teacher", fake_train([]))
    jobs.run_job(FakeTask(settings, retries=1), "j1", TEACHER_JOB)
    job = registry.get_job("j1")
    assert job.status == "succeeded" and job.attempts == 2 and job.error is None
    # The retry removed the failed attempt's temp dir: only the finished model is left.
    assert not left[0].exists() and list(settings.models_dir.iterdir()) == [
        settings.models_dir / "teacher-j1"
    ]
    assert ModelArtifact.load(settings.models_dir / "teacher-j1").dim == 4

    monkeypatch.setattr(pipelines, "train_teacher", fake_train([], "disk"))
    teacher_job(registry, job_id="j2")
    summary = jobs.run_job(FakeTask(settings, retries=2), "j2", TEACHER_JOB)
    assert summary["status"] == "failed" and summary["error"].startswith("gave up after 2 retries")


@pytest.mark.parametrize("stop", ["cancel", "time_limit"])
def test_stopped_running_job_leaves_no_model(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, registry: Registry, dataset: Any, stop: str
) -> None:
    written: list[Path] = []

    def train(
        dataset: Any, cfg: Any, out_dir: Path, *, should_stop: Any, on_progress: Any, **_: Any
    ) -> ModelArtifact:
        on_progress(ProgressEvent(stage="train", epoch=1, epochs=cfg.epochs))
        write_partial_model(out_dir)  # epoch 1 wrote part of the model directory
        written.append(out_dir)
        if stop == "cancel":
            registry.request_cancel("j1")  # the API's DELETE arrives during epoch 1
        else:
            should_stop.deadline = time.monotonic() - 1  # epoch 1 ran past the time limit
        if should_stop():
            raise JobCancelled("cancelled before epoch 2")
        raise AssertionError("should have stopped")

    monkeypatch.setattr(pipelines, "train_teacher", train)
    teacher_job(registry)
    summary = jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    job = registry.get_job("j1")
    if stop == "cancel":
        assert summary["status"] == job.status == "cancelled" and job.error is None
    else:
        assert summary["status"] == job.status == "failed"
        assert (
            job.error == f"stopped: exceeded job_soft_time_limit_s={settings.job_soft_time_limit_s}"
        )
    assert job.model_id is None and not registry.has_model("teacher-j1")
    assert written == [settings.models_dir.resolve() / "teacher-j1"]  # the fake did write there
    assert not (settings.models_dir / "teacher-j1").exists()


def test_cancelled_before_start_never_runs(monkeypatch, settings, registry, dataset) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls))
    teacher_job(registry)
    registry.request_cancel("j1")
    assert jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)["status"] == "cancelled"
    assert calls == [] and registry.get_job("j1").attempts == 0


def test_reporter_writes_at_most_once_per_epoch(registry: Registry) -> None:
    registry.create_job(JobRecord(id="r", kind="teacher"))
    registry.start_job("r")
    reporter = JobReporter(registry, "r")
    for _ in range(5):
        reporter(ProgressEvent(stage="train", epoch=1, epochs=2, loss=0.5))
    reporter(ProgressEvent(stage="train", epoch=1, epochs=2, metrics={"valid_ndcg@20": 0.2}))
    reporter(ProgressEvent(stage="train", epoch=1, epochs=2, metrics={"valid_ndcg@20": 0.3}))
    reporter(ProgressEvent(stage="train", epoch=2, epochs=2, loss=float("nan")))
    assert (reporter.events, reporter.writes) == (8, 3)
    job = registry.get_job("r")
    assert job.progress == JobProgress(stage="train", epoch=2, epochs=2)
    assert job.metrics == {"loss": 0.5, "valid_ndcg@20": 0.2}  # NaN is not recorded


def test_stop_check_time_limit(registry: Registry) -> None:
    registry.create_job(JobRecord(id="t", kind="teacher"))
    assert StopCheck(registry, "t", time_limit_s=3600)() is False
    late = StopCheck(registry, "t", time_limit_s=-1)
    assert late() is True and late.timed_out and not late.cancelled


def test_worker_shutdown_hands_the_job_back(monkeypatch, settings, registry, dataset) -> None:
    from celery.exceptions import Reject

    import worker.progress

    calls: list[str] = []
    left: list[Path] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls, leave="partial", left=left))
    monkeypatch.setattr(worker.progress, "worker_stopping", lambda: True)  # SIGTERM arrived
    teacher_job(registry)
    with pytest.raises(Reject) as info:
        jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    assert info.value.requeue is True
    job = registry.get_job("j1")
    assert job.status == "queued" and job.attempts == 1 and "worker shut down" in (job.error or "")
    assert left == [settings.models_dir.resolve() / "teacher-j1"]  # written before the stop check
    assert not (settings.models_dir / "teacher-j1").exists()

    monkeypatch.setattr(worker.progress, "worker_stopping", lambda: False)  # the next worker
    jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    job = registry.get_job("j1")
    assert job.status == "succeeded" and job.attempts == 2 and job.error is None


def test_worker_stopping_reads_celery_state(monkeypatch) -> None:
    from celery.worker import state

    from worker.progress import worker_stopping

    assert worker_stopping() is False
    monkeypatch.setattr(state, "should_stop", 0)  # EX_OK: a warm shutdown
    assert worker_stopping() is True
