"""Models (list, show, report, publish), API-key auth on mutating endpoints, and the
operational endpoints (/healthz, /readyz, /metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.core.config import Settings
from service.core.registry import ActiveModel, DatasetRecord, ModelRecord, Registry
from tests.api.conftest import API_KEY
from tests.report_samples import sample_report
from training.manifest import Lineage


@pytest.fixture()
def registry(settings: Settings) -> Registry:
    return Registry.from_url(settings.redis_url or "")


@pytest.fixture()
def model_id(registry: Registry, tmp_path: Path) -> str:
    model_dir = tmp_path / "models" / "student-unkd-1"
    model_dir.mkdir(parents=True)
    group = {
        "group": 0,
        "items": 5,
        "catalog_share": 1.0,
        "train_share": 1.0,
        "test_share": 1.0,
        "users": 3,
    }
    report = {
        "protocol": sample_report(0)["protocol"] | {"ks": [20], "groups": 1},
        "users_evaluated": 3,
        "metrics": {"recall@20": 0.5},
        "groups": [group | {"recall@20": 0.7}],
        "teacher": {"metrics": {}, "groups": []},
    }
    (model_dir / "report.json").write_text(json.dumps(report))
    registry.add_dataset(
        DatasetRecord(id="ds-1", name="d", source="synthetic", fingerprint="f", path="/nowhere")
    )
    registry.add_model(
        ModelRecord(
            id="student-unkd-1",
            kind="student",
            method="unkd",
            model="mf",
            dim=10,
            parameters={"lambda_kd": 1.0},
            lineage=Lineage(dataset_id="ds-1", teacher_id="teacher-1"),
            metrics={"recall@20": 0.5},
            path=str(model_dir),
            job_id="j1",
        )
    )
    return "student-unkd-1"


def test_models_list_show_report(client: TestClient, model_id: str, registry: Registry) -> None:
    listing = client.get("/v1/models").json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == model_id
    model = client.get(f"/v1/models/{model_id}").json()
    assert model["kind"] == "student" and model["method"] == "unkd" and model["dim"] == 10
    assert model["lineage"] == {"dataset_id": "ds-1", "teacher_id": "teacher-1"}
    assert model["metrics"] == {"recall@20": 0.5} and model["active"] is False
    assert "path" not in model
    report = client.get(f"/v1/models/{model_id}/report").json()
    assert report["groups"][0]["recall@20"] == 0.7 and "teacher" in report  # a student's parts kept
    assert "deltas" not in report  # absent parts stay absent, not null
    registry.set_active(ActiveModel(model_id=model_id, bundle_dir="/nowhere"))
    assert client.get(f"/v1/models/{model_id}").json()["active"] is True
    r = client.get("/v1/models/m-nope/report")
    assert r.status_code == 404 and r.json() == {"detail": "model_id='m-nope': no such model"}


def test_publish_is_a_light_job_and_conflicts_while_pending(
    client: TestClient, model_id: str, settings: Settings, redis_client: redis.Redis
) -> None:
    r = client.post(f"/v1/models/{model_id}/publish")
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "publish" and job["status"] == "queued"
    assert redis_client.llen(settings.light_queue) == 1
    r = client.post(f"/v1/models/{model_id}/publish")
    assert r.status_code == 409
    assert (
        r.json()["detail"] == f"model_id={model_id!r}: already being published by job {job['id']}"
    )
    client.delete(job["status_url"])
    assert client.post(f"/v1/models/{model_id}/publish").status_code == 202
    r = client.post("/v1/models/m-nope/publish")
    assert r.status_code == 404 and r.json()["detail"] == "model_id='m-nope': no such model"


def test_mutating_endpoints_need_an_api_key(auth_client: TestClient) -> None:
    calls = [
        ("POST", "/v1/datasets", {"json": {"synthetic": {}}}),
        ("POST", "/v1/jobs", {"json": {"kind": "teacher", "model": "mf", "dataset_id": "ds-1"}}),
        ("DELETE", "/v1/jobs/j1", {}),
        ("POST", "/v1/models/m1/publish", {}),
    ]
    for method, url, kwargs in calls:
        r = auth_client.request(method, url, **kwargs)
        assert r.status_code == 401, (url, r.text)
        assert r.json()["detail"].startswith("Authorization: missing bearer token")
        assert r.headers["www-authenticate"] == "Bearer"
        r = auth_client.request(
            method, url, headers={"Authorization": "Bearer wrong-key-123"}, **kwargs
        )
        assert r.status_code == 403 and r.json() == {
            "detail": "Authorization: API key not accepted"
        }
        r = auth_client.request(
            method, url, headers={"Authorization": f"Basic {API_KEY}"}, **kwargs
        )
        assert r.status_code == 401
    good = {"Authorization": f"Bearer {API_KEY}"}
    r = auth_client.post(
        "/v1/jobs", json={"kind": "teacher", "model": "mf", "dataset_id": "ds-1"}, headers=good
    )
    assert r.status_code == 404  # past auth: the unknown dataset is the next problem
    assert auth_client.get("/v1/jobs").status_code == 200  # reads stay open
    metrics = auth_client.get("/metrics").text
    assert 'unkd_auth_failures_total{reason="missing"} 8.0' in metrics
    assert 'unkd_auth_failures_total{reason="invalid"} 4.0' in metrics
    assert API_KEY not in metrics


def test_health_and_readiness(client: TestClient, settings: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "status": "not ready",
        "redis": True,
        "index_loaded": False,
        "model_id": None,
    }


def test_metrics(client: TestClient, model_id: str) -> None:
    client.get(f"/v1/models/{model_id}")
    client.get("/v1/models/other")
    client.get("/no/such/path")
    client.post("/v1/models/m-nope/publish")
    text = client.get("/metrics").text
    assert (
        'unkd_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/models/{model_id}"}'
        in text
    )
    assert (
        'unkd_http_requests_total{method="GET",route="/v1/models/{model_id}",status="404"} 1.0'
        in text
    )
    assert 'route="<unmatched>"' in text and "/no/such/path" not in text
    assert "unkd_registry_up 1.0" in text
    assert 'unkd_jobs_current{status="queued"}' in text


def test_redis_down_is_503_and_not_ready(make_settings) -> None:
    from service.api.app import create_app

    app = create_app(make_settings(redis_url="redis://127.0.0.1:1/0"))
    with TestClient(app) as client:  # the API starts anyway
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["redis"] is False
        r = client.get("/v1/jobs")
        assert r.status_code == 503 and r.json() == {
            "detail": "registry (Redis): unavailable, retry later"
        }
        assert "unkd_registry_up 0.0" in client.get("/metrics").text
