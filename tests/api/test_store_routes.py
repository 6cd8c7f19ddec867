"""The API with an artifact store URL (issue 12): a dataset it registers is committed to the
store (the record holds its URL), and the report routes read a model directory that only
the store holds (fetched into this API's cache). fsspec's file:// filesystem stands in for
S3 here; tests/e2e runs the same routes against moto's S3 server in other processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.core.artifacts import ArtifactStore, model_key
from service.core.config import Settings
from service.core.registry import Registry
from tests.report_samples import register_family
from training.dataset import Dataset


@pytest.fixture()
def store_url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture()
def settings(make_settings, store_url: str) -> Settings:
    return make_settings(artifact_url=store_url)


@pytest.fixture()
def registry(settings: Settings) -> Registry:
    return Registry.from_url(settings.redis_url or "")


def test_a_dataset_is_committed_to_the_store(
    client: TestClient, registry: Registry, settings: Settings, store_url: str, tmp_path: Path
) -> None:
    r = client.post("/v1/datasets", json={"synthetic": {"n_users": 60, "n_items": 40}, "name": "s"})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    assert registry.get_dataset(dataset_id).path == f"{store_url}/datasets/{dataset_id}"
    assert not (settings.datasets_dir / dataset_id).exists()  # its only local copy is the cache
    assert (settings.data_dir / "cache" / "artifacts" / "datasets" / dataset_id).is_dir()
    worker = ArtifactStore(store_url, tmp_path / "worker-host")
    assert Dataset.load(worker.resolve(registry.get_dataset(dataset_id).path)).n_users == 60


def test_reports_are_read_through_the_store(
    client: TestClient, registry: Registry, store_url: str, tmp_path: Path
) -> None:
    ids = register_family(registry, tmp_path / "worker-models", "ds-1", methods=("unkd",))
    worker = ArtifactStore(store_url, tmp_path / "worker-host")
    for model_id in ids:  # as the worker records them: in the store, the record holds the URL
        record = registry.get_model(model_id)
        location = worker.commit(model_key(model_id), Path(record.path))
        registry.add_model(record.model_copy(update={"path": location}))
    assert not any((tmp_path / "worker-models").iterdir())
    teacher_id, student_id = ids
    r = client.get(f"/v1/models/{student_id}/report")
    assert r.status_code == 200 and r.json()["teacher"] is not None, r.text
    assert client.get(f"/v1/models/{student_id}/report.html").status_code == 200
    r = client.get("/v1/compare", params={"models": f"{teacher_id},{student_id}"})
    assert r.status_code == 200 and [m["id"] for m in r.json()["models"]] == ids, r.text


def test_a_model_gone_from_the_store_has_no_report(
    client: TestClient, registry: Registry, store_url: str, tmp_path: Path, caplog
) -> None:
    (student_id,) = register_family(registry, tmp_path / "m", "ds-1", methods=("unkd",))[1:]
    record = registry.get_model(student_id)
    registry.add_model(record.model_copy(update={"path": f"{store_url}/{model_key(student_id)}"}))
    for path in (f"/v1/models/{student_id}/report", f"/v1/models/{student_id}/report.html"):
        r = client.get(path)
        assert r.status_code == 404, r.text
        assert r.json() == {
            "detail": f"model_id='{student_id}': no such quality report for this model"
        }
    assert f"artifact models/{student_id}: not in {store_url}" in caplog.text  # the reason, logged
