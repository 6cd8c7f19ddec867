"""POST/GET/DELETE /v1/jobs against a queue with no worker: submission, validation at the
edge (422 naming the field, 404 naming the id), listing filters, cancelling queued jobs."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from service.core.config import Settings
from service.core.registry import DatasetRecord, ModelRecord, Registry


@pytest.fixture()
def registry(settings: Settings) -> Registry:
    return Registry.from_url(settings.redis_url or "")


@pytest.fixture()
def dataset_id(registry: Registry) -> str:
    registry.add_dataset(
        DatasetRecord(id="ds-1", name="d", source="synthetic", fingerprint="f", path="/nowhere")
    )
    return "ds-1"


@pytest.fixture()
def teacher_id(registry: Registry, dataset_id: str) -> str:
    registry.add_model(
        ModelRecord(
            id="teacher-1",
            kind="teacher",
            model="mf",
            dim=32,
            path="/nowhere",
            lineage={"dataset_id": dataset_id},
        )
    )
    return "teacher-1"


def test_submit_teacher_job(
    client: TestClient, dataset_id: str, settings: Settings, redis_client: redis.Redis
) -> None:
    r = client.post(
        "/v1/jobs",
        json={
            "kind": "teacher",
            "dataset_id": dataset_id,
            "model": "lightgcn",
            "dim": 32,
            "epochs": 7,
        },
    )
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "queued" and accepted["kind"] == "teacher"
    assert r.headers["location"] == accepted["status_url"] == f"/v1/jobs/{accepted['id']}"
    assert redis_client.llen(settings.train_queue) == 1  # the message waits on the train queue

    status = client.get(accepted["status_url"]).json()
    assert status["status"] == "queued" and status["attempts"] == 0 and status["model_id"] is None
    assert status["progress"] == {
        "stage": "queued",
        "epoch": 0,
        "epochs": 0,
        "message": "",
        "trial": 0,
        "trials": 0,
    }
    assert "tune" not in status["params"] and "tune" not in status["params"]["config"]
    assert status["params"]["dataset_id"] == dataset_id
    assert (
        status["params"]["config"]["model"] == "lightgcn"
        and status["params"]["config"]["epochs"] == 7
    )
    assert status["timings"]["queued_at"] and status["timings"]["started_at"] is None


def test_submit_distill_job(client: TestClient, teacher_id: str) -> None:
    r = client.post(
        "/v1/jobs",
        json={
            "kind": "distill",
            "teacher_id": teacher_id,
            "method": "rd",
            "dim": 8,
            "publish": True,
            "rd": {"top_k": 5},
        },
    )
    assert r.status_code == 202, r.text
    params = client.get(r.json()["status_url"]).json()["params"]
    assert params["publish"] is True and params["dataset_id"] == "ds-1"
    assert params["config"]["method"] == "rd" and params["config"]["rd"]["top_k"] == 5


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        (
            {"kind": "teacher", "model": "mf", "dataset_id": "ds-1", "dim": 0},
            ["body", "teacher", "dim"],
        ),
        (
            {"kind": "teacher", "model": "mf", "dataset_id": "ds-1", "lr": 2.0},
            ["body", "teacher", "lr"],
        ),
        ({"kind": "teacher", "dataset_id": "ds-1", "model": "svd"}, ["body", "teacher", "model"]),
        (
            {"kind": "teacher", "model": "mf", "dataset_id": "ds-1", "epochs": 10**6},
            ["body", "teacher", "epochs"],
        ),
        (
            {"kind": "teacher", "model": "mf", "dataset_id": "ds-1", "colour": 1},
            ["body", "teacher", "colour"],
        ),
        ({"kind": "teacher", "model": "mf"}, ["body", "teacher", "dataset_id"]),
        ({"kind": "distill", "teacher_id": "t", "method": "magic"}, ["body", "distill", "method"]),
        (
            {"kind": "distill", "teacher_id": "t", "unkd": {"groups": 0}},
            ["body", "distill", "unkd", "groups"],
        ),
        ({"kind": "quantum", "dataset_id": "ds-1"}, ["body"]),
        (
            {"kind": "teacher", "model": "mf", "dataset_id": "ds-1", "tune": {"trials": 0}},
            ["body", "teacher", "tune", "trials"],
        ),
        (
            {"kind": "teacher", "model": "mf", "dataset_id": "ds-1", "tune": {"trials": 201}},
            ["body", "teacher", "tune", "trials"],
        ),
        (
            {"kind": "teacher", "model": "mf", "dataset_id": "ds-1", "tune": {}},
            ["body", "teacher", "tune", "trials"],
        ),
        (
            {"kind": "distill", "teacher_id": "t", "tune": {"trials": 5, "sampler": "grid"}},
            ["body", "distill", "tune", "sampler"],
        ),
        ({"kind": "distill", "teacher_id": "t", "tune": 5}, ["body", "distill", "tune"]),
    ],
)
def test_out_of_range_parameters_name_the_field(
    client: TestClient, dataset_id: str, payload: dict, loc: list[str]
) -> None:
    r = client.post("/v1/jobs", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc


def test_submit_tuning_jobs(
    client: TestClient,
    dataset_id: str,
    teacher_id: str,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    """ "tune": {"trials": N} makes a tuning job: same task and queue, the options in params."""
    r = client.post(
        "/v1/jobs",
        json={
            "kind": "teacher",
            "model": "mf",
            "dataset_id": dataset_id,
            "dim": 16,
            "tune": {"trials": 12},
        },
    )
    assert r.status_code == 202, r.text
    params = client.get(r.json()["status_url"]).json()["params"]
    assert params["tune"] == {"trials": 12, "prune": True, "seed": 0}
    assert "tune" not in params["config"] and params["config"]["dim"] == 16
    r = client.post(
        "/v1/jobs",
        json={
            "kind": "distill",
            "teacher_id": teacher_id,
            "method": "unkd",
            "tune": {"trials": 3, "prune": False, "seed": 7},
        },
    )
    assert r.status_code == 202, r.text
    params = client.get(r.json()["status_url"]).json()["params"]
    assert (
        params["tune"] == {"trials": 3, "prune": False, "seed": 7}
        and "tune" not in params["config"]
    )
    assert redis_client.llen(settings.train_queue) == 2


def test_unknown_ids_are_404_naming_the_field(
    client: TestClient, registry: Registry, dataset_id: str
) -> None:
    r = client.post("/v1/jobs", json={"kind": "teacher", "model": "mf", "dataset_id": "ds-nope"})
    assert r.status_code == 404 and r.json() == {"detail": "dataset_id='ds-nope': no such dataset"}
    r = client.post("/v1/jobs", json={"kind": "distill", "teacher_id": "t-nope"})
    assert r.status_code == 404 and r.json() == {"detail": "teacher_id='t-nope': no such model"}
    registry.add_model(
        ModelRecord(id="student-1", kind="student", method="unkd", model="mf", dim=8, path="/x")
    )
    r = client.post("/v1/jobs", json={"kind": "distill", "teacher_id": "student-1"})
    assert r.status_code == 422 and "not a teacher" in r.json()["detail"]
    r = client.get("/v1/jobs/j-nope")
    assert r.status_code == 404 and r.json() == {"detail": "job_id='j-nope': no such job"}
    assert client.delete("/v1/jobs/j-nope").status_code == 404
    assert client.get("/v1/jobs/bad id!").status_code == 422


def test_listing_filters_and_pagination(client: TestClient, teacher_id: str) -> None:
    ids = [
        client.post(
            "/v1/jobs", json={"kind": "teacher", "model": "mf", "dataset_id": "ds-1"}
        ).json()["id"]
        for _ in range(3)
    ]
    ids.append(
        client.post("/v1/jobs", json={"kind": "distill", "teacher_id": teacher_id}).json()["id"]
    )
    client.delete(f"/v1/jobs/{ids[0]}")

    everything = client.get("/v1/jobs").json()
    assert everything["total"] == 4 and [j["id"] for j in everything["items"]] == ids[::-1]
    page = client.get("/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][1:3] and page["total"] == 4
    assert {
        j["id"] for j in client.get("/v1/jobs", params={"kind": "distill"}).json()["items"]
    } == {ids[3]}
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    queued_teachers = client.get(
        "/v1/jobs", params={"status": "queued", "kind": "teacher", "model": "mf"}
    ).json()
    assert queued_teachers["total"] == 2 and {j["id"] for j in queued_teachers["items"]} == set(
        ids[1:3]
    )
    r = client.get("/v1/jobs", params={"status": "sleeping"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "status"]
    assert client.get("/v1/jobs", params={"limit": 501}).status_code == 422


def test_cancel_queued_job(client: TestClient, dataset_id: str) -> None:
    job_id = client.post(
        "/v1/jobs", json={"kind": "teacher", "model": "mf", "dataset_id": dataset_id}
    ).json()["id"]
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "cancelled" and body["cancel_requested"] is True
    assert body["timings"]["finished_at"] is not None
    assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"  # idempotent


def test_cancel_finished_job_is_a_conflict(
    client: TestClient, registry: Registry, dataset_id: str
) -> None:
    job_id = client.post(
        "/v1/jobs", json={"kind": "teacher", "model": "mf", "dataset_id": dataset_id}
    ).json()["id"]
    registry.start_job(job_id)
    registry.finish_job(job_id, "succeeded", model_id="m")
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 409
    assert r.json() == {"detail": f"job_id={job_id!r}: job already succeeded, nothing to cancel"}


def test_teacher_jobs_accept_als_and_ease_with_their_options(
    client: TestClient, dataset_id: str
) -> None:
    r = client.post(
        "/v1/jobs",
        json={
            "kind": "teacher",
            "dataset_id": dataset_id,
            "model": "als",
            "dim": 64,
            "als": {"alpha": 40, "iterations": 20},
        },
    )
    assert r.status_code == 202, r.text
    config = client.get(r.json()["status_url"]).json()["params"]["config"]
    assert config["model"] == "als" and config["als"] == {
        "regularization": 100.0,
        "alpha": 40.0,
        "iterations": 20,
    }
    r = client.post(
        "/v1/jobs",
        json={"kind": "teacher", "dataset_id": dataset_id, "model": "ease", "ease": {"l2": 200}},
    )
    assert r.status_code == 202, r.text
    r = client.post(
        "/v1/jobs",
        json={"kind": "teacher", "dataset_id": dataset_id, "model": "ease", "ease": {"l2": 0}},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
        "body",
        "teacher",
        "ease",
        "l2",
    ]


def test_ease_over_its_catalogue_limit_is_a_422_naming_model_and_als(
    client: TestClient, registry: Registry, redis_client: redis.Redis, settings: Settings
) -> None:
    from training.budget import EASE_MAX_ITEMS

    registry.add_dataset(
        DatasetRecord(
            id="ds-big",
            name="big",
            source="synthetic",
            fingerprint="g",
            path="/nowhere",
            statistics={"users": 1000, "items": EASE_MAX_ITEMS + 1},
        )
    )
    r = client.post("/v1/jobs", json={"kind": "teacher", "dataset_id": "ds-big", "model": "ease"})
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "model"] and err["input"] == "ease"
    assert (
        f"over EASE's limit of {EASE_MAX_ITEMS:,} items" in err["msg"]
        and "use model='als'" in err["msg"]
    )
    assert redis_client.llen(settings.train_queue) == 0, "nothing was queued"
    r = client.post("/v1/jobs", json={"kind": "teacher", "dataset_id": "ds-big", "model": "als"})
    assert r.status_code == 202, r.text


def test_publishing_an_ease_teacher_is_a_409(
    client: TestClient, registry: Registry, dataset_id: str
) -> None:
    registry.add_model(
        ModelRecord(
            id="teacher-ease",
            kind="teacher",
            model="ease",
            dim=1682,
            path="/nowhere",
            lineage={"dataset_id": dataset_id},
        )
    )
    r = client.post("/v1/models/teacher-ease/publish")
    assert r.status_code == 409
    assert r.json() == {
        "detail": "model_id='teacher-ease': EASE teachers have no embeddings to "
        "serve: distil a student"
    }
    r = client.post(
        "/v1/jobs", json={"kind": "distill", "teacher_id": "teacher-ease", "method": "unkd"}
    )
    assert r.status_code == 202, r.text  # distilling it is the way to serve it
