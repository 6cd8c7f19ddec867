"""What every child process of the tests shares: its environment, how it stops, its log."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from service.core.config import Settings, settings_env

ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_CHARS = 3000


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker or API child: ours, every setting as UNKD_*, one thread,
    then `extra` (e.g. the AWS_* variables of tests/support/s3.py).

    One BLAS/OpenMP thread per child: the tests share two CPU cores with their children.
    """
    return {
        **os.environ,
        **settings_env(settings),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL. Nothing to do if it has exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no shutdown handler runs. Nothing to do if it has exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def log_tail(path: Path, n: int = LOG_TAIL_CHARS) -> str:
    """The last `n` characters of a log file; empty if there is none yet."""
    return path.read_text(errors="replace")[-n:] if path.is_file() else ""
