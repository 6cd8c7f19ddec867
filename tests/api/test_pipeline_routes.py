"""Pipelines through the whole app (create_app) on a real Redis: the recipe's validation,
PUT/GET/DELETE, POST .../run and the run records.

No worker runs here: a run's task is executed in this process by Celery's `apply` (the
project's app with worker.tasks), which runs the same body a worker would, so a run goes
through the versions, the jobs, the gate and the publish for real. The expected counts
(new events, runs, their order) come from what the test sent, never from the service.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from celery import Celery
from fastapi.testclient import TestClient

from service.core.config import Settings
from service.core.queue import PIPELINE_RUN, make_celery

POSITIVE = ("click", "purchase")  # the default UNKD_EVENTS_POSITIVE_TYPES

TEACHER = {"model": "mf", "dim": 8, "epochs": 3, "batch_size": 256, "seed": 1}
DISTILL = {"method": "unkd", "dim": 4, "epochs": 2, "batch_size": 256}


def interactions(n_users: int = 40, n_items: int = 30, per_user: int = 6) -> bytes:
    """A long-tailed CSV: item i drawn with weight 1 / (i + 1)."""
    rng = np.random.default_rng(3)
    weights = 1.0 / np.arange(1, n_items + 1)
    rows = ["user,item"]
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False, p=weights / weights.sum())
        rows += [f"u{u}" + f",i{i}" for i in items]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture()
def dataset_id(client: TestClient) -> str:
    r = client.post(
        "/v1/datasets",
        files={"file": ("p.csv", interactions())},
        data={"split": "random", "seed": "2"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture()
def worker_app(settings: Settings) -> Celery:
    """The worker's app (its tasks included), to run a run's task here with `apply`."""
    app = make_celery(settings, set_as_current=False, include=["worker.tasks"])
    app.loader.import_default_modules()
    return app


def recipe(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "teacher": TEACHER, "distill": DISTILL, **extra}


def execute(worker_app: Celery, run_id: str) -> None:
    """The run's task, as the worker would run it (in this process)."""
    worker_app.tasks[PIPELINE_RUN].apply(args=[run_id], task_id=run_id).get()


def push(client: TestClient, events: list[dict[str, str]]) -> None:
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 202, r.text


# -- the recipe ----------------------------------------------------------------------------------


def locs(r: Any) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in r.json()["detail"]]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"teacher": {**TEACHER, "dim": 0}}, "body.teacher.dim"),
        ({"teacher": {**TEACHER, "model": "nope"}}, "body.teacher.model"),
        ({"teacher": {**TEACHER, "dataset_id": "x"}}, "body.teacher.dataset_id"),
        ({"distill": {**DISTILL, "method": "nope"}}, "body.distill.method"),
        ({"distill": {**DISTILL, "teacher_id": "t"}}, "body.distill.teacher_id"),
        ({"gate": {"max_head_share_ratio": 0}}, "body.gate.max_head_share_ratio"),
        ({"every_s": 0}, "body.every_s"),
        ({"min_new_events": -1}, "body.min_new_events"),
        ({"frequency": 3}, "body.frequency"),
        ({"version_split": "random"}, "body.version_split"),
    ],
)
def test_a_bad_field_is_a_422_naming_it(
    client: TestClient, dataset_id: str, change: dict[str, Any], field: str
) -> None:
    r = client.put("/v1/pipelines/p1", json={**recipe(dataset_id), **change})
    assert r.status_code == 422, r.text
    assert field in locs(r), r.json()
    assert client.get("/v1/pipelines/p1").status_code == 404


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"schedule": "* * *"}, "5 fields"),
        ({"schedule": "61 * * * *"}, "61"),
        ({"on_pass": "experiment"}, "share"),
        ({"on_pass": "stage", "share": 0.2}, "share"),
        ({"schedule": "0 3 * * *", "every_s": 60}, "every_s"),
    ],
)
def test_an_inconsistent_recipe_is_a_422_saying_why(
    client: TestClient, dataset_id: str, change: dict[str, Any], words: str
) -> None:
    r = client.put("/v1/pipelines/p1", json={**recipe(dataset_id), **change})
    assert r.status_code == 422, r.text
    assert words in r.text


def test_a_teacher_without_embeddings_needs_distill(client: TestClient, dataset_id: str) -> None:
    body = {"dataset_id": dataset_id, "teacher": {"model": "ease"}}
    r = client.put("/v1/pipelines/p1", json=body)
    assert r.status_code == 422 and locs(r) == ["body.distill"], r.text
    # no model named: the teacher job's default on this small set is EASE, refused the same
    r = client.put("/v1/pipelines/p1", json={"dataset_id": dataset_id, "teacher": {"dim": 8}})
    assert r.status_code == 422 and locs(r) == ["body.distill"], r.text
    body = {"dataset_id": dataset_id, "teacher": {"model": "als", "dim": 8}}
    assert client.put("/v1/pipelines/p1", json=body).status_code == 201


def test_an_unknown_dataset_is_a_404_naming_it(client: TestClient) -> None:
    r = client.put("/v1/pipelines/p1", json=recipe("ds-nope"))
    assert r.status_code == 404, r.text
    assert "dataset_id" in r.text and "ds-nope" in r.text


def test_put_get_list_delete(client: TestClient, dataset_id: str) -> None:
    first = recipe(dataset_id, on_pass={"action": "experiment", "share": 0.25}, every_s=3600)
    r = client.put("/v1/pipelines/nightly", json=first)
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["name"] == "nightly" and stored["on_pass"] == "experiment"
    assert stored["share"] == 0.25 and stored["every_s"] == 3600
    assert stored["teacher"]["dim"] == 8 and stored["distill"]["method"] == "unkd"
    assert stored["version_split"] == "temporal"  # the default
    assert client.get("/v1/pipelines/nightly").json() == stored

    r = client.put("/v1/pipelines/nightly", json=recipe(dataset_id, schedule="0 3 * * *"))
    assert r.status_code == 200, r.text
    replaced = r.json()
    assert replaced["schedule"] == "0 3 * * *" and replaced["every_s"] is None
    assert replaced["on_pass"] == "activate" and replaced["created_at"] == stored["created_at"]

    assert client.put("/v1/pipelines/other", json=recipe(dataset_id)).status_code == 201
    listed = client.get("/v1/pipelines").json()
    assert listed["total"] == 2
    assert [p["name"] for p in listed["items"]] == ["other", "nightly"]  # newest first

    assert client.delete("/v1/pipelines/nightly").status_code == 200
    assert client.get("/v1/pipelines/nightly").status_code == 404
    assert client.delete("/v1/pipelines/nightly").status_code == 404
    assert [p["name"] for p in client.get("/v1/pipelines").json()["items"]] == ["other"]
    assert client.put("/v1/pipelines/bad name", json=recipe(dataset_id)).status_code == 422


def test_pipelines_need_keys(make_settings: Any, dataset_id: str, client: TestClient) -> None:
    from service.api.app import create_app

    with TestClient(create_app(make_settings(api_keys=["k" * 20]))) as secured:
        assert secured.put("/v1/pipelines/p", json=recipe(dataset_id)).status_code == 401
        assert secured.post("/v1/pipelines/p/run").status_code == 401
        headers = {"Authorization": "Bearer " + "k" * 20}
        r = secured.put("/v1/pipelines/p", json=recipe(dataset_id), headers=headers)
        assert r.status_code == 201 and r.json()["key_name"], r.text


# -- runs ----------------------------------------------------------------------------------------


def test_a_run_without_new_data_is_skipped_and_runs_are_newest_first(
    client: TestClient, dataset_id: str, worker_app: Celery
) -> None:
    assert client.post("/v1/pipelines/p1/run").status_code == 404
    assert client.put("/v1/pipelines/p1", json=recipe(dataset_id)).status_code == 201
    ids = []
    for _ in range(3):
        r = client.post("/v1/pipelines/p1/run")
        assert r.status_code == 202, r.text
        run = r.json()
        assert run["status"] == "queued" and run["trigger"] == "manual"
        assert r.headers["Location"] == f"/v1/pipelines/p1/runs/{run['run_id']}"
        again = client.post("/v1/pipelines/p1/run")  # one run at a time
        assert again.status_code == 409 and run["run_id"] in again.text
        execute(worker_app, run["run_id"])
        ended = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
        assert ended["status"] == "skipped", ended
        assert ended["new_events"] == 0 and "no new data" in ended["reason"]
        assert ended["teacher_job"] is None and ended["published"] is None
        assert ended["started_at"] and ended["finished_at"]
        ids.append(run["run_id"])
        time.sleep(0.01)  # distinct creation times
    runs = client.get("/v1/pipelines/p1/runs").json()
    assert runs["total"] == 3 and [r["run_id"] for r in runs["items"]] == ids[::-1]
    page = client.get("/v1/pipelines/p1/runs", params={"limit": 1, "offset": 1}).json()
    assert [r["run_id"] for r in page["items"]] == [ids[1]]
    assert client.get(f"/v1/pipelines/other/runs/{ids[0]}").status_code == 404


def test_a_run_after_new_events_trains_gates_and_publishes(
    client: TestClient, dataset_id: str, worker_app: Celery
) -> None:
    assert (
        client.put("/v1/pipelines/p1", json=recipe(dataset_id, min_new_events=3)).status_code == 201
    )
    sent = [
        {"user_id": "u1", "item_id": "i29", "type": "click"},
        {"user_id": "u2", "item_id": "i28", "type": "purchase"},
        {"user_id": "u3", "item_id": "i27", "type": "view"},  # not positive
        {"user_id": "u77", "item_id": "i1", "type": "click"},  # a new user
    ]
    push(client, sent[:2])
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    few = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert few["status"] == "skipped" and few["new_events"] == 2, few  # 2 < 3

    push(client, sent[2:])
    positive = sum(e["type"] in POSITIVE for e in sent)
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    done = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert done["status"] == "succeeded", done
    assert done["new_events"] == positive and done["dataset_version"] != dataset_id
    version = client.get(f"/v1/datasets/{done['dataset_version']}").json()
    assert version["parent_id"] == dataset_id and version["version"] == 1

    for kind, key in (("teacher", "teacher_job"), ("distill", "distill_job")):
        job = client.get(f"/v1/jobs/{done[key]}").json()
        assert job["kind"] == kind and job["status"] == "succeeded", job
        assert job["pipeline_run"] == run["run_id"]
    teacher = client.get(f"/v1/models/{done['teacher_id']}").json()
    student = client.get(f"/v1/models/{done['student_id']}").json()
    assert teacher["lineage"]["dataset_id"] == done["dataset_version"]
    assert student["lineage"]["teacher_id"] == done["teacher_id"]
    assert done["metrics"]["student_ndcg@20"] == student["metrics"]["ndcg@20"]
    assert done["metrics"]["teacher_ndcg@20"] == teacher["metrics"]["ndcg@20"]
    assert [c["rule"] for c in done["gate"]] == ["head_share"]  # nothing served yet
    assert done["published"] == {
        "model_id": done["student_id"],
        "action": "activate",
        "experiment_share": None,
    }
    assert client.get("/v1/models", params={"active": "true"}).status_code == 200
    served = client.get(f"/v1/models/{done['student_id']}").json()
    assert served["active"] is True

    # the same data again: skipped, the served model kept
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    again = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert again["status"] == "skipped" and again["new_events"] == 0, again
    assert done["dataset_version"] in again["reason"]


def test_a_recipe_with_the_append_split_trains_on_every_new_pair(
    client: TestClient, dataset_id: str, settings: Settings, worker_app: Celery
) -> None:
    from training.dataset import Dataset

    body = recipe(dataset_id, version_split="append", gate={"enabled": False})
    r = client.put("/v1/pipelines/p1", json=body)
    assert r.status_code == 201 and r.json()["version_split"] == "append", r.text
    parent = Dataset.load(settings.datasets_dir / dataset_id)
    before = {
        (str(parent.user_ids[u]), str(parent.item_ids[i])): name
        for name in ("train", "valid", "test")
        for u, i in parent.split(name).tolist()
    }
    sent = [
        {"user_id": "u1", "item_id": "i29", "type": "click"},
        {"user_id": "u2", "item_id": "i28", "type": "purchase"},
        {"user_id": "u3", "item_id": "i27", "type": "view"},  # not positive
        {"user_id": "u77", "item_id": "i1", "type": "click"},  # a new user
        {"user_id": "u4", "item_id": "i0", "type": "click"},
    ]
    push(client, sent)
    new = {(e["user_id"], e["item_id"]) for e in sent if e["type"] in POSITIVE} - set(before)
    assert new  # the test would prove nothing without pairs the parent lacks
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    done = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert done["status"] == "succeeded", done
    version = client.get(f"/v1/datasets/{done['dataset_version']}").json()
    assert version["parent_id"] == dataset_id and version["lineage"]["split"] == "append"
    ds = Dataset.load(settings.datasets_dir / version["id"])
    after = {
        (str(ds.user_ids[u]), str(ds.item_ids[i])): name
        for name in ("train", "valid", "test")
        for u, i in ds.split(name).tolist()
    }
    assert after == {**before, **dict.fromkeys(new, "train")}
    teacher = client.get(f"/v1/models/{done['teacher_id']}").json()
    assert teacher["lineage"]["dataset_id"] == version["id"]


def test_a_run_the_gate_refuses_keeps_the_served_model(
    client: TestClient, dataset_id: str, worker_app: Celery
) -> None:
    assert (
        client.put("/v1/pipelines/p1", json=recipe(dataset_id, min_new_events=0)).status_code == 201
    )
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    first = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert first["status"] == "succeeded" and first["dataset_version"] == dataset_id, first
    served = first["student_id"]

    strict = recipe(dataset_id, min_new_events=0, gate={"max_head_share_ratio": 0.001})
    assert client.put("/v1/pipelines/p1", json=strict).status_code == 200
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    refused = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert refused["status"] == "refused", refused
    assert refused["published"] is None and refused["student_id"] != served
    head = [c for c in refused["gate"] if c["rule"] == "head_share"]
    assert head and head[0]["passed"] is False and refused["student_id"] in refused["reason"]
    ndcg = [c for c in refused["gate"] if c["rule"] == "ndcg"]
    assert ndcg and ndcg[0]["passed"] is not None  # the same dataset: compared with `served`
    assert client.get(f"/v1/models/{served}").json()["active"] is True
    assert client.get(f"/v1/models/{refused['student_id']}").json()["active"] is False


def test_on_pass_stage_and_experiment(
    client: TestClient, dataset_id: str, worker_app: Celery
) -> None:
    assert (
        client.put("/v1/pipelines/p1", json=recipe(dataset_id, min_new_events=0)).status_code == 201
    )
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    served = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()["student_id"]

    body = recipe(dataset_id, min_new_events=0, on_pass="stage", gate={"enabled": False})
    assert client.put("/v1/pipelines/p1", json=body).status_code == 200
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    staged = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert staged["status"] == "succeeded" and staged["published"]["action"] == "stage", staged
    assert client.get(f"/v1/models/{served}").json()["active"] is True

    body = recipe(
        dataset_id,
        min_new_events=0,
        on_pass={"action": "experiment", "share": 0.3},
        gate={"enabled": False},
    )
    assert client.put("/v1/pipelines/p1", json=body).status_code == 200
    run = client.post("/v1/pipelines/p1/run").json()
    execute(worker_app, run["run_id"])
    exp = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert exp["status"] == "succeeded", exp
    assert exp["published"] == {
        "model_id": exp["student_id"],
        "action": "experiment",
        "experiment_share": 0.3,
    }
    arms = {a["model_id"]: a["weight"] for a in client.get("/v1/serving/experiment").json()["arms"]}
    assert arms == pytest.approx({served: 0.7, exp["student_id"]: 0.3})


def test_openapi_documents_the_pipeline_routes_with_examples(client: TestClient) -> None:
    from service.core.pipelines import PipelineRecipe, PipelineRun

    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    assert {"put", "get", "delete"} <= set(paths["/v1/pipelines/{name}"])
    run = paths["/v1/pipelines/{name}/run"]["post"]["responses"]
    queued = PipelineRun.model_validate(run["202"]["content"]["application/json"]["example"])
    assert queued.status == "queued" and "409" in run
    listed = paths["/v1/pipelines/{name}/runs"]["get"]["responses"]["200"]["content"]
    one = PipelineRun.model_validate(listed["application/json"]["example"]["items"][0])
    assert one.status == "succeeded" and one.published is not None
    assert "get" in paths["/v1/pipelines/{name}/runs/{run_id}"]
    (example,) = doc["components"]["schemas"]["PipelineRecipe"]["examples"]
    assert PipelineRecipe.model_validate(example).on_pass == "experiment"
    assert PipelineRecipe.model_validate(example).version_split == "append"


def test_concurrent_ticks_start_one_run_per_slot(
    client: TestClient, dataset_id: str, worker_app: Celery, settings: Settings
) -> None:
    """Eight ticks at the same instant (as from several schedulers and workers), twice per
    slot: one run per slot, and none while a run holds the lock."""
    import threading

    from worker.pipeline_tick import tick

    body = recipe(dataset_id, every_s=60)
    assert client.put("/v1/pipelines/p1", json=body).status_code == 201
    slot = (int(time.time()) // 60 + 1) * 60  # the next slot, after the recipe was saved
    started: list[str] = []

    def ticks(now: float) -> None:
        barrier = threading.Barrier(8)

        def one() -> None:
            barrier.wait()
            started.extend(tick(worker_app, now=now)["started"])

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    ticks(slot + 1.0)
    assert len(started) == 1, started
    ticks(slot + 2.0)  # the same slot, its run still queued: nothing more
    assert len(started) == 1, started
    execute(worker_app, started[0])  # skipped (no new data): the lock is free again
    ticks(slot + 3.0)  # the same slot, already run
    assert len(started) == 1, started
    ticks(slot + 61.0)  # the next slot
    assert len(started) == 2, started
    runs = client.get("/v1/pipelines/p1/runs").json()["items"]
    assert [r["run_id"] for r in runs] == started[::-1]
    assert [r["trigger"] for r in runs] == ["schedule", "schedule"]


def test_a_recipe_without_distill_publishes_its_teacher(
    client: TestClient, dataset_id: str, worker_app: Celery
) -> None:
    body = {"dataset_id": dataset_id, "teacher": TEACHER, "min_new_events": 0}
    assert client.put("/v1/pipelines/t", json=body).status_code == 201
    run = client.post("/v1/pipelines/t/run").json()
    execute(worker_app, run["run_id"])
    done = client.get(f"/v1/pipelines/t/runs/{run['run_id']}").json()
    assert done["status"] == "succeeded", done
    assert done["distill_job"] is None and done["student_id"] is None
    assert done["published"]["model_id"] == done["teacher_id"]
    assert set(done["metrics"]) >= {"teacher_ndcg@20", "teacher_head_share@20"}
    assert client.get(f"/v1/models/{done['teacher_id']}").json()["active"] is True


def test_a_run_that_lost_its_lock_is_failed_once_even_after_its_pipeline_is_deleted(
    client: TestClient, dataset_id: str, worker_app: Celery, redis_client: Any
) -> None:
    from service.core import keys
    from worker.pipeline_tick import tick

    assert client.put("/v1/pipelines/p1", json=recipe(dataset_id)).status_code == 201
    run = client.post("/v1/pipelines/p1/run").json()
    assert client.delete("/v1/pipelines/p1").status_code == 200
    assert tick(worker_app)["reaped"] == []  # it holds the lock: left alone
    redis_client.delete(keys.pipeline_lock("p1"))  # as when its worker stopped renewing it
    assert tick(worker_app)["reaped"] == [run["run_id"]]
    failed = client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json()
    assert failed["status"] == "failed" and "lock expired" in failed["reason"], failed
    assert tick(worker_app)["reaped"] == []  # once
    execute(worker_app, run["run_id"])  # its task delivered late: does nothing
    assert client.get(f"/v1/pipelines/p1/runs/{run['run_id']}").json() == failed
