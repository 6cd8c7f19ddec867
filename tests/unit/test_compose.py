"""docker-compose.yml and the Dockerfiles agree with the Settings, the CLI and the app."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.core.config import Settings

REPO = Path(__file__).resolve().parents[2]
DEFAULT = re.compile(r"^\$\{(?P<name>\w+)(:-(?P<default>.*))?\}$")
AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def env_of(compose: dict[str, Any], service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def test_services_and_profiles(compose) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "minio", "minio-init", "api", "worker", "scheduler", "flower"}
    assert services["flower"]["profiles"] == ["monitoring"]
    assert "profiles" not in services["scheduler"], "the pipelines' schedules need it"
    assert services["scheduler"]["command"] == ["unkd", "scheduler"]
    for name in ("redis", "minio", "api", "worker"):
        assert "profiles" not in services[name], f"{name} must start by default"
        assert "healthcheck" in services[name], f"{name} needs a health check"


def test_redis_persists_and_others_wait_for_it(compose) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    for name in ("api", "worker", "scheduler", "flower"):
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["api", "worker", "scheduler"])
def test_unkd_variables_are_settings_fields_with_valid_defaults(compose, service: str) -> None:
    env = env_of(compose, service)
    fields = Settings.model_fields
    values: dict[str, str] = {}
    for key, raw in env.items():
        if key in AWS_VARIABLES:  # read by botocore (the S3 artifact store), not by Settings
            continue
        assert key.startswith("UNKD_"), f"{service}: {key} is not a UNKD_ setting"
        field = key.removeprefix("UNKD_").lower()
        assert field in fields, f"{service}: {key} matches no field of service.core.config.Settings"
        m = DEFAULT.match(raw)
        if m is not None:
            assert m.group("name") == key, (
                f"{service}: {key} takes its value from {m.group('name')}"
            )
            raw = m.group("default") or ""
        values[field] = raw
    for required in ("redis_url", "data_dir"):
        assert required in values, f"{service}: UNKD_{required.upper()} missing"
    settings = Settings.model_validate(values)  # the defaults pass the validators
    assert settings.redis_url == "redis://redis:6379/0"
    assert "api_keys" in values or service in ("worker", "scheduler")


def test_api_and_worker_share_only_redis_and_the_store(compose) -> None:
    """As on separate hosts: each data dir is a volume of its own, artifacts go through S3."""
    mounts = {}
    for name in ("api", "worker"):
        svc = compose["services"][name]
        env = env_of(compose, name)
        (volume,) = [
            v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == env["UNKD_DATA_DIR"]
        ]
        mounts[name] = volume
        assert default_of(env["UNKD_ARTIFACT_URL"], "UNKD_ARTIFACT_URL").startswith("s3://")
    assert mounts["api"] != mounts["worker"] and set(mounts.values()) <= set(compose["volumes"])


def default_of(raw: str, name: str) -> str:
    """The value `${NAME:-default}` gives when NAME is unset; the variable must be NAME itself."""
    m = DEFAULT.match(raw)
    assert m is not None and m.group("name") == name and m.group("default"), f"{name}: {raw!r}"
    return m.group("default")


def test_bundles_go_through_minio(compose) -> None:
    """API and worker store serving bundles in MinIO's bucket, reached through the AWS
    variables with MinIO's own credentials, once the bucket exists."""
    services = compose["services"]
    minio, init = services["minio"], services["minio-init"]
    port = re.search(
        r":(\d+)$", default_of(env_of(compose, "api")["AWS_ENDPOINT_URL"], "AWS_ENDPOINT_URL")
    )
    assert (
        minio["command"][:2] == ["server", "/data"] and port is not None and port.group(1) == "9000"
    )
    assert any(v.endswith(":/data") for v in minio["volumes"])
    root = {
        k: default_of(
            str(v),
            {
                "MINIO_ROOT_USER": "AWS_ACCESS_KEY_ID",
                "MINIO_ROOT_PASSWORD": "AWS_SECRET_ACCESS_KEY",
            }[k],
        )
        for k, v in minio["environment"].items()
    }
    assert len(root["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter ones
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        env = env_of(compose, name)
        url = Settings(
            artifact_url=default_of(env["UNKD_ARTIFACT_URL"], "UNKD_ARTIFACT_URL")
        ).artifact_url
        bucket = url.removeprefix("s3://").split("/")[0]
        assert (
            url.startswith("s3://") and f"store/{bucket}" in init["command"][0]
        )  # minio-init makes it
        assert default_of(env["AWS_ENDPOINT_URL"], "AWS_ENDPOINT_URL") == "http://minio:9000"
        assert default_of(env["AWS_ACCESS_KEY_ID"], "AWS_ACCESS_KEY_ID") == root["MINIO_ROOT_USER"]
        assert (
            default_of(env["AWS_SECRET_ACCESS_KEY"], "AWS_SECRET_ACCESS_KEY")
            == root["MINIO_ROOT_PASSWORD"]
        )
        assert (
            services[name]["depends_on"]["minio-init"]["condition"]
            == "service_completed_successfully"
        )


def test_worker_reserves_a_gpu(compose) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_api_port_healthcheck_and_routes(compose) -> None:
    api = compose["services"]["api"]
    command = api["command"]
    port = command[command.index("--port") + 1]
    assert f"{port}:{port}" in api["ports"] and port == "8000"
    assert command[command.index("--host") + 1] == "0.0.0.0"  # reachable from outside the container
    probe = " ".join(api["healthcheck"]["test"])
    path = re.search(rf"127\.0\.0\.1:{port}(/\w+)", probe)
    assert path is not None, "the API health check must call the API on its port"
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    app = create_app(Settings(redis_url="redis://unused:6379/0"))
    # no `with`: the lifespan (Redis, Celery) does not run; liveness must not need them
    assert TestClient(app).get(path.group(1)).status_code == 200


def test_commands_are_cli_subcommands(compose) -> None:
    parser = build_parser()
    for name in ("api", "worker"):
        command = compose["services"][name]["command"]
        assert command[0] == "unkd"
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown option
        assert args.command == name


@pytest.mark.parametrize("image", ["api", "worker"])
def test_dockerfiles_match_compose(compose, image: str) -> None:
    text = (REPO / "docker" / f"{image}.Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1)) == compose["services"][image]["command"]
    assert compose["services"][image]["build"]["dockerfile"] == f"docker/{image}.Dockerfile"
    assert "--uid 10001" in text  # same owner for the shared volume
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as in both images
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = " ".join(pyproject["project"]["dependencies"])
    assert "torch" in deps and "faiss-cpu" in deps  # what the images filter out
    if image == "api":
        assert "startswith('torch')" in text and "EXPOSE 8000" in text
    else:
        assert "startswith(('torch', 'faiss-cpu'))" in text
        assert "['optional-dependencies']['gpu']" in text
        assert any("faiss-gpu" in d for d in pyproject["project"]["optional-dependencies"]["gpu"])


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    ignored = {ln for ln in lines if ln and not ln.startswith("#")}
    assert {".git", ".venv", "data"} <= ignored
    for copied in ("training", "worker", "service", "pyproject.toml", "README.md"):
        assert copied not in ignored
    assert not any(ln.startswith("!") for ln in ignored)


def test_compose_is_secure_by_default(compose) -> None:
    """The API listens on 0.0.0.0 in its container, so compose must give it keys (an admin
    among them: the defaults must work for local use) and Flower a password."""
    raw = env_of(compose, "api")["UNKD_API_KEYS"]
    m = DEFAULT.match(raw)
    assert m is not None and m.group("default"), "UNKD_API_KEYS needs a documented default"
    settings = Settings.model_validate({"api_keys": m.group("default")})
    assert any(k.role == "admin" for k in settings.keys)
    assert settings.exposure_error("0.0.0.0") is None  # `unkd api --host 0.0.0.0` starts
    assert Settings().exposure_error("0.0.0.0") is not None  # ... and would not without keys
    flower = compose["services"]["flower"]["command"]
    (auth,) = [a for a in flower if a.startswith("--basic-auth=")]
    m = DEFAULT.match(auth.removeprefix("--basic-auth="))
    assert (
        m is not None
        and m.group("name") == "FLOWER_BASIC_AUTH"
        and ":" in (m.group("default") or "")
    )
