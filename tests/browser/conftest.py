"""Browser-test fixtures: headless Chromium over CDP, and the API served by uvicorn in its
own process (tests/support's live_api) against a database of the session's real Redis.

Every test here is marked `browser` (pytestmark) and skips, saying why, where no Chromium is installed
(CI installs Debian's package in .ci/run). Screenshots go to <repo>/test-artifacts/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.core.config import Settings
from tests.support.config import make_test_settings
from tests.support.live_api import LiveAPI

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
API_KEY = "browser-key-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from tests.browser.cdp import find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no Chromium: install Debian's package (apt-get install -y chromium) or set UNKD_CHROMIUM"
        )
    pytest.importorskip("websocket", reason="websocket-client is missing: pip install -e '.[dev]'")
    from tests.browser.cdp import Browser

    b = Browser(binary, width=1280, height=900)
    yield b
    b.close()


@pytest.fixture()
def live_settings(redis_url: str, tmp_path: Path) -> Settings:
    """The API's settings: its own Redis database and data dir, an API key, fast reloads."""
    return make_test_settings(
        "browser",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        api_keys=[API_KEY],
        upload_max_bytes=64 * 1024,
        reload_poll_s=0.2,
    )


@pytest.fixture()
def live_server(live_settings: Settings, live_api: Callable[..., LiveAPI]) -> LiveAPI:
    return live_api(live_settings)
