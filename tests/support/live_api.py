"""The API as `unkd up` runs it: uvicorn's factory mode in a child process, on loopback."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from service.core.config import Settings
from service.stack.local import api_argv
from service.stack.redis_server import free_port
from tests.support.processes import ROOT, child_env, kill_process, log_tail, stop_process

API_START_TIMEOUT_S = 60.0  # imports included, on two shared cores
API_STOP_TIMEOUT_S = 15.0
GRACEFUL_SHUTDOWN_S = 5  # uvicorn: open connections get this long once it is told to stop


class LiveAPI:
    """create_app under uvicorn in a child process on 127.0.0.1, configured by settings_env(settings).

    Args:
        settings: the API's settings.
        log: file the process' stdout and stderr are appended to (the app logs there).
        port: TCP port; None picks a free one (and another if it was taken meanwhile).
        workers: API processes on the port under uvicorn's supervisor (`unkd api --workers`).
        env: variables added to the child's environment (AWS_* for an S3 artifact store).
    """

    def __init__(
        self,
        settings: Settings,
        log: Path,
        *,
        port: int | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings, self.log, self.env = settings, log, dict(env or {})
        self.workers = workers  # > 1: that many API processes on the port (unkd api --workers)
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the API was never started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> LiveAPI:
        """Start the process and return at once (a test may watch it come up)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                api_argv(
                    "127.0.0.1", self.port, graceful_s=GRACEFUL_SHUTDOWN_S, workers=self.workers
                ),
                cwd=ROOT,
                env=child_env(self.settings, self.env),
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, path: str = "/healthz", timeout_s: float = API_START_TIMEOUT_S) -> LiveAPI:
        """Poll GET `path` until it answers 200; RuntimeError with the log if the process
        exits or the time runs out.

        /healthz answers once the app's lifespan has started (the active model loaded, when
        Redis has one); /readyz waits for Redis and a loaded model as well.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    code = self.proc.returncode if self.proc is not None else None
                    raise RuntimeError(
                        f"the API exited with code {code} before {path} answered 200:\n{self.tail()}"
                    )
                try:
                    r = client.get(path)
                    if r.status_code == 200:
                        return self
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.05)
        raise RuntimeError(
            f"the API did not answer 200 on {path} in {timeout_s:.0f}s (last: {last}):\n{self.tail()}"
        )

    def start(self, ready: str = "/healthz", timeout_s: float = API_START_TIMEOUT_S) -> LiveAPI:
        """spawn() and wait_ready(ready); on a port taken meanwhile, again on another."""
        tries = 0
        while True:
            tries += 1
            offset = self.log.stat().st_size if self.log.is_file() else 0
            self.spawn()
            try:
                return self.wait_ready(ready, timeout_s)
            except RuntimeError:
                port_taken = (
                    not self.alive() and b"address already in use" in self.log.read_bytes()[offset:]
                )
                self.stop()
                if self._fixed_port or not port_taken or tries == 3:
                    raise
            self.port = free_port()

    def stop(self, timeout_s: float = API_STOP_TIMEOUT_S) -> None:
        """SIGTERM (uvicorn's graceful shutdown runs the lifespan's exit), SIGKILL after
        `timeout_s`. Safe to call twice."""
        if self.proc is not None:
            stop_process(self.proc, timeout_s)

    def kill(self) -> None:
        """SIGKILL: no shutdown, as in a crash."""
        if self.proc is not None:
            kill_process(self.proc)

    def tail(self, n: int = 3000) -> str:
        return log_tail(self.log, n)
