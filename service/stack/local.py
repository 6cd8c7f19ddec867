"""The local stack behind `unkd up` and `unkd demo`: Redis (when UNKD_REDIS_URL is unset),
one Celery worker, the scheduler (celery beat: the pipelines' tick) and the API, each its own
process, stopped cleanly together.

Children run in their own session, so a Ctrl-C in the terminal reaches only this process,
which then stops them in order: API first (no new jobs), then the worker (warm shutdown:
a running job stops at its next epoch boundary and goes back to the queue, to run again
with attempts = 2 on the next start; cold shutdown if that takes too long), then Redis
(which saves its append-only file).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from service.core.config import Settings, settings_env
from service.stack.redis_server import RedisServer

logger = logging.getLogger(__name__)

API_START_TIMEOUT_S = 60.0
# A job notices a warm shutdown at its next epoch boundary and goes back to the queue.
WORKER_WARM_STOP_S = 30.0


def _stop_process(
    name: str,
    proc: subprocess.Popen[bytes],
    *,
    soft: signal.Signals,
    timeout_s: float,
    hard: signal.Signals | None = None,
) -> None:
    """Send `soft`, wait; then `hard` (if any), wait; then kill."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((soft, timeout_s), (hard, 5.0)):
        if sig is None:
            continue
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
            logger.info("%s (pid %d) stopped", name, proc.pid)
            return
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) still running after %s", name, proc.pid, sig.name)
    proc.kill()
    proc.wait()


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def training_threads_env(env: dict[str, str], threads: int | None) -> dict[str, str]:
    """`env` with the thread settings of a worker's training jobs.

    threads: torch's, BLAS's and OpenMP's thread count; None: the usable cores, unless `env`
    already names one. OpenMP's wait policy becomes passive unless `env` sets it: torch's
    default (active) has idle threads spin between parallel regions, and when another process
    holds a core the spinning threads take turns with the ones doing the work. An MF epoch
    on ML-100K took 15x longer beside one busy 2-thread process (issue "Debiased by
    default"); bench/neighbour.py measures the sharing with these settings.
    """
    out = dict(env)
    if threads is not None:
        out.update({name: str(threads) for name in THREAD_VARIABLES})
    elif not any(name in env for name in THREAD_VARIABLES):
        out.update({name: str(usable_cores()) for name in THREAD_VARIABLES})
    out.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return out


def celery_worker_argv(
    queues: str,
    *,
    hostname: str,
    loglevel: str = "INFO",
    pool: str = "solo",
    concurrency: int = 1,
    alone: bool = True,
) -> list[str]:
    """The command line of one Celery worker process, the same for `unkd up`, `unkd worker`
    and the tests. The worker reads its settings from the UNKD_* environment.

    Args:
        alone: the only worker of its stack (local stack, tests): skip gossip and the
            startup sync with other workers, which only cost time there.
    """
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "-Q",
        queues,
        f"--loglevel={loglevel}",
        "--hostname",
        hostname,
    ]
    return argv + (["--without-gossip", "--without-mingle"] if alone else [])


def celery_beat_argv(schedule_file: Path, *, loglevel: str = "INFO") -> list[str]:
    """The command line of the scheduler (celery beat with the project's app), the same for
    `unkd up`, `unkd scheduler` and the tests. Its one entry is the pipelines' tick
    (service.core.queue.make_celery); what is due is decided by the tick from Redis, so two
    schedulers start one run per slot. `schedule_file` keeps beat's own last-run times."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "beat",
        f"--loglevel={loglevel}",
        "--schedule",
        str(schedule_file),
    ]


def api_argv(
    host: str,
    port: int,
    *,
    log_level: str = "warning",
    graceful_s: float | None = None,
    workers: int = 1,
) -> list[str]:
    """The command line of the API (uvicorn's factory mode: settings from UNKD_*); `workers`
    > 1 runs that many processes on the port under uvicorn's supervisor."""
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.api.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return argv + (
        ["--timeout-graceful-shutdown", str(graceful_s)] if graceful_s is not None else []
    )


class LocalStack:
    """Redis + worker + API on this machine.

    Args:
        settings: redis_url None starts a Redis under data_dir/redis; queues, device and
            the rest reach the children through UNKD_* variables.
        host, port: where the API listens.
        data_dir: datasets, models, bundles and the local Redis' files.
        log_dir: None lets the children write to this terminal; else api.log/worker.log.
        api_workers: API processes on the port (uvicorn --workers).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        data_dir: Path | None = None,
        log_dir: Path | None = None,
        api_workers: int = 1,
    ) -> None:
        self.settings = settings
        self.host, self.port = host, port
        self.api_workers = api_workers
        self.data_dir = Path(data_dir or settings.data_dir).resolve()
        self.log_dir = log_dir
        self.redis: RedisServer | None = None
        self.redis_url = settings.redis_url
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.scheduler: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def child_env(self) -> dict[str, str]:
        settings = self.settings.model_copy(
            update={"redis_url": self.redis_url, "data_dir": self.data_dir}
        )
        return {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}

    def _output(self, name: str) -> IO[bytes] | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(fh)
        return fh

    @property
    def worker_threads(self) -> int:
        """The local worker's training threads: every usable core but one (API, Redis)."""
        return max(1, usable_cores() - 1)

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = self._output(name)
        proc = subprocess.Popen(
            args,
            env=env or self.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        logger.info("%s started (pid %d)", name, proc.pid)
        return proc

    def start(self) -> LocalStack:
        """Start what is missing and return once the API answers /healthz.

        Raises RuntimeError before starting anything when the API would listen beyond
        loopback without API keys (and UNKD_ALLOW_OPEN is not set).
        """
        exposure = self.settings.exposure_error(self.host)
        if exposure:
            raise RuntimeError(exposure)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.redis_url is None:
                self.redis = RedisServer(self.data_dir / "redis").start()
                self.redis_url = self.redis.url
            queues = f"{self.settings.train_queue},{self.settings.light_queue}"
            # The API and Redis share the host: the worker trains on the other cores.
            self.worker = self._spawn(
                "worker",
                celery_worker_argv(queues, hostname=f"unkd-{os.getpid()}@%h", loglevel="INFO"),
                env=training_threads_env(self.child_env(), self.worker_threads),
            )
            self.scheduler = self._spawn(
                "scheduler", celery_beat_argv(self.data_dir / "celerybeat-schedule")
            )
            self.api = self._spawn("api", api_argv(self.host, self.port, workers=self.api_workers))
            self._wait_api()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_api(self) -> None:
        deadline = time.monotonic() + API_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.api is not None and self.api.poll() is not None:
                raise RuntimeError(
                    f"the API exited with code {self.api.returncode} (port {self.port} in use?)"
                )
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"the API did not answer {self.api_url}/healthz in {API_START_TIMEOUT_S:.0f}s"
        )

    def failed_child(self) -> str | None:
        """The name of a child process that exited on its own, if any."""
        children = (("api", self.api), ("worker", self.worker), ("scheduler", self.scheduler))
        for name, proc in children:
            if proc is not None and proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}"
        return None

    def wait(self) -> str:
        """Block until SIGINT/SIGTERM or a child exits; returns why."""
        stop_reason: list[str] = []

        def on_signal(signum: int, _frame: object) -> None:
            stop_reason.append(signal.Signals(signum).name)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop_reason:
                failed = self.failed_child()
                if failed:
                    return failed
                time.sleep(0.2)
            return stop_reason[0]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """API, scheduler, then worker (warm, then cold shutdown), then Redis. Safe to call
        twice."""
        if self.api is not None:
            _stop_process("api", self.api, soft=signal.SIGTERM, timeout_s=10.0)
            self.api = None
        if self.scheduler is not None:
            _stop_process("scheduler", self.scheduler, soft=signal.SIGTERM, timeout_s=10.0)
            self.scheduler = None
        if self.worker is not None:
            _stop_process(
                "worker",
                self.worker,
                soft=signal.SIGTERM,
                timeout_s=WORKER_WARM_STOP_S,
                hard=signal.SIGQUIT,
            )
            self.worker = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        for fh in self._logs:
            fh.close()
        self._logs.clear()
