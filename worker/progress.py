"""Training callbacks of a job: progress into the job record, cancellation out of it.

`training/` never learns that Celery or Redis exist: it calls `on_progress(event)` and
`should_stop()`. These two callables connect those calls to the registry (and to the
Celery result backend, so Flower shows a PROGRESS state too).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from service.core.registry import JobProgress, Registry
from training.progress import ProgressEvent

logger = logging.getLogger(__name__)


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric, finite entries only (a NaN would not survive JSON)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class JobReporter:
    """on_progress for a job: writes progress and latest metrics at most once per epoch.

    Events of the same (stage, epoch) after the first are dropped unless they bring
    metrics the written one lacked, so a trainer that reports loss and then validation
    metrics for one epoch costs two writes at most, and a chatty one costs no more.

    Args:
        registry: where the job record lives.
        job_id: the job being run.
        task: the running Celery task, for update_state(PROGRESS); None outside Celery.
    """

    def __init__(self, registry: Registry, job_id: str, task: Any = None) -> None:
        self.registry = registry
        self.job_id = job_id
        self.task = task
        self._last: tuple[str, int] | None = None
        self._last_had_metrics = False
        self.events = 0
        self.writes = 0

    def __call__(self, event: ProgressEvent) -> None:
        self.events += 1
        key = (event.stage, event.epoch)
        has_metrics = bool(event.metrics)
        if key == self._last and (self._last_had_metrics or not has_metrics):
            return
        self._last_had_metrics = has_metrics or (key == self._last and self._last_had_metrics)
        self._last = key
        metrics = _finite(event.metrics)
        if event.loss is not None:
            metrics.update(_finite({"loss": event.loss}))
        progress = JobProgress(
            stage=event.stage, epoch=event.epoch, epochs=event.epochs, message=event.message
        )
        self.registry.update_progress(self.job_id, progress, metrics)
        self.writes += 1
        if self.task is not None and getattr(self.task.request, "id", None):
            self.task.update_state(
                state="PROGRESS", meta={"job_id": self.job_id, **event.model_dump(mode="json")}
            )
        if event.epochs:  # the trainer logs the epoch itself; this line is for debugging
            logger.debug(
                "job %s %s epoch %d/%d %s",
                self.job_id,
                event.stage,
                event.epoch,
                event.epochs,
                {k: round(v, 4) for k, v in metrics.items()},
            )
        else:
            logger.info("job %s stage %s %s", self.job_id, event.stage, event.message)


def worker_stopping() -> bool:
    """True once this Celery worker received a warm or cold shutdown signal."""
    from celery.worker import state  # set by the worker's signal handlers

    # Identity checks: a warm shutdown sets should_stop to EX_OK, which is 0 (== False).
    return any(
        flag is not None and flag is not False
        for flag in (state.should_stop, state.should_terminate)
    )


class StopCheck:
    """should_stop for a job: True once a cancel was requested, the time limit passed, or
    the worker is shutting down (the job then goes back to the queue).

    Reads the job record (one GET) at each epoch boundary. The time limit is enforced
    here because Celery's soft time limit is not available with --pool=solo.
    """

    def __init__(
        self,
        registry: Registry,
        job_id: str,
        time_limit_s: float,
        lease_lost: Callable[[], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.job_id = job_id
        self.deadline = time.monotonic() + time_limit_s
        self.time_limit_s = time_limit_s
        self.lease_lost = lease_lost or (lambda: False)
        self.cancelled = False
        self.timed_out = False
        self.shutdown = False
        self.lost = False

    def __call__(self) -> bool:
        if self.lease_lost():  # a reaper may have requeued the job: another run owns it now
            self.lost = True
            logger.error("job %s: heartbeat lease lost, stopping without saving", self.job_id)
        elif self.registry.cancel_requested(self.job_id):
            self.cancelled = True
            logger.info("job %s: cancel requested, stopping at this epoch boundary", self.job_id)
        elif time.monotonic() > self.deadline:
            self.timed_out = True
            logger.warning(
                "job %s: over its time limit of %.0fs, stopping", self.job_id, self.time_limit_s
            )
        elif worker_stopping():
            self.shutdown = True
            logger.warning("job %s: worker shutting down, handing the job back", self.job_id)
        return self.lost or self.cancelled or self.timed_out or self.shutdown
