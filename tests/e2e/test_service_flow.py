"""End to end through a real Redis and a real Celery worker process: upload, teacher,
UnKD distillation with publish, recommendations, cancellation, a failing job; each test in
both layouts of tests/e2e/conftest.py: one data dir, and hosts that share nothing but Redis
and an S3 artifact store (where a second API process must follow the publish too).

Tiny data and few epochs keep each layout under half a minute on two CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.core.artifacts import dataset_key, model_key
from service.core.config import Settings
from service.core.queue import TRAIN_TEACHER, make_celery
from service.core.registry import JobRecord, Registry
from tests.e2e.conftest import E2EStack, wait_for
from tests.support.answers import same_answer
from training.dataset import Dataset

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

JOB_TIMEOUT_S = 120
FINISHED = ("succeeded", "failed", "cancelled")


def tiny_interactions(n_users: int = 80, n_items: int = 60, per_user: int = 10) -> bytes:
    """A long-tailed CSV: item i is drawn with weight 1 / (i + 1)."""
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, n_items + 1)
    rows = ["user,item"]
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False, p=weights / weights.sum())
        rows += [f"user{u},item{i}" for i in items]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture(scope="module")
def dataset_id(api: httpx.Client) -> str:
    r = api.post(
        "/v1/datasets",
        files={"file": ("tiny.csv", tiny_interactions())},
        data={"split": "random", "seed": "1"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["statistics"]["users"] == 80
    return str(body["id"])


def run_to_end(api: httpx.Client, payload: dict[str, object]) -> tuple[dict, list[dict]]:
    """Submit a job, poll it to a final status; returns it and every status seen."""
    r = api.post("/v1/jobs", json=payload)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "queued" and accepted["status_url"] == f"/v1/jobs/{accepted['id']}"
    seen: list[dict] = []

    def done(status: dict) -> bool:
        seen.append(status)
        return status["status"] in FINISHED

    return wait_for(api, accepted["id"], done, JOB_TIMEOUT_S), seen


def test_teacher_distill_publish_recommend(
    api: httpx.Client, dataset_id: str, e2e: E2EStack
) -> None:
    teacher, seen = run_to_end(
        api,
        {
            "kind": "teacher",
            "model": "mf",
            "dataset_id": dataset_id,
            "dim": 16,
            "epochs": 40,
            "patience": 40,
            "batch_size": 256,
        },
    )
    assert teacher["status"] == "succeeded", teacher
    assert any(s["status"] == "running" and s["progress"]["epoch"] >= 1 for s in seen), seen
    assert teacher["progress"]["epochs"] == 40 and teacher["attempts"] == 1
    assert "loss" in teacher["metrics"] and teacher["timings"]["elapsed_s"] > 0
    teacher_id = teacher["model_id"]

    student, _ = run_to_end(
        api,
        {
            "kind": "distill",
            "teacher_id": teacher_id,
            "method": "unkd",
            "dim": 8,
            "epochs": 4,
            "batch_size": 256,
            "publish": True,
            # 4 epochs: the publish gate may refuse so undertrained a student
            "force": True,
            "unkd": {"pairs_per_user": 8, "top_l": 50},
        },
    )
    assert student["status"] == "succeeded", student
    student_id = student["model_id"]

    model = api.get(f"/v1/models/{student_id}").json()
    assert model["kind"] == "student" and model["method"] == "unkd" and model["dim"] == 8
    assert model["lineage"] == {"dataset_id": dataset_id, "teacher_id": teacher_id}
    assert "recall@20" in model["metrics"]
    report = api.get(f"/v1/models/{student_id}/report").json()
    assert "teacher" in report and len(report["groups"]) == 4

    deadline = time.monotonic() + 20  # the API swaps the bundle in after the publish event
    while api.get("/v1/serving").json().get("model_id") != student_id:
        assert time.monotonic() < deadline, api.get("/v1/serving").text
        time.sleep(0.1)
    assert api.get("/readyz").status_code == 200
    assert api.get(f"/v1/models/{student_id}").json()["active"] is True
    latest = api.get("/v1/serving/history").json()["items"][0]  # the worker recorded the publish
    assert latest["model_id"] == student_id and latest["forced"] is True
    assert latest["job_id"] == student["id"] and latest["action"] == "publish"

    dataset = Dataset.load(e2e.store.resolve(e2e.registry.get_dataset(dataset_id).path))
    train = dataset.csr("train")
    for u in (0, 5, 42):
        user = str(dataset.user_ids[u])
        r = api.get(f"/v1/recommendations/{user}", params={"k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] == user and body["model_id"] == student_id
        items = [it["item_id"] for it in body["items"]]
        assert len(items) == 5 and len(set(items)) == 5
        assert set(items) <= set(dataset.item_ids.tolist())
        seen_items = set(dataset.item_ids[train.indices[train.indptr[u] : train.indptr[u + 1]]])
        assert not set(items) & seen_items
    assert api.get("/v1/recommendations/nobody").status_code == 404
    check_issue_10_routes(api, dataset, student_id)
    if e2e.replica is not None:
        check_shared_nothing(e2e, dataset_id, dataset, teacher_id, student_id)


def check_issue_10_routes(api: httpx.Client, dataset: Dataset, student_id: str) -> None:
    """Filters, by-history, fallbacks and similar items on the bundle the worker published."""
    user, train = str(dataset.user_ids[0]), dataset.csr("train")
    history = dataset.item_ids[train.indices[train.indptr[0] : train.indptr[1]]].tolist()
    plain = [
        it["item_id"]
        for it in api.get(f"/v1/recommendations/{user}", params={"k": 5}).json()["items"]
    ]
    r = api.get(
        f"/v1/recommendations/{user}",
        params=[("k", 5), ("exclude", plain[0]), ("groups", 2), ("groups", 3)],
    )
    assert r.status_code == 200, r.text
    filtered = r.json()["items"]
    assert len(filtered) == 5 and plain[0] not in {it["item_id"] for it in filtered}
    assert {it["group"] for it in filtered} <= {2, 3}
    r = api.post("/v1/recommendations/by-history", json={"items": [*history, "never-seen"], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] is None and body["model_id"] == student_id and len(body["items"]) == 5
    assert not {it["item_id"] for it in body["items"]} & set(history)
    assert body["unknown_items"] == {"items": ["never-seen"]}
    for fallback in ("popular", "debiased"):
        r = api.get("/v1/recommendations/nobody", params={"fallback": fallback, "k": 5})
        assert (
            r.status_code == 200
            and r.json()["fallback"] == fallback
            and len(r.json()["items"]) == 5
        ), r.text
    item = plain[0]
    r = api.get(f"/v1/items/{item}/similar", params={"k": 5})
    assert r.status_code == 200, r.text
    similar = r.json()["items"]
    assert len(similar) == 5 and item not in {it["item_id"] for it in similar}
    assert all(
        set(it) == {"item_id", "score", "group"} for it in similar + filtered + body["items"]
    )


def check_shared_nothing(
    e2e: E2EStack, dataset_id: str, dataset: Dataset, teacher_id: str, student_id: str
) -> None:
    """The s3 layout: the records hold store URLs; API process 2, which no request of the flow
    reached, follows the publish and answers as process 1, and reads the models' reports
    through the store; no process keeps a dataset or a model outside its cache."""
    url, replica = e2e.settings.artifact_url, e2e.replica
    assert replica is not None
    assert e2e.registry.get_dataset(dataset_id).path == f"{url}/{dataset_key(dataset_id)}"
    for model_id in (teacher_id, student_id):
        assert e2e.registry.get_model(model_id).path == f"{url}/{model_key(model_id)}"
    deadline = time.monotonic() + 20
    while replica.get("/v1/serving").json().get("model_id") != student_id:
        assert time.monotonic() < deadline, replica.get("/v1/serving").text
        time.sleep(0.1)
    for u in (0, 5, 42):
        path = f"/v1/recommendations/{dataset.user_ids[u]}?k=5"
        assert same_answer(replica.get(path).json(), e2e.api.get(path).json())
    assert (
        replica.get(f"/v1/models/{student_id}/report").json()
        == e2e.api.get(f"/v1/models/{student_id}/report").json()
    )
    r = replica.get("/v1/compare.html", params={"models": f"{teacher_id},{student_id}"})
    assert r.status_code == 200 and student_id in r.text, r.text[:300]
    for host in (*e2e.api_data_dirs, e2e.settings.data_dir):
        loose = [
            p for p in host.rglob("*") if p.is_file() and p.relative_to(host).parts[0] != "cache"
        ]
        assert not loose, f"{host}: files outside the artifact cache: {loose}"
    cached = e2e.api_data_dirs[1] / "cache" / "artifacts"
    assert sorted(p.name for p in (cached / "models").iterdir()) == sorted([teacher_id, student_id])


def test_cancel_running_and_queued_jobs(api: httpx.Client, dataset_id: str, e2e: E2EStack) -> None:
    long_job = {
        "kind": "teacher",
        "model": "mf",
        "dataset_id": dataset_id,
        "dim": 8,
        "epochs": 10_000,
        "patience": 1000,
        "eval_every": 1000,
        "batch_size": 256,
    }
    running = api.post("/v1/jobs", json=long_job).json()["id"]
    queued = api.post("/v1/jobs", json=long_job).json()["id"]
    wait_for(api, running, lambda s: s["status"] == "running" and s["progress"]["epoch"] >= 2, 60)

    r = api.delete(f"/v1/jobs/{queued}")
    assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
    r = api.delete(f"/v1/jobs/{running}")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True, r.text

    stopped = wait_for(api, running, lambda s: s["status"] in FINISHED, 60)
    assert stopped["status"] == "cancelled" and stopped["model_id"] is None, stopped
    assert stopped["progress"]["epoch"] < 10_000
    models_dir = e2e.settings.models_dir  # the worker's
    assert not (models_dir / f"teacher-{running[:12]}").exists()
    assert not [p for p in models_dir.glob("*") if running[:12] in p.name]
    assert not e2e.store.exists(model_key(f"teacher-{running[:12]}"))

    time.sleep(1.0)  # the worker takes the queued job's message and drops it
    never = api.get(f"/v1/jobs/{queued}").json()
    assert never["status"] == "cancelled" and never["attempts"] == 0, never
    assert api.delete(f"/v1/jobs/{running}").status_code == 202  # idempotent


def test_job_with_bad_parameters_reports_its_error(
    api: httpx.Client, dataset_id: str, e2e_settings: Settings
) -> None:
    # The API refuses out-of-range values at the edge ...
    r = api.post(
        "/v1/jobs", json={"kind": "teacher", "model": "mf", "dataset_id": dataset_id, "lr": 5.0}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "lr"
    # ... and the worker validates the stored payload again (a job queued by an older
    # client or edited in Redis), failing it with a message that names the field.
    registry = Registry.from_url(e2e_settings.redis_url or "")
    job = JobRecord(
        id="bad-params-job",
        kind="teacher",
        output_model_id="teacher-bad-params",
        params={"dataset_id": dataset_id, "config": {"dim": 0, "epochs": 2}},
    )
    registry.create_job(job)
    celery_app = make_celery(e2e_settings, set_as_current=False)
    celery_app.send_task(
        TRAIN_TEACHER, args=[job.id], task_id=job.id, queue=e2e_settings.train_queue
    )
    failed = wait_for(api, job.id, lambda s: s["status"] in FINISHED, JOB_TIMEOUT_S)
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert "dim" in failed["error"] and "greater than or equal to 1" in failed["error"], failed
    assert not Path(e2e_settings.models_dir / "teacher-bad-params").exists()
    listed = api.get(
        "/v1/jobs", params={"status": "failed", "kind": "teacher", "model": "mf"}
    ).json()
    assert job.id in [j["id"] for j in listed["items"]]
    celery_app.close()
    registry.close()
