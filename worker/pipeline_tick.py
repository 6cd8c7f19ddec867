"""The pipelines' tick: `unkd scheduler` (celery beat) sends it every pipeline_tick_s.

Beat holds one static entry, this task; what is due is decided here from Redis, so any
number of schedulers and workers agree:

1. Runs whose worker died are failed, once: a queued or running run that no longer holds its
   pipeline's lock (its heartbeat stopped renewing it) ends `failed` with the reason, in a
   WATCH/MULTI transaction (a run that ends by itself at the same moment wins or loses
   cleanly), and its unfinished step jobs fail with it.
2. For each pipeline with no run holding its lock: a schedule (cron or every_s) whose newest
   slot is after the last one fired starts a run (trigger "schedule"), the slot claimed by
   SET NX so that two ticks of two schedulers start one run; without a schedule,
   min_new_events pending positive events start one (trigger "events"), at most one per
   tick period, and not within 5 periods of a failed run (which would fail again at once).
3. The run is recorded holding the lock (SET NX: one run at a time) and its task is sent.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from celery import Celery

from service.core.config import Settings
from service.core.pipelines import Pipeline, PipelineRun, Trigger, due_slot
from service.core.pipelines_store import PipelineStore
from service.core.queue import send_pipeline_run, settings_of
from service.core.records import TERMINAL, ConflictError, NotFoundError
from service.core.registry import Registry
from service.core.versions import pending_events
from worker.jobs import registry_for

logger = logging.getLogger(__name__)

FAILED_COOLDOWN_TICKS = 5


def reap_lost_runs(store: PipelineStore, registry: Registry, settings: Settings) -> list[str]:
    """Fail every queued or running run that lost its pipeline's lock (of any pipeline,
    one deleted meanwhile too); returns their ids."""
    reaped: list[str] = []
    for run in store.open_runs():
        if store.lock_holder(run.pipeline) == run.run_id:
            continue
        reason = (
            f"worker lost (no heartbeat for {3 * settings.job_heartbeat_s:.1f}s)"
            if run.status == "running"
            else "its task never started before the pipeline's lock expired"
        )
        ended = store.end_run(run.run_id, "failed", reason)
        if ended.reason != reason:  # it ended by itself meanwhile
            continue
        fail_steps(registry, ended, reason)
        logger.warning("pipeline run %s of %s: %s; failed", run.run_id, run.pipeline, reason)
        reaped.append(run.run_id)
    return reaped


def fail_steps(registry: Registry, run: PipelineRun, reason: str) -> None:
    """The run's step jobs that were left queued or running end failed with it."""
    for job_id in (run.teacher_job, run.distill_job, run.publish_job):
        if job_id is None:
            continue
        try:
            job = registry.get_job(job_id)
        except NotFoundError:  # the run died between naming the job and recording it
            continue
        if job.status not in TERMINAL:
            registry.finish_job(job_id, "failed", error=f"pipeline run {run.run_id}: {reason}")
            if job.kind == "publish" and job.params.get("model_id"):
                registry.release_publish(str(job.params["model_id"]), job_id)


def _failed_recently(store: PipelineStore, name: str, window_s: float, now: float) -> bool:
    runs, _ = store.list_runs(name, limit=1)
    return bool(
        runs
        and runs[0].status == "failed"
        and runs[0].finished_at is not None
        and now - runs[0].finished_at.timestamp() < window_s
    )


def due(
    store: PipelineStore, registry: Registry, pipeline: Pipeline, settings: Settings, now: float
) -> Trigger | None:
    """Whether `pipeline` starts a run now, and why; claims its slot when it does."""
    name = pipeline.name
    if store.lock_holder(name) is not None:  # one run at a time: the slot waits for it
        return None
    if pipeline.scheduled:
        fired = store.fired(name) or pipeline.updated_at.timestamp()
        slot = due_slot(pipeline, fired, now)
        period = pipeline.every_s or 60
        if slot is None or not store.claim_slot(name, slot, ttl_s=max(60, 2 * period)):
            return None
        return "schedule"
    if pipeline.min_new_events < 1:
        return None
    if _failed_recently(store, name, FAILED_COOLDOWN_TICKS * settings.pipeline_tick_s, now):
        return None
    if pending_events(registry, registry.redis, pipeline.dataset_id, settings=settings) < (
        pipeline.min_new_events
    ):
        return None
    slot = int(math.floor(now / settings.pipeline_tick_s) * settings.pipeline_tick_s)
    ttl_s = max(60, int(2 * settings.pipeline_tick_s))
    return "events" if store.claim_slot(name, slot, ttl_s=ttl_s) else None


def start_run(
    app: Celery, store: PipelineStore, name: str, trigger: Trigger, settings: Settings
) -> PipelineRun | None:
    try:
        run = store.create_run(name, trigger, queued_ttl_s=settings.job_soft_time_limit_s + 600)
    except ConflictError:
        return None
    try:
        send_pipeline_run(app, run.run_id, settings)
    except Exception as exc:
        store.end_run(run.run_id, "failed", f"could not enqueue its task: {exc}")
        raise
    logger.info("pipeline %s: run %s queued (%s)", name, run.run_id, trigger)
    return run


def tick(app: Celery, now: float | None = None) -> dict[str, Any]:
    """Reap, then start what is due; returns the ids of both."""
    settings = settings_of(app)
    registry = registry_for(settings)
    store = PipelineStore(registry.redis)
    reaped = reap_lost_runs(store, registry, settings)
    started: list[str] = []
    when = time.time() if now is None else now
    for name in store.names():
        try:
            pipeline = store.get(name)
            trigger = due(store, registry, pipeline, settings, when)
        except NotFoundError:  # deleted meanwhile
            continue
        except Exception:  # one broken pipeline does not stop the others
            logger.exception("pipeline %s: tick failed", name)
            continue
        if trigger is not None:
            run = start_run(app, store, name, trigger, settings)
            if run is not None:
                started.append(run.run_id)
    return {"reaped": reaped, "started": started}
