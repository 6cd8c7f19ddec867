"""Browser-test fixtures: headless Chromium over CDP, and the API served by uvicorn in a
thread against the real Redis of tests/api (its fixtures are imported here).

Every test here is marked `browser` (pytestmark) and skips, saying why, where no Chromium is installed
(CI installs Debian's package in .ci/run). Screenshots go to <repo>/test-artifacts/.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.app import create_app
from service.core.config import Settings
from service.stack.redis_server import free_port
from tests.api.conftest import make_settings, redis_client, redis_server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
API_KEY = "browser-key-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from tests.browser.cdp import find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium: install Debian's package (apt-get install -y chromium) or set UNKD_CHROMIUM")
    pytest.importorskip("websocket", reason="websocket-client is missing: pip install -e '.[dev]'")
    from tests.browser.cdp import Browser

    b = Browser(binary, width=1280, height=900)
    yield b
    b.close()


class LiveServer:
    """create_app(settings) under uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-browser-test", daemon=True)

    def start(self, timeout_s: float = 20.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture()
def live_settings(make_settings) -> Settings:  # noqa: F811 (the imported fixture)
    return make_settings(api_keys=[API_KEY])


@pytest.fixture()
def live_server(live_settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(live_settings).start()
    yield server
    server.stop()
