"""Datasets and models through the artifact store (issue 12): `commit` and the worker's use
of it, on a store URL (fsspec's file:// filesystem: the store's code path without HTTP;
tests/e2e runs the same flow against moto's S3 server) and in the data-dir mode, which must
keep today's paths.

Task bodies are called as plain functions with training.pipelines monkeypatched
(tests/unit/test_worker_tasks.py's fakes), against a real Redis; no Celery worker.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.core.artifacts import (
    MANIFEST_FILE,
    ArtifactExistsError,
    ArtifactStore,
    dataset_key,
    model_key,
)
from service.core.config import Settings
from service.core.registry import DatasetRecord, Registry
from tests.unit.test_worker_tasks import FakeTask, fake_train, teacher_job
from training import pipelines
from training.checkpoint import ModelArtifact
from training.config import TeacherConfig
from training.synthetic import generate_synthetic
from worker import jobs
from worker.training_jobs import TEACHER_JOB


def make_dir(root: Path, text: str = "a") -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "report.json").write_text(f'{{"x": "{text}"}}')
    (root / "sub" / "arrays.npz").write_bytes(text.encode() * 1000)
    return root


def files_of(path: Path) -> dict[str, bytes]:
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in path.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    }


# -- commit ------------------------------------------------------------------------------------


def test_commit_in_the_data_dir_keeps_the_path_and_copies_nothing(tmp_path: Path) -> None:
    store = ArtifactStore("", tmp_path / "data")
    built = make_dir(tmp_path / "data" / "models" / "teacher-1")
    assert store.commit(model_key("teacher-1"), built) == str(built.resolve())
    assert built.is_dir() and not (tmp_path / "data" / "cache").exists()  # no copy, no cache
    assert store.resolve(str(built.resolve())) == built.resolve()


def test_commit_to_a_url_uploads_and_keeps_the_local_copy_as_cache(
    tmp_path: Path, monkeypatch
) -> None:
    url = f"file://{tmp_path / 'store'}"
    writer = ArtifactStore(url, tmp_path / "host-a")
    built = make_dir(tmp_path / "host-a" / "datasets" / "ds-1")
    expected = files_of(built)
    assert writer.commit(dataset_key("ds-1"), built) == f"{url}/datasets/ds-1"
    assert not built.exists()  # nothing of it is left outside the cache
    cached = tmp_path / "host-a" / "cache" / "artifacts" / "datasets" / "ds-1"
    assert files_of(cached) == expected and (cached / MANIFEST_FILE).is_file()
    # Another host fetches (and verifies) it; the writer never downloads what it uploaded.
    reader = ArtifactStore(url, tmp_path / "host-b")
    assert files_of(reader.resolve(f"{url}/datasets/ds-1")) == expected
    monkeypatch.setattr(ArtifactStore, "_remote", lambda self: pytest.fail("the store was asked"))
    assert writer.resolve(f"{url}/datasets/ds-1") == cached


def test_commit_again_is_a_no_op_for_the_same_files_and_refused_for_others(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path / 'store'}", tmp_path / "host")
    store.commit(model_key("m"), make_dir(tmp_path / "first"))
    again = make_dir(tmp_path / "again")  # a redelivered job saved the same model again
    assert store.commit(model_key("m"), again) == store.location(model_key("m"))
    assert not again.exists()
    with pytest.raises(ArtifactExistsError, match="artifact models/m: already written"):
        store.commit(model_key("m"), make_dir(tmp_path / "other", "b"))


# -- the worker: datasets and models through a store URL -----------------------------------------


@pytest.fixture()
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        data_dir=tmp_path / "worker",
        device="cpu",
        job_max_retries=0,
        artifact_url=f"file://{tmp_path / 'store'}",
    )


@pytest.fixture()
def registry(settings: Settings) -> Registry:
    return jobs.registry_for(settings)


@pytest.fixture()
def dataset(settings: Settings, registry: Registry, tmp_path: Path):
    """ds-1, committed by "the API" from a data dir of its own: the worker has no copy."""
    ds = generate_synthetic(n_users=20, n_items=30, interactions_per_user=6, dim=4)
    api = ArtifactStore(settings.artifact_url, tmp_path / "api")
    location = api.commit(dataset_key("ds-1"), ds.save(tmp_path / "api" / "datasets" / "ds-1"))
    registry.add_dataset(
        DatasetRecord(
            id="ds-1", name="s", source="synthetic", fingerprint=ds.fingerprint, path=location
        )
    )
    return ds


def test_a_teacher_job_reads_its_dataset_from_the_store_and_stores_its_model(
    monkeypatch, settings: Settings, registry: Registry, dataset
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls))
    teacher_job(registry)
    summary = jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    assert summary["status"] == "succeeded", summary
    assert registry.get_model("teacher-j1").path == f"{settings.artifact_url}/models/teacher-j1"
    assert not (settings.models_dir / "teacher-j1").exists()  # moved into the worker's cache
    cached = settings.data_dir / "cache" / "artifacts"
    assert (cached / "datasets" / "ds-1").is_dir() and (cached / "models" / "teacher-j1").is_dir()
    elsewhere = ArtifactStore(settings.artifact_url, settings.data_dir.parent / "another-host")
    assert ModelArtifact.load(elsewhere.resolve(registry.get_model("teacher-j1").path)).dim == 4


@pytest.mark.parametrize("left", ["stored, not recorded", "saved here, not stored"])
def test_a_redelivered_job_finds_its_model_and_never_trains_twice(
    monkeypatch, settings: Settings, registry: Registry, dataset, tmp_path: Path, left: str
) -> None:
    """What a first delivery killed before recording its model leaves: the model in the
    store (this worker's cache gone with its host), or saved on this host before the put."""
    store = ArtifactStore.from_settings(settings)
    out = (
        settings.models_dir / "teacher-j1"
        if left == "saved here, not stored"
        else tmp_path / "lost-host"
    )
    fake_train([])(
        dataset,
        TeacherConfig(model="mf", dim=4, epochs=1),
        out,
        device=None,
        on_progress=lambda e: None,
        should_stop=lambda: False,
        model_id="teacher-j1",
        dataset_id="ds-1",
    )
    if left == "stored, not recorded":
        ArtifactStore(settings.artifact_url, tmp_path / "lost-host-data").commit(
            model_key("teacher-j1"), out
        )
    assert store.exists(model_key("teacher-j1")) is (left == "stored, not recorded")
    calls: list[str] = []
    monkeypatch.setattr(pipelines, "train_teacher", fake_train(calls))
    teacher_job(registry)
    summary = jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    assert summary["status"] == "succeeded", summary
    assert calls == []  # not trained again
    assert registry.get_model("teacher-j1").path == store.location(model_key("teacher-j1"))
    assert (
        store.exists(model_key("teacher-j1")) and not (settings.models_dir / "teacher-j1").exists()
    )


def test_a_dataset_missing_from_the_store_fails_the_job_naming_the_key(
    monkeypatch, settings: Settings, registry: Registry, dataset, tmp_path: Path
) -> None:
    monkeypatch.setattr(pipelines, "train_teacher", fake_train([]))
    shutil.rmtree(tmp_path / "store" / "datasets" / "ds-1")
    shutil.rmtree(tmp_path / "api")  # and no host has it cached
    teacher_job(registry)
    summary = jobs.run_job(FakeTask(settings), "j1", TEACHER_JOB)
    assert summary["status"] == "failed"
    assert summary["error"].startswith(f"artifact datasets/ds-1: not in {settings.artifact_url}"), (
        summary
    )
