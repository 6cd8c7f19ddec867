"""A real Celery worker process, launched as `unkd up` launches it (service.stack.local.celery_worker_argv),
and a real scheduler (celery beat, service.stack.local.celery_beat_argv)."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from service.core.config import Settings
from service.stack.local import celery_beat_argv, celery_worker_argv
from tests.support.processes import ROOT, child_env, kill_process, log_tail, stop_process

WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 20.0  # warm shutdown: a running job stops at its next epoch boundary


class WorkerProcess:
    """`celery -A worker.celery_app worker --pool=solo` on the settings' two queues.

    Configured by settings_env(settings) (as the local stack configures its worker), its
    output appended to `log`; ready once the log says so.

    Args:
        settings: the worker's settings (queues, Redis, data dir, limits).
        log: file the worker's stdout and stderr are appended to.
        name: start of the Celery hostname (`<name>-<6 hex>@host`), unique per start.
        env: variables added to the child's environment (AWS_* for an S3 artifact store).
    """

    def __init__(
        self, settings: Settings, log: Path, name: str = "w", env: dict[str, str] | None = None
    ) -> None:
        self.settings, self.log, self.name, self.env = settings, log, name, dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> WorkerProcess:
        """Spawn the worker and return once it logs ` ready.`; RuntimeError with its log if not."""
        queues = f"{self.settings.train_queue},{self.settings.light_queue}"
        argv = celery_worker_argv(
            queues, hostname=f"{self.name}-{uuid.uuid4().hex[:6]}@%h", loglevel="INFO"
        )
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.is_file() else 0
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=child_env(self.settings, self.env),
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while b" ready." not in self.log.read_bytes()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                kill_process(self.proc)
                raise RuntimeError(f"celery worker {self.name} did not start:\n{self.tail()}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"worker {self.name} was never started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, the job's message stays unacknowledged."""
        if self.proc is None:
            raise RuntimeError(f"worker {self.name} was never started")
        kill_process(self.proc)

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        """Warm shutdown (SIGTERM), SIGKILL after `timeout_s`. Safe to call twice."""
        if self.proc is not None:
            stop_process(self.proc, timeout_s)

    def tail(self, n: int = 3000) -> str:
        return log_tail(self.log, n)


class BeatProcess:
    """`celery -A worker.celery_app beat`: the scheduler `unkd up` starts, sending the
    pipelines' tick every settings.pipeline_tick_s to the settings' light queue.

    Args:
        settings: the scheduler's settings (Redis, queues, tick period).
        log: file its output is appended to; its beat state file is beside it.
    """

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings, self.log = settings, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> BeatProcess:
        """Spawn beat and return once it logs that it started; RuntimeError with its log if not."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        schedule = self.log.with_suffix(".schedule")
        offset = self.log.stat().st_size if self.log.is_file() else 0
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                celery_beat_argv(schedule),
                cwd=ROOT,
                env=child_env(self.settings),
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while b"beat: Starting" not in self.log.read_bytes()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                kill_process(self.proc)
                raise RuntimeError(f"celery beat did not start:\n{log_tail(self.log)}")
            time.sleep(0.1)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s)
