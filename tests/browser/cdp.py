"""A small Chrome DevTools Protocol client for the browser tests: headless Chromium (the
Debian package), one page, JSON messages over its websocket (websocket-client).

Nothing is downloaded: the browser is the system's ``chromium``. The client collects
console errors, uncaught exceptions and browser log errors (failed loads, CSP
violations) so a test can assert that a page produced none.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websocket

logger = logging.getLogger(__name__)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """UNKD_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("UNKD_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    pass


class Browser:
    """A headless Chromium process and a CDP session with its first page."""

    def __init__(
        self, binary: str, *, width: int = 1280, height: int = 900, timeout_s: float = 30.0
    ) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="unkd-chromium-"))
        self.timeout_s = timeout_s
        args = [
            binary,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: chromium's chatter can't block it
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        try:
            self.ws = websocket.create_connection(
                self._page_ws_url(), timeout=timeout_s, suppress_origin=True
            )
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
        except Exception:
            self.close()
            raise

    def _page_ws_url(self) -> str:
        """Wait for DevToolsActivePort, then the page target's websocket address."""
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")
                raise CDPError(f"chromium exited with {self.proc.returncode}: {err[-2000:]}")
            if port_file.is_file() and port_file.read_text().strip():
                port = int(port_file.read_text().splitlines()[0])
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise CDPError(f"chromium gave no DevTools page within {self.timeout_s}s")

    # -- protocol ------------------------------------------------------------------------
    def send(self, method: str, timeout_s: float | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            msg = self._receive(deadline, method)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return dict(msg.get("result") or {})

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer to {waiting_for}")
        self.ws.settimeout(left)
        msg: dict[str, Any] = json.loads(self.ws.recv())
        if "method" in msg:
            self.events.append(msg)
        return msg

    def wait_event(self, method: str, since: int, timeout_s: float | None = None) -> dict[str, Any]:
        """The first `method` event at or after index `since` of self.events."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            for event in self.events[since:]:
                if event["method"] == method:
                    return event
            since = len(self.events)
            try:
                self._receive(deadline, method)
            except websocket.WebSocketTimeoutException as exc:
                raise TimeoutError(f"no {method} event") from exc

    # -- page helpers ----------------------------------------------------------------------
    def navigate(self, url: str) -> None:
        """Load `url` and wait for its load event."""
        mark = len(self.events)
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"navigate {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired", mark)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CDPError(
                f"{expression[:80]}: {result['exceptionDetails'].get('text')} "
                f"{result['exceptionDetails'].get('exception', {}).get('description', '')}"
            )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 10.0, interval_s: float = 0.1) -> Any:
        """Evaluate until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still falsy after {timeout_s}s: {expression}")
            time.sleep(interval_s)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(
                    "console: "
                    + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
                )
            elif e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(
                    f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}"
                )
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(
                    f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
                )
        return out

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        """A PNG of the page (the whole scrollable page by default)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
