"""Named API keys with roles (read < write < admin), from UNKD_API_KEYS or a keys file.

Each role is refused (403 naming the role needed) where it does not belong and let
through where it does; reads stay open; the plain pre-role key form is an admin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from service.core.registry import Registry

ADMIN, WRITER, READER = "alice-admin-key-01", "bob-write-key-0001", "carol-read-key-001"
KEYS = [f"alice:admin:{ADMIN}", f"bob:write:{WRITER}", f"carol:read:{READER}"]
TEACHER = {"kind": "teacher", "model": "mf", "dataset_id": "ds-none"}
DISTILL_PUBLISH = {"kind": "distill", "teacher_id": "teacher-none", "publish": True}

# (method, path, body): what each role may do; past auth, the unknown ids answer 404 or 409.
WRITE_ROUTES = [
    ("POST", "/v1/jobs", TEACHER),
    ("DELETE", "/v1/jobs/j-none", None),
    ("POST", "/v1/datasets", {"synthetic": {"n_users": 1}}),
]
ADMIN_ROUTES = [
    ("POST", "/v1/models/m-none/publish", None),
    ("POST", "/v1/serving/rollback", None),
    ("POST", "/v1/jobs", DISTILL_PUBLISH),
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def roles_client(make_settings: Callable[..., Settings]) -> TestClient:
    with TestClient(create_app(make_settings(api_keys=KEYS))) as client:
        yield client  # type: ignore[misc]


def test_each_role_is_refused_where_it_does_not_belong(
    roles_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for method, path, body in WRITE_ROUTES + ADMIN_ROUTES:
        r = roles_client.request(method, path, json=body, headers=bearer(READER))
        needed = (
            "admin" if (method, path, body) in ADMIN_ROUTES[:2] else "write"
        )  # write comes first
        assert r.status_code == 403, (path, r.text)
        assert f"needs a key with role {needed}; key 'carol' has role read" in r.json()["detail"], (
            r.text
        )
    for method, path, body in ADMIN_ROUTES:
        r = roles_client.request(method, path, json=body, headers=bearer(WRITER))
        assert (
            r.status_code == 403 and "role admin; key 'bob' has role write" in r.json()["detail"]
        ), r.text
    r = roles_client.post("/v1/jobs", json=DISTILL_PUBLISH, headers=bearer(WRITER))
    assert r.json()["detail"].startswith(
        'Authorization: a distill job with "publish": true needs a key with role admin'
    )
    for method, path, body in WRITE_ROUTES:  # write may: past auth, the unknown id is next
        r = roles_client.request(method, path, json=body, headers=bearer(WRITER))
        assert r.status_code in (404, 422), (path, r.text)
    for method, path, body in WRITE_ROUTES + ADMIN_ROUTES:  # admin may do everything
        r = roles_client.request(method, path, json=body, headers=bearer(ADMIN))
        assert r.status_code in (404, 409, 422), (path, r.text)
        assert "Authorization" not in str(r.json()["detail"])
    # A write key may still submit a distill job that does not publish.
    r = roles_client.post(
        "/v1/jobs", json={**DISTILL_PUBLISH, "publish": False}, headers=bearer(WRITER)
    )
    assert r.status_code == 404 and "teacher_id" in r.json()["detail"]
    r = roles_client.post(
        "/v1/jobs", json={**DISTILL_PUBLISH, "publish": False, "force": True}, headers=bearer(ADMIN)
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "distill", "force"]
    assert "only with publish: true" in r.json()["detail"][0]["msg"]
    # Reads stay open, with or without a key of any role.
    for headers in ({}, bearer(READER), bearer("not-a-key-at-all")):
        assert roles_client.get("/v1/models", headers=headers).status_code == 200
        assert roles_client.get("/v1/serving/history", headers=headers).status_code == 200
    metrics = roles_client.get("/metrics").text
    assert 'unkd_auth_failures_total{reason="role"} 10.0' in metrics
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "refused to key carol (role read, needs admin)" in logged
    for secret in (ADMIN, WRITER, READER):
        assert secret not in logged and secret not in metrics


def test_missing_and_wrong_keys_on_the_new_admin_routes(roles_client: TestClient) -> None:
    for path in ("/v1/serving/rollback", "/v1/models/m-none/publish"):
        r = roles_client.post(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = roles_client.post(path, headers=bearer("guess-guess-guess"))
        assert r.status_code == 403 and r.json() == {
            "detail": "Authorization: API key not accepted"
        }


def test_plain_keys_are_admins_named_by_position(
    make_settings: Callable[..., Settings], settings: Settings
) -> None:
    plain = "plain-old-key-0001"
    registry = Registry.from_url(settings.redis_url or "")
    with TestClient(create_app(make_settings(api_keys=["another-plain-01", plain]))) as client:
        r = client.post("/v1/serving/rollback", headers=bearer(plain))
        assert r.status_code == 409  # an admin: past auth, nothing to roll back to
        r = client.post("/v1/jobs", json=DISTILL_PUBLISH, headers=bearer(plain))
        assert r.status_code == 404
    assert registry.list_jobs()[1] == 0


def test_keys_from_a_file(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# ops team\n\nops:admin:{ADMIN}\n  ci:write:{WRITER}  \n")
    with TestClient(create_app(make_settings(api_keys_file=keys))) as client:
        r = client.post("/v1/serving/rollback", headers=bearer(WRITER))
        assert r.status_code == 403 and "key 'ci' has role write" in r.json()["detail"]
        assert client.post("/v1/serving/rollback", headers=bearer(ADMIN)).status_code == 409
        assert client.post("/v1/serving/rollback").status_code == 401
