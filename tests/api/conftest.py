"""API test fixtures: a database of the session's real Redis (tests/support) and a data
directory per test, and the app built by create_app.

No worker consumes the queues here: a test that submits a job only checks submission.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.config import Settings
from tests.support.config import make_test_settings

API_KEY = "test-key-0123456789"


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of this test's own (emptied) database."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture()
def make_settings(redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test: its own Redis database, data dir and queue names nobody consumes."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "data_dir": tmp_path / "data",
            "upload_max_bytes": 64 * 1024,
            "reload_poll_s": 0.2,
        }
        return make_test_settings("test", **{**values, **overrides})

    return make


@pytest.fixture()
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture()
def auth_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(api_keys=[API_KEY]))) as c:
        yield c
