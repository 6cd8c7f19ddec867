"""Tuning jobs end to end: a real Redis, two real Celery worker processes, the API.

- A REST tuning job (`"tune": {"trials": N}` on a distill job): its trials run on both
  workers, GET /v1/jobs/{id} shows progress in trials, the job succeeds with a model whose
  report carries every trial and whose report page draws the trials' front.
- The coordinator, called as a function, fails a trial whose worker died and retries it.
- A worker SIGKILLed in the middle of a trial (the helper, or the coordinator that holds
  the job): its trial is failed as stale and its configuration tried again, and the study
  still finishes N trials; the job succeeds with a model.
- Two workers with data dirs of their own and an S3 store (moto): trials run on both, each
  finished trial's model goes through the store, and the coordinator fetches the best one
  when the other host trained it.

Tiny data and short trials keep each test within about a minute on two CPU cores.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core import keys
from service.core.config import Settings
from service.core.payloads import payload_of
from service.core.queue import make_celery
from service.core.registry import DatasetRecord, JobRecord, Registry
from tests.e2e.test_service_flow import tiny_interactions
from tests.support.config import make_test_settings
from tests.support.workers import WorkerProcess
from training.checkpoint import ModelArtifact
from training.synthetic import generate_synthetic
from training.tuning_space import suggest
from worker import jobs
from worker.training_jobs import TEACHER_JOB
from worker.tuning import open_run, run_helper, trial_lease_id, work_dir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

JOB_TIMEOUT_S = 180
FINISHED = ("succeeded", "failed", "cancelled")
# A lost worker's lease (job or trial) expires after 3 heartbeats: 3 s here.
FAST = {"device": "cpu", "job_heartbeat_s": 1.0, "job_max_retries": 0, "reload_poll_s": 0.2}


@pytest.fixture()
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_test_settings("tune", redis_url=redis_url, data_dir=tmp_path / "data", **FAST)


def _upload(client: TestClient) -> str:
    r = client.post(
        "/v1/datasets",
        files={"file": ("tiny.csv", tiny_interactions())},
        data={"split": "random", "seed": "1"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _until(
    client: TestClient,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float = JOB_TIMEOUT_S,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll GET /v1/jobs/{id} until `done(status)`; returns it and every status seen."""
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(status)
        if done(status):
            return status, seen
        time.sleep(0.1)
    pytest.fail(f"job {job_id}: timed out; last status {seen[-1] if seen else None}")


def _trials_run(worker: WorkerProcess, job_id: str) -> set[int]:
    text = worker.log.read_text(errors="replace")
    return {int(n) for n in re.findall(rf"job {job_id}: trial (\d+) started", text)}


def _teacher_then_tuning_job(client: TestClient) -> str:
    """Upload the tiny data, train a teacher job to success, submit a 4-trial UnKD tuning
    job on it; returns the tuning job's id."""
    dataset_id = _upload(client)
    r = client.post(
        "/v1/jobs",
        json={
            "kind": "teacher",
            "model": "mf",
            "dataset_id": dataset_id,
            "dim": 16,
            "epochs": 30,
            "batch_size": 256,
        },
    )
    teacher, _ = _until(client, r.json()["id"], lambda s: s["status"] in FINISHED)
    assert teacher["status"] == "succeeded", teacher
    r = client.post(
        "/v1/jobs",
        json={
            "kind": "distill",
            "teacher_id": teacher["model_id"],
            "method": "unkd",
            "dim": 8,
            "epochs": 25,
            "patience": 100,
            "batch_size": 128,
            "unkd": {"pairs_per_user": 8, "top_l": 50},
            "tune": {"trials": 4, "prune": False},
        },
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_rest_tuning_job_runs_its_trials_on_two_workers(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    workers = [start_worker(settings, "a"), start_worker(settings, "b")]
    with TestClient(create_app(settings)) as client:
        job_id = _teacher_then_tuning_job(client)
        done, seen = _until(client, job_id, lambda s: s["status"] in FINISHED)
        assert done["status"] == "succeeded", done
        assert done["progress"]["trial"] == done["progress"]["trials"] == 4
        assert any(s["status"] == "running" and 0 < s["progress"]["trial"] < 4 for s in seen), (
            "no status showed the trials being counted"
        )
        counts = [s["progress"]["trial"] for s in seen if s["status"] == "running"]
        assert counts == sorted(counts) and "best_valid_ndcg@20" in done["metrics"]
        ran = [_trials_run(w, job_id) for w in workers]
        assert all(ran) and not ran[0] & ran[1], f"trials per worker: {ran}"  # both, none twice

        model_id = done["model_id"]
        report = client.get(f"/v1/models/{model_id}/report").json()
        tuning = report["tuning"]
        assert len(tuning["trials"]) == 4 and {t["state"] for t in tuning["trials"]} == {"complete"}
        assert tuning["constraint"].startswith("valid head_share@20 <= teacher's")
        best = next(t for t in tuning["trials"] if t["number"] == tuning["best_trial"])
        feasible = [t for t in tuning["trials"] if t["feasible"]]
        # Whether any of 4 trials on tiny data meets the head-share cap is up to the data;
        # the rule is tested either way: the best feasible one, else the least violating.
        assert best["feasible"] is bool(feasible) and tuning["best_feasible"] is bool(feasible)
        if feasible:
            assert best["valid_ndcg"] == max(t["valid_ndcg"] for t in feasible)
        else:
            assert best["valid_head_share"] == min(t["valid_head_share"] for t in tuning["trials"])
        model = client.get(f"/v1/models/{model_id}").json()
        assert model["parameters"]["lr"] == pytest.approx(best["params"]["lr"])
        page = client.get(f"/v1/models/{model_id}/report.html")
        assert page.status_code == 200 and 'data-chart="tuning-front"' in page.text
    assert not work_dir(settings, job_id).exists(), "trial models are removed"


class _Task:
    """What run_job and the helper use of a bound Celery task (no worker behind it)."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings, set_as_current=False)
        self.request = SimpleNamespace(id=None, retries=0)


def test_the_coordinator_fails_a_stale_trial_and_tries_it_again(settings: Settings) -> None:
    """The coordinator's task body, called as a function: a RUNNING trial whose worker died
    (no lease) is failed, its configuration enqueued again, and the study still ends with N
    finished trials; helper messages sent after the job ended run nothing."""
    registry = Registry.from_url(settings.redis_url or "")
    ds = generate_synthetic(n_users=60, n_items=40, interactions_per_user=8, dim=4)
    path = ds.save(settings.datasets_dir / "ds-1")
    registry.add_dataset(
        DatasetRecord(
            id="ds-1", name="s", source="synthetic", fingerprint=ds.fingerprint, path=str(path)
        )
    )
    job = registry.create_job(
        JobRecord(
            id="tj",
            kind="teacher",
            output_model_id="teacher-tj",
            params={
                "dataset_id": "ds-1",
                "config": {"model": "mf", "dim": 4, "epochs": 3, "batch_size": 64},
                "tune": {"trials": 2, "prune": False},
            },
        )
    )
    run = open_run(job, payload_of(job), settings, registry, create=True, seed_offset=0)
    lost = run.study.ask()  # a worker took trial 0 (the job's own configuration) and died
    suggest(lost, run.setup.base)
    task = _Task(settings)
    result = jobs.run_job(task, "tj", TEACHER_JOB)
    assert result["status"] == "succeeded", result
    trials = ModelArtifact.load(settings.models_dir / "teacher-tj").report.tuning.trials  # type: ignore[union-attr]
    assert [(t.number, t.state) for t in trials] == [(0, "fail"), (1, "complete"), (2, "complete")]
    assert (
        trials[1].note == "retry of trial 0: its worker was lost"
        and trials[1].params == trials[0].params
    )
    job = registry.get_job("tj")
    assert (job.progress.trial, job.progress.trials, job.attempts) == (2, 2, 1)
    assert run_helper(task, "tj", 1) == {"job_id": "tj", "trials": 0}  # the job is over
    registry.close()


@pytest.mark.parametrize("victim", ["helper", "coordinator"])
def test_tuning_survives_a_worker_killed_mid_trial(
    settings: Settings, start_worker: Callable[..., WorkerProcess], victim: str
) -> None:
    workers = [start_worker(settings, "a"), start_worker(settings, "b")]
    registry = Registry.from_url(settings.redis_url or "")
    with TestClient(create_app(settings)) as client:
        dataset_id = _upload(client)
        r = client.post(
            "/v1/jobs",
            json={
                "kind": "teacher",
                "model": "mf",
                "dataset_id": dataset_id,
                "dim": 8,
                "epochs": 150,
                "patience": 1000,
                "eval_every": 10,
                "batch_size": 64,
                "tune": {"trials": 4, "prune": False},
            },
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def leases() -> int:  # trials running now: each holds a lease
            return sum(
                registry.redis.exists(keys.job_lease(trial_lease_id(job_id, n))) for n in range(12)
            )

        deadline = time.monotonic() + 60
        while leases() < 2:  # both workers in the middle of a trial
            assert time.monotonic() < deadline, "the two workers never ran trials at once"
            time.sleep(0.05)
        holder = next(w for w in workers if f"job {job_id} (teacher) started" in w.log.read_text())
        killed = holder if victim == "coordinator" else next(w for w in workers if w is not holder)
        killed_trials = _trials_run(killed, job_id)
        killed.kill()

        done, _ = _until(client, job_id, lambda s: s["status"] in FINISHED)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == (2 if victim == "coordinator" else 1), done
        model_id = done["model_id"]
        art = ModelArtifact.load(settings.models_dir / model_id)
        assert (
            art.manifest.id == model_id and client.get(f"/v1/models/{model_id}").status_code == 200
        )
        trials = art.report.tuning.trials  # type: ignore[union-attr]
        finished = [t for t in trials if t.state in ("complete", "pruned")]
        lost = [t for t in trials if t.state == "fail"]
        assert len(finished) == 4, [(t.number, t.state) for t in trials]
        assert [t.number for t in lost] == [max(killed_trials)], (killed_trials, lost)
        retried = [
            t for t in trials if t.note and t.note.startswith(f"retry of trial {lost[0].number}")
        ]
        assert (
            len(retried) == 1
            and retried[0].params == lost[0].params
            and retried[0].state == "complete"
        )
    survivors = [w for w in workers if w is not killed]
    assert all(w.alive() for w in survivors)
    assert not work_dir(settings, job_id).exists()
    assert registry.redis.ttl(f"{keys.tuning_study(job_id)}:log_number") > 0  # the study expires
    registry.close()


def test_tuning_on_two_hosts_shares_trial_models_through_the_store(
    settings: Settings, s3_env: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two workers with data dirs of their own (two hosts) and an S3 store: trials run on
    both, and the coordinator keeps the best one even when the other host trained it."""
    from service.core.artifacts import ArtifactStore
    from tests.support.fixtures import watch_log
    from tests.support.s3 import S3Server
    from worker.tuning import trial_key

    s3: S3Server = request.getfixturevalue("s3_server")
    url = f"s3://{s3.make_bucket()}/artifacts"
    api_settings = settings.model_copy(update={"artifact_url": url, "data_dir": tmp_path / "api"})
    workers = []
    for name in ("a", "b"):
        host = api_settings.model_copy(update={"data_dir": tmp_path / f"host-{name}"})
        w = WorkerProcess(host, tmp_path / f"worker-{name}.log", name, s3_env)
        watch_log(request, f"tuning worker {name}", w.log)
        request.addfinalizer(w.stop)
        workers.append(w.start())
    with TestClient(create_app(api_settings)) as client:
        # The two-worker test's study: shorter trials let the coordinator finish every trial
        # before the other worker's helper task asked for one (seen once in CI).
        job_id = _teacher_then_tuning_job(client)
        done, _ = _until(client, job_id, lambda s: s["status"] in FINISHED)
        assert done["status"] == "succeeded", done
        ran = [_trials_run(w, job_id) for w in workers]
        # Usually both hosts run trials; on a loaded host the other worker's helper task has
        # come after the coordinator finished them all (seen once in CI): then the fetch is
        # not exercised by this run, and the assertions below still hold.
        assert sum(map(len, ran)) == 4 and not ran[0] & ran[1], f"trials per worker: {ran}"
        best = client.get(f"/v1/models/{done['model_id']}/report").json()["tuning"]["best_trial"]
    assert ArtifactStore(url, tmp_path / "reader").exists(
        trial_key(job_id, best)
    )  # put by its host
    logs = [w.log.read_text(errors="replace") for w in workers]
    coordinator = next(i for i, text in enumerate(logs) if f"job {job_id}: coordinating" in text)
    trained_best = next(i for i, trials in enumerate(ran) if best in trials)
    fetched = f"job {job_id}: best trial {best} was trained on another host: fetched from the store"
    # Which host trains the best trial is up to the study: when it is not the coordinator's,
    # the coordinator must have fetched it (without the store it would fail the job).
    assert (fetched in logs[coordinator]) is (coordinator != trained_best), (
        coordinator,
        trained_best,
        ran,
    )
