"""The Celery app's client side: task names, queues, job submission, and the app both sides
build.

Light: Celery only (no torch, no FastAPI). The API builds `make_celery(settings)` and
submits jobs with `submit_job` (the record, then a task sent by name); the worker (worker/celery_app.py) builds the same app with its task module
included and runs it:

    celery -A worker.celery_app worker -Q train,light --pool=solo
"""

from __future__ import annotations

import logging
import uuid

from celery import Celery
from kombu.exceptions import OperationalError

from service.core.config import Settings, get_settings
from service.core.records import JobRecord
from service.core.registry import Registry

logger = logging.getLogger(__name__)

TRAIN_TEACHER = "unkd.train_teacher"
DISTILL = "unkd.distill"
PUBLISH = "unkd.publish"
# A tuning job's helpers: run trials of its study on every worker (worker/tuning.py).
TUNE_TRIALS = "unkd.tune_trials"
# A large distillation job's candidate shards, taken by every worker (worker/fanout.py).
CANDIDATE_SHARD = "unkd.candidate_shard"
EVAL_SHARD = "unkd.eval_shard"
# A pipeline's run (worker/pipeline_runs.py), and the scheduler's one periodic task that
# starts the runs that are due (worker/pipeline_tick.py; `unkd scheduler` sends it).
PIPELINE_RUN = "unkd.pipelines.run"
PIPELINE_TICK = "unkd.pipelines.tick"
TASK_BY_KIND: dict[str, str] = {"teacher": TRAIN_TEACHER, "distill": DISTILL, "publish": PUBLISH}


def queue_for(kind: str, settings: Settings) -> str:
    """Training jobs go to the GPU-bound train queue, publishing to the light queue."""
    return settings.light_queue if kind == "publish" else settings.train_queue


def new_job_id() -> str:
    return uuid.uuid4().hex


def send_job(celery_app: Celery, job_id: str, kind: str, settings: Settings) -> None:
    """The job's task message: only its id (the payload is in the registry), under the job's
    id as task id, on the kind's queue. A submission and a reaper's resend both send this."""
    celery_app.send_task(
        TASK_BY_KIND[kind], args=[job_id], task_id=job_id, queue=queue_for(kind, settings)
    )


def send_pipeline_run(celery_app: Celery, run_id: str, settings: Settings) -> None:
    """A pipeline run's task message: only its id, under the run's id as task id, on the
    train queue (a run trains, in its own process)."""
    celery_app.send_task(PIPELINE_RUN, args=[run_id], task_id=run_id, queue=settings.train_queue)


def submit_job(
    job: JobRecord, *, registry: Registry, celery_app: Celery, settings: Settings
) -> JobRecord:
    """Record the job as queued, then send its task.

    A broker that cannot take the message fails the job (its record says why) and raises
    kombu's OperationalError, which the API answers with a 503 naming the job queue.
    """
    job = registry.create_job(job)
    try:
        send_job(celery_app, job.id, job.kind, settings)
    except (OperationalError, ConnectionError, OSError) as exc:
        registry.finish_job(job.id, "failed", error=f"could not enqueue: {exc}")
        raise OperationalError(f"job {job.id}: could not enqueue: {exc}") from exc
    logger.info("job %s (%s) queued on %s", job.id, job.kind, queue_for(job.kind, settings))
    return job


def make_celery(
    settings: Settings, *, set_as_current: bool = True, include: list[str] | None = None
) -> Celery:
    """A Celery app whose broker and result backend are settings.redis_url.

    Args:
        include: task modules the app imports when a worker starts (the worker passes
            its own; the API sends by name and includes none).
    """
    if not settings.redis_url:
        raise RuntimeError("UNKD_REDIS_URL is not set: the worker needs the stack's Redis")
    app = Celery(
        "unkd",
        broker=settings.redis_url,
        backend=settings.redis_url,
        include=include or [],
        set_as_current=set_as_current,
    )
    # acks_late + reject_on_worker_lost: a job whose worker dies is delivered again (the
    # job record counts the attempt). The broker redelivers an unacknowledged message after
    # visibility_timeout, which must exceed the longest job or a running job would be
    # handed to a second worker.
    visibility = settings.job_soft_time_limit_s + 600
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        result_expires=settings.result_expires_s,
        task_default_queue=settings.light_queue,
        task_routes={
            TRAIN_TEACHER: {"queue": settings.train_queue},
            DISTILL: {"queue": settings.train_queue},
            PUBLISH: {"queue": settings.light_queue},
            TUNE_TRIALS: {"queue": settings.train_queue},
            CANDIDATE_SHARD: {"queue": settings.train_queue},
            EVAL_SHARD: {"queue": settings.train_queue},
            PIPELINE_RUN: {"queue": settings.train_queue},
            PIPELINE_TICK: {"queue": settings.light_queue},
        },
        # `unkd scheduler` (celery beat) sends one thing: the pipelines' tick. A tick that
        # waited longer than its period is dropped: the next one does the same work.
        beat_schedule={
            "pipelines.tick": {
                "task": PIPELINE_TICK,
                "schedule": settings.pipeline_tick_s,
                "options": {"queue": settings.light_queue, "expires": settings.pipeline_tick_s},
            }
        },
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_soft_time_limit_s + 300,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    # Kept on the instance, not in app.conf, which `celery inspect conf` would show.
    app.unkd_settings = settings
    return app


def settings_of(app: Celery) -> Settings:
    """The Settings an app was built with (tasks use these, not the environment)."""
    settings = getattr(app, "unkd_settings", None)
    return settings if isinstance(settings, Settings) else get_settings()
