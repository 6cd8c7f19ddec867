"""Auth and resource bounds, against create_app with a real Redis.

Auth: every mutating route refuses a request without a key (401) or with a wrong one
(403); keys are compared with hmac.compare_digest against every configured key (no early
exit); neither the configured keys nor the wrong candidates ever reach a log record; the
failures are counted in /metrics by reason.

Bounds: k, batch size, body size, list pagination, ids, job hyper-parameters and the job
memory estimate (dim x users) are all capped, each with a 4xx naming the field.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from service.api import auth
from service.api.app import create_app
from service.core.config import Settings
from service.core.registry import Registry
from tests.reliability.conftest import observe, publish_direct, seed_dataset, seed_model

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

KEY = "rel-secret-key-7f3a9c1e"
OTHER_KEY = "rel-other-key-0b2d4e6f"
WRONG = "guess-0123456789abcdef"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture()
def secured(make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, Settings]]:
    """200 users x 150 items, keys required, a 16 MiB job budget, batches of 50 users."""
    settings = make_settings(api_keys=[KEY, OTHER_KEY], max_job_memory_mb=16, max_batch_users=50)
    registry = Registry.from_url(settings.redis_url or "")
    dataset = seed_dataset(settings, registry)
    seed_model(settings, registry, dataset, "teacher-bounds", kind="teacher", dim=16)
    seed_model(settings, registry, dataset, "student-bounds")
    publish_direct(settings, registry, dataset, "student-bounds")
    registry.close()
    app = create_app(settings)
    with TestClient(app) as client:
        client.openapi_paths = app.openapi()["paths"]  # type: ignore[attr-defined]
        yield client, settings


def _mutating_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path with `x` for each path parameter) of every documented mutation."""
    out = []
    for path, operations in client.openapi_paths.items():  # type: ignore[attr-defined]
        for method in operations:
            if method.upper() in MUTATING and path not in READ_POSTS:
                out.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return out


# POSTs that only read (a batch of users, a visitor's history): open like the GETs.
READ_POSTS = {"/v1/recommendations", "/v1/recommendations/by-history"}


def test_mutating_endpoints_need_a_key_and_keys_never_reach_the_logs(
    secured: tuple[TestClient, Settings],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, _ = secured
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    caplog.set_level(logging.DEBUG)
    routes = _mutating_routes(client)
    assert len(routes) >= 4, routes  # datasets, jobs, cancel, publish
    for method, path in routes:
        missing = client.request(method, path, json={})
        wrong = client.request(method, path, json={}, headers={"Authorization": f"Bearer {WRONG}"})
        assert missing.status_code == 401 and "Authorization" in missing.json()["detail"], (
            method,
            path,
        )
        assert missing.headers["www-authenticate"] == "Bearer"
        assert wrong.status_code == 403 and "Authorization" in wrong.json()["detail"], (
            method,
            path,
        )
    # Every configured key is compared, in constant time, whatever the candidate.
    assert len(calls) == 2 * len(routes) and {b for _, b in calls} == {
        KEY.encode(),
        OTHER_KEY.encode(),
    }
    calls.clear()
    ok = client.post(
        "/v1/jobs",
        json={"kind": "teacher", "model": "mf", "dataset_id": "nope"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert ok.status_code == 404 and len(calls) == 2  # matched the first key, still compared both

    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "auth:" in logged  # the failures are logged ...
    for secret in (KEY, OTHER_KEY, WRONG):
        assert secret not in logged  # ... without the keys or the guesses
    metrics = client.get("/metrics").text
    assert f'unkd_auth_failures_total{{reason="missing"}} {float(len(routes))}' in metrics
    assert f'unkd_auth_failures_total{{reason="invalid"}} {float(len(routes))}' in metrics
    # Reads stay open by design (serving and status pages); only mutations need a key.
    assert client.get("/v1/jobs").status_code == 200
    observe(
        "auth",
        attack="every mutating route without a key and with a wrong key",
        routes=len(routes),
        refused_missing=len(routes),
        refused_wrong=len(routes),
        accepted_without_key=0,
        key_in_logs=0,
        compare_digest_calls_per_request=2,
    )


def _loc(r) -> list:  # type: ignore[no-untyped-def]
    detail = r.json()["detail"]
    return detail[0]["loc"] if isinstance(detail, list) else [detail]


def test_resource_bounds_answer_4xx_naming_the_field(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    h = {"Authorization": f"Bearer {KEY}"}
    user = "0"
    teacher = {"kind": "teacher", "model": "mf", "dataset_id": "ds-rel0"}
    distill = {"kind": "distill", "teacher_id": "teacher-bounds"}
    cases: list[tuple[str, Callable[[], object], int, list]] = [
        (
            "k above max_k",
            lambda: client.get(f"/v1/recommendations/{user}", params={"k": settings.max_k + 1}),
            422,
            ["query", "k"],
        ),
        (
            "k = 0",
            lambda: client.get(f"/v1/recommendations/{user}", params={"k": 0}),
            422,
            ["query", "k"],
        ),
        (
            "k = 10**30",
            lambda: client.get(f"/v1/recommendations/{user}", params={"k": 10**30}),
            422,
            ["query", "k"],
        ),
        (
            "batch k above max_k",
            lambda: client.post("/v1/recommendations", json={"user_ids": [user], "k": 10**6}),
            422,
            ["body", "k"],
        ),
        (
            "batch over max_batch_users",
            lambda: client.post(
                "/v1/recommendations", json={"user_ids": [user] * (settings.max_batch_users + 1)}
            ),
            422,
            ["body", "user_ids"],
        ),
        (
            "empty batch",
            lambda: client.post("/v1/recommendations", json={"user_ids": []}),
            422,
            ["body", "user_ids"],
        ),
        (
            "body over max_body_bytes",
            lambda: client.post(
                "/v1/recommendations",
                content=b"[" + b"1," * 600_000 + b"1]",
                headers={"Content-Type": "application/json"},
            ),
            413,
            ["body: request body exceeds max_body_bytes=1048576 bytes"],
        ),
        (
            "chunked body over max_body_bytes",
            lambda: client.post(
                "/v1/jobs",
                headers={**h, "Content-Type": "application/json"},
                content=(b" " * 65536 for _ in range(40)),
            ),
            413,
            ["body: request body exceeds max_body_bytes=1048576 bytes"],
        ),
        (
            "list limit",
            lambda: client.get("/v1/jobs", params={"limit": 501}),
            422,
            ["query", "limit"],
        ),
        (
            "list offset",
            lambda: client.get("/v1/models", params={"offset": 10**12}),
            422,
            ["query", "offset"],
        ),
        (
            "id too long",
            lambda: client.get("/v1/datasets/" + "d" * 129),
            422,
            ["path", "dataset_id"],
        ),
        ("id with separators", lambda: client.get("/v1/jobs/a..b;c"), 422, ["path", "job_id"]),
        (
            "dim above 4096",
            lambda: client.post("/v1/jobs", headers=h, json={**teacher, "dim": 4097}),
            422,
            ["body", "teacher", "dim"],
        ),
        (
            "epochs above 10000",
            lambda: client.post("/v1/jobs", headers=h, json={**teacher, "epochs": 10_001}),
            422,
            ["body", "teacher", "epochs"],
        ),
        (
            "teacher dim x users over the memory budget",
            lambda: client.post("/v1/jobs", headers=h, json={**teacher, "dim": 4096}),
            422,
            ["body", "dim"],
        ),
        (
            "student dim x users over the memory budget",
            lambda: client.post("/v1/jobs", headers=h, json={**distill, "dim": 4096}),
            422,
            ["body", "dim"],
        ),
        (
            "synthetic users x items",
            lambda: client.post(
                "/v1/datasets",
                headers=h,
                json={"synthetic": {"n_users": 1_000_000, "n_items": 1_000_000}},
            ),
            422,
            ["body", "synthetic"],
        ),
    ]
    for name, call, status, loc in cases:
        r = call()
        assert r.status_code == status, (name, r.status_code, r.text[:300])  # type: ignore[attr-defined]
        assert _loc(r)[: len(loc)] == loc, (name, r.json())  # type: ignore[attr-defined]
    budget = client.post("/v1/jobs", headers=h, json={**teacher, "dim": 4096}).json()["detail"][0][
        "msg"
    ]
    assert "max_job_memory_mb=16 MiB" in budget
    # Any token is a valid HTTP method: made-up ones must not grow the metrics label set.
    for i in range(30):
        assert client.request(f"X{i}SCAN", f"/scan/{i}").status_code in (404, 405)
    metrics = client.get("/metrics").text
    assert (
        "X0SCAN" not in metrics
        and 'method="OTHER",route="<unmatched>",status="404"} 30.0' in metrics
    )
    page = client.get("/v1/models", params={"limit": 1, "offset": 1}).json()
    assert len(page["items"]) == 1 and page["total"] == 2 and page["offset"] == 1
    observe(
        "resource_bounds",
        attack="oversized k, batches, bodies, pages, ids, hyper-parameters, dim x users",
        cases=len(cases),
        refused_with_field=len(cases),
        server_errors=0,
    )
