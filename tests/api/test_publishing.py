"""The publish gate, the publish history and rollback, against a real Redis (and, where the
worker's side is the point, a real worker process).

Models are random embeddings over a tiny synthetic dataset (no training); their headline
figures are set in the registry, where the gate reads them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.bundle_format import build_bundle
from service.core.config import Settings
from service.core.registry import PublishEntry, Registry
from tests.reliability.conftest import seed_dataset, seed_model
from tests.support.workers import WorkerProcess
from training.dataset import Dataset
from training.manifest import Lineage

ADMIN, WRITER = "ops-admin-key-0123", "ci-write-key-0123"
KEYS = [f"ops:admin:{ADMIN}", f"ci:write:{WRITER}"]
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}

# head_share@20, ndcg@20 of each model; the teacher's head share is 0.5.
FIGURES = {
    "teacher-1": (0.50, 0.30),
    "student-good": (0.40, 0.29),
    "student-biased": (0.60, 0.30),  # more head items than its teacher: gated
    "student-weak": (0.30, 0.10),  # below 0.9 x the served ndcg: gated while good is served
    "teacher-weak": (0.90, 0.20),  # a teacher below 0.9 x the served ndcg: gated too
}


def seed(settings: Settings) -> tuple[Registry, Dataset]:
    registry = Registry.from_url(settings.redis_url or "")
    dataset = seed_dataset(settings, registry, n_users=60, n_items=40)
    for seed_no, (model_id, (head, ndcg)) in enumerate(FIGURES.items(), 1):
        kind = "teacher" if model_id.startswith("teacher") else "student"
        seed_model(settings, registry, dataset, model_id, kind=kind, seed=seed_no)
        record = registry.get_model(model_id)
        lineage = Lineage(
            dataset_id="ds-rel0", teacher_id=None if kind == "teacher" else "teacher-1"
        )
        registry.add_model(
            record.model_copy(
                update={"lineage": lineage, "metrics": {"head_share@20": head, "ndcg@20": ndcg}}
            )
        )
    return registry, dataset


def bundle_of(settings: Settings, dataset: Dataset, model_id: str) -> str:
    """Build the model's serving bundle (what a publish job builds) and return its path."""
    out = settings.bundles_dir.resolve() / f"{model_id}-test"
    if not out.is_dir():
        build_bundle(settings.models_dir.resolve() / model_id, dataset, out, model_id=model_id)
    return str(out)


def serve(registry: Registry, settings: Settings, dataset: Dataset, model_id: str) -> PublishEntry:
    """Record a publish of `model_id` exactly as the worker's publish step does."""
    return registry.record_publish(
        PublishEntry(model_id=model_id, bundle_dir=bundle_of(settings, dataset, model_id))
    )


def wait_served(client: TestClient, model_id: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/v1/serving").json().get("model_id") != model_id:
        assert time.monotonic() < deadline, client.get("/v1/serving").text
        time.sleep(0.05)


@pytest.fixture()
def world(make_settings: Callable[..., Settings]) -> Any:
    def make(**overrides: Any) -> tuple[TestClient, Settings, Registry, Dataset]:
        settings = make_settings(**overrides)
        registry, dataset = seed(settings)
        return TestClient(create_app(settings)), settings, registry, dataset

    return make


# -- history ----------------------------------------------------------------------------------


def test_history_lists_publishes_newest_first_with_the_previous_model(world) -> None:
    client, settings, registry, dataset = world()
    with client:
        assert client.get("/v1/serving/history").json() == {
            "items": [],
            "total": 0,
            "limit": 50,
            "offset": 0,
        }
        serve(registry, settings, dataset, "student-good")
        serve(registry, settings, dataset, "teacher-1")
        body = client.get("/v1/serving/history").json()
        assert body["total"] == 2 and [e["model_id"] for e in body["items"]] == [
            "teacher-1",
            "student-good",
        ]
        newest, oldest = body["items"]
        assert newest["previous_model_id"] == "student-good" and oldest["previous_model_id"] is None
        assert (
            newest["action"] == "publish"
            and newest["forced"] is False
            and newest["key_name"] is None
        )
        assert newest["published_at"] >= oldest["published_at"]
        page = client.get("/v1/serving/history", params={"limit": 1, "offset": 1}).json()
        assert [e["model_id"] for e in page["items"]] == ["student-good"] and page["total"] == 2
        for params, field in (
            ({"limit": 0}, "limit"),
            ({"offset": -1}, "offset"),
            ({"limit": "x"}, "limit"),
        ):
            r = client.get("/v1/serving/history", params=params)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", field]
        assert registry.get_active().model_id == "teacher-1"  # type: ignore[union-attr]


# -- the gate at submission ------------------------------------------------------------------


def test_gate_refuses_a_student_more_biased_than_its_teacher(world, settings: Settings) -> None:
    client, settings, registry, _ = world()
    r0 = redis.Redis.from_url(settings.redis_url or "")
    with client:
        r = client.post("/v1/models/student-biased/publish")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert detail.startswith(
            "model_id='student-biased': publish gate refused it: head_share@20"
        )
        assert "0.6000, above 1 x its teacher teacher-1's 0.5000" in detail
        assert '{"force": true}' in detail and "UNKD_GATE_MAX_HEAD_SHARE_RATIO" in detail
        assert r0.llen(settings.light_queue) == 0 and registry.list_jobs()[1] == 0  # nothing queued
        # The way out the message names: force, recorded on the job for the history.
        r = client.post("/v1/models/student-biased/publish", json={"force": True})
        assert r.status_code == 202, r.text
        job = registry.get_job(r.json()["id"])
        assert job.params["force"] is True and job.params["key_name"] is None
        assert r0.llen(settings.light_queue) == 1
        client.delete(r.json()["status_url"])
        # A looser threshold for this publish only.
        r = client.post("/v1/models/student-biased/publish", json={"max_head_share_ratio": 1.25})
        assert r.status_code == 202, r.text
        assert (
            registry.get_job(r.json()["id"]).params["gate_policy"]["max_head_share_ratio"] == 1.25
        )
        client.delete(r.json()["status_url"])
        assert client.post("/v1/models/student-good/publish").status_code == 202  # passes
        for body, field in (
            ({"force": "maybe"}, "force"),
            ({"forse": True}, "forse"),
            ({"min_ndcg_ratio": -1}, "min_ndcg_ratio"),
        ):
            r = client.post("/v1/models/student-biased/publish", json=body)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, r.text
        r = client.post("/v1/models/m-nope/publish", json={"force": True})
        assert r.status_code == 404 and r.json()["detail"] == "model_id='m-nope': no such model"


def test_gate_refuses_a_model_far_below_the_served_ndcg(world) -> None:
    client, settings, registry, dataset = world()
    with client:
        assert (
            client.post("/v1/models/student-weak/publish").status_code == 202
        )  # nothing served yet
        serve(registry, settings, dataset, "student-good")
        r = client.post("/v1/models/student-weak/publish")
        assert r.status_code == 409
        assert (
            "ndcg@20 of student-weak is 0.1000, below 0.9 x the served student-good's 0.2900 = 0.2610"
            in r.json()["detail"]
        )
        assert registry.get_active().model_id == "student-good"  # type: ignore[union-attr]


def test_gate_holds_a_teacher_to_the_served_ndcg(world) -> None:
    client, settings, registry, dataset = world()
    with client:
        serve(registry, settings, dataset, "student-good")  # ndcg@20 0.29: floor 0.261
        r = client.post("/v1/models/teacher-weak/publish")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert (
            "ndcg@20 of teacher-weak is 0.2000, below 0.9 x the served student-good's 0.2900 = 0.2610"
            in detail
        )
        assert "head_share" not in detail  # a teacher is not held to its own head share
        assert client.post("/v1/models/teacher-1/publish").status_code == 202  # 0.30 passes
        assert registry.get_active().model_id == "student-good"  # type: ignore[union-attr]


def test_settings_change_or_switch_off_the_gate(world) -> None:
    for overrides in ({"publish_gate": False}, {"gate_max_head_share_ratio": 1.3}):
        client, *_ = world(**overrides)
        with client:
            r = client.post("/v1/models/student-biased/publish")
            assert r.status_code == 202, (overrides, r.text)
            client.delete(r.json()["status_url"])  # frees the model for the next publish
    client, *_ = world(gate_max_head_share_ratio=0.7)
    with client:
        r = client.post("/v1/models/student-good/publish")
        assert r.status_code == 409 and "above 0.7 x its teacher" in r.json()["detail"]


# -- rollback ---------------------------------------------------------------------------------


def test_rollback_without_history_is_409_and_changes_nothing(world) -> None:
    client, settings, registry, dataset = world()
    with client:
        r = client.post("/v1/serving/rollback")
        assert r.status_code == 409
        assert (
            r.json()["detail"] == "rollback='nothing': nothing to roll back to: no model is served"
        )
        serve(registry, settings, dataset, "student-good")
        serve(
            registry, settings, dataset, "student-good"
        )  # the same model again: still nothing before it
        r = client.post("/v1/serving/rollback")
        assert r.status_code == 409 and r.json()["detail"] == (
            "rollback='student-good': nothing to roll back to: the publish history holds no model "
            "other than the served one"
        )
        assert client.get("/v1/serving/history").json()["total"] == 2


def test_rollback_to_a_model_whose_bundle_is_gone_is_409_naming_it(world) -> None:
    client, settings, registry, dataset = world()
    with client:
        gone = serve(registry, settings, dataset, "student-good")
        serve(registry, settings, dataset, "teacher-1")
        shutil.rmtree(gone.bundle_dir)
        r = client.post("/v1/serving/rollback")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert detail.startswith(
            "model_id='student-good': cannot roll back to it: its serving bundle"
        )
        assert (
            "still serving teacher-1" in detail and "POST /v1/models/student-good/publish" in detail
        )
        assert registry.get_active().model_id == "teacher-1"  # type: ignore[union-attr]
        assert client.get("/v1/serving/history").json()["total"] == 2


def test_rollback_serves_the_previous_model_and_the_api_swaps_to_it(world) -> None:
    client, settings, registry, dataset = world(api_keys=KEYS)
    user = str(dataset.user_ids[0])
    with client:
        serve(registry, settings, dataset, "student-good")
        serve(registry, settings, dataset, "student-biased")
        wait_served(client, "student-biased")
        r = client.post("/v1/serving/rollback", headers=AS_ADMIN)
        assert r.status_code == 200, r.text
        entry = r.json()
        assert entry["model_id"] == "student-good" and entry["action"] == "rollback"
        assert entry["previous_model_id"] == "student-biased" and entry["key_name"] == "ops"
        assert entry["bundle_dir"] == bundle_of(
            settings, dataset, "student-good"
        )  # its own bundle again
        wait_served(client, "student-good")
        assert (
            client.get(f"/v1/recommendations/{user}", params={"k": 3}).json()["model_id"]
            == "student-good"
        )
        history = client.get("/v1/serving/history").json()["items"]
        assert [(e["model_id"], e["action"]) for e in history] == [
            ("student-good", "rollback"),
            ("student-biased", "publish"),
            ("student-good", "publish"),
        ]
        # Rolling back again puts back the model the rollback replaced.
        assert (
            client.post("/v1/serving/rollback", headers=AS_ADMIN).json()["model_id"]
            == "student-biased"
        )
        wait_served(client, "student-biased")


# -- the worker's side: history written by publish jobs, the gate checked again ----------------


@pytest.mark.timeout(180)
def test_publish_jobs_record_history_and_the_worker_checks_the_gate_again(
    world, tmp_path: Path
) -> None:
    client, settings, registry, dataset = world(api_keys=KEYS)
    worker = WorkerProcess(settings, tmp_path / "worker.log", "gate")

    def finish(job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 90
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline, (job, worker.log.read_text()[-2000:])
            time.sleep(0.1)
        return job

    with client:
        # Queued while nothing is served: weak passes the gate at submission ...
        weak = client.post("/v1/models/student-weak/publish", headers=AS_ADMIN)
        assert weak.status_code == 202, weak.text
        serve(registry, settings, dataset, "student-good")  # ... then good is published meanwhile
        worker.start()
        try:
            job = finish(weak.json()["id"])
            # ... and the worker refuses it at publish time, with the same message.
            assert (
                job["status"] == "failed"
                and "publish gate refused it: ndcg@20 of student-weak" in job["error"]
            )
            assert registry.get_active().model_id == "student-good"  # type: ignore[union-attr]
            forced = client.post(
                "/v1/models/student-biased/publish", json={"force": True}, headers=AS_ADMIN
            )
            assert forced.status_code == 202, forced.text
            assert finish(forced.json()["id"])["status"] == "succeeded"
        finally:
            worker.stop()
        wait_served(client, "student-biased")
        latest = client.get("/v1/serving/history").json()["items"][0]
        assert latest["model_id"] == "student-biased" and latest["forced"] is True
        assert latest["key_name"] == "ops" and latest["job_id"] == forced.json()["id"]
        assert latest["previous_model_id"] == "student-good"
        assert [c["passed"] for c in latest["gate"] if c["rule"] == "head_share"] == [False]
        assert ADMIN not in str(latest) and client.get("/v1/serving/history").json()["total"] == 2


def test_a_staged_publish_builds_a_bundle_an_arm_serves_and_changes_nothing_served(
    world, tmp_path: Path
) -> None:
    """{"activate": false}: the worker builds and stores the bundle, the gate does not apply,
    the active model and the history stay; an experiment can then serve it on an arm."""
    client, settings, registry, dataset = world(api_keys=KEYS)
    worker = WorkerProcess(settings, tmp_path / "worker.log", "stage")
    with client:
        serve(registry, settings, dataset, "student-good")
        wait_served(client, "student-good")
        arms = {
            "arms": [
                {"model_id": "student-good", "weight": 0.5},
                {"model_id": "student-biased", "weight": 0.5},
            ]
        }
        r = client.put("/v1/serving/experiment", json=arms, headers=AS_ADMIN)
        assert r.status_code == 409 and '{"activate": false}' in r.json()["detail"], r.text
        r = client.post(
            "/v1/models/student-biased/publish", json={"activate": False}, headers=AS_ADMIN
        )
        assert r.status_code == 202, (
            r.text
        )  # gated if served (head share above its teacher's); not here
        worker.start()
        try:
            deadline = time.monotonic() + 90
            while (job := client.get(f"/v1/jobs/{r.json()['id']}").json())["status"] not in (
                "succeeded",
                "failed",
            ):
                assert time.monotonic() < deadline, (job, worker.log.read_text()[-2000:])
                time.sleep(0.1)
        finally:
            worker.stop()
        assert job["status"] == "succeeded", job
        staged = registry.staged_bundle("student-biased")
        assert staged is not None and staged.key_name == "ops" and staged.job_id == job["id"]
        assert registry.get_active().model_id == "student-good"  # type: ignore[union-attr]
        history = client.get("/v1/serving/history").json()
        assert history["total"] == 1 and history["items"][0]["model_id"] == "student-good"
        r = client.put("/v1/serving/experiment", json=arms, headers=AS_ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["arms"][1]["bundle_dir"] == staged.bundle_dir
        models = {
            m
            for u in range(40)
            for m in [client.get(f"/v1/recommendations/{dataset.user_ids[u]}").json()["model_id"]]
        }
        assert models == {"student-good", "student-biased"}
