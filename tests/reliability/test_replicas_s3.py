"""Past one machine: a worker and two API processes that share nothing but Redis and an S3
artifact store (moto's server on loopback, tests/support/s3.py).

Each process has its own data dir, as if on its own host: the worker holds the dataset and
the models, and publishes through a real publish job, which builds the bundle, puts it in
the store (manifest last) and moves the pointer to its URL. Each API fetches the bundle into
its own cache, verifies it, loads it and serves it; an API started later fetches the active
bundle the same way, an experiment arm it never served is fetched when the experiment
starts, and a rollback resolves the older bundle through the store too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.core.artifacts import MANIFEST_FILE
from service.core.config import Settings
from service.core.registry import Registry
from tests.reliability.conftest import observe, seed_dataset, seed_model, wait_until
from tests.support.answers import same_answer
from tests.support.live_api import LiveAPI
from tests.support.s3 import S3Server
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

A, B = "student-s3-a", "student-s3-b"
JOB_TIMEOUT_S = 90
SWAP_TIMEOUT_S = 30


def _served(client: httpx.Client, user: str) -> str | None:
    r = client.get(f"/v1/recommendations/{user}?k=5")
    return r.json().get("model_id") if r.status_code == 200 else None


def _publish(client: httpx.Client, model_id: str) -> dict:
    r = client.post(f"/v1/models/{model_id}/publish")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_until(
        lambda: (
            (s := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
            and s
        ),
        JOB_TIMEOUT_S,
        f"publish job {job_id} of {model_id}",
    )
    assert job["status"] == "succeeded", job
    return job


def test_two_api_hosts_serve_what_the_worker_puts_in_s3(
    make_settings: Callable[..., Settings],
    registry_of: Callable[[Settings], Registry],
    s3_server: S3Server,
    s3_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    live_api: Callable[..., LiveAPI],
    tmp_path: Path,
) -> None:
    url = f"s3://{s3_server.make_bucket()}/artifacts"
    worker_settings = make_settings(data_dir=tmp_path / "host-worker", artifact_url=url)
    api_settings = {
        host: worker_settings.model_copy(update={"data_dir": tmp_path / host})
        for host in ("host-a", "host-b")
    }  # same Redis and queues, own disks
    registry = registry_of(worker_settings)
    dataset = seed_dataset(worker_settings, registry)  # datasets and models: the worker's disk only
    for model_id, seed in ((A, 41), (B, 42)):
        seed_model(worker_settings, registry, dataset, model_id, seed=seed)
    user = str(dataset.user_ids[0])

    start_worker(worker_settings, "s3", env=s3_env)
    api_a = live_api(api_settings["host-a"], env=s3_env)
    a = httpx.Client(base_url=api_a.url, timeout=30)
    job_a = _publish(a, A)
    wait_until(lambda: _served(a, user) == A, SWAP_TIMEOUT_S, "host A to serve model A")
    job_b = _publish(a, B)
    wait_until(lambda: _served(a, user) == B, SWAP_TIMEOUT_S, "host A to serve model B")

    active = registry.get_active()
    assert active is not None and active.bundle_dir == f"{url}/bundles/{B}-{job_b['id'][:8]}"
    # A replica started after the publish fetches the active bundle into its own cache.
    api_b = live_api(api_settings["host-b"], ready="/readyz", env=s3_env)
    b = httpx.Client(base_url=api_b.url, timeout=30)
    assert _served(b, user) == B
    assert same_answer(
        a.get(f"/v1/recommendations/{user}?k=5").json(),
        b.get(f"/v1/recommendations/{user}?k=5").json(),
    )

    # An experiment arm host B never served (A) is fetched from the store when it starts.
    r = b.put(
        "/v1/serving/experiment",
        json={"arms": [{"model_id": A, "weight": 0.5}, {"model_id": B, "weight": 0.5}]},
    )
    assert r.status_code == 200, r.text
    assert [arm["bundle_dir"] for arm in r.json()["arms"]] == [
        f"{url}/bundles/{A}-{job_a['id'][:8]}",
        f"{url}/bundles/{B}-{job_b['id'][:8]}",
    ]
    users = [str(u) for u in dataset.user_ids[:40]]
    for client in (a, b):
        wait_until(
            lambda c=client: {_served(c, u) for u in users} == {A, B},
            SWAP_TIMEOUT_S,
            "both arms answering",
        )
    assert b.delete("/v1/serving/experiment").status_code == 200

    # A rollback (asked on host B) resolves A's bundle through the store; both hosts follow.
    r = b.post("/v1/serving/rollback")
    assert r.status_code == 200, r.text
    assert r.json()["model_id"] == A and r.json()["bundle_dir"].startswith(url)
    for client in (a, b):
        wait_until(
            lambda c=client: _served(c, user) == A, SWAP_TIMEOUT_S, "model A after the rollback"
        )

    # Shared nothing: each API host holds only its cache of the two bundles, verified.
    for host in ("host-a", "host-b"):
        data = tmp_path / host
        assert not (data / "datasets").exists() and not (data / "models").exists()
        cached = sorted(p.name for p in (data / "cache" / "artifacts" / "bundles").iterdir())
        assert cached == sorted([f"{A}-{job_a['id'][:8]}", f"{B}-{job_b['id'][:8]}"])
        for name in cached:
            assert (data / "cache" / "artifacts" / "bundles" / name / MANIFEST_FILE).is_file()
    bundles = tmp_path / "host-worker" / "bundles"
    assert not bundles.exists() or not any(bundles.iterdir())  # uploaded, then removed locally
    a.close()
    b.close()
    observe(
        "replicas_s3",
        fault="two API hosts and a worker sharing only Redis and an S3 store (moto)",
        publishes=2,
        experiment_arms=2,
        rollbacks=1,
        hosts_in_agreement=2,
    )
