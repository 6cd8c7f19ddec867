"""The Celery app, built from Settings. Light: no torch, no FastAPI.

The API imports it to send tasks by name; the worker runs

    celery -A worker.celery_app worker -Q train,light --pool=solo

`app` is created on first access (PEP 562 module __getattr__), so importing this module
reads no environment: the API builds its own app from the Settings it was given.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, signals

from service.config import Settings, get_settings

logger = logging.getLogger(__name__)

TRAIN_TEACHER = "unkd.train_teacher"
DISTILL = "unkd.distill"
PUBLISH = "unkd.publish"
TASK_BY_KIND: dict[str, str] = {"teacher": TRAIN_TEACHER, "distill": DISTILL, "publish": PUBLISH}

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def queue_for(kind: str, settings: Settings) -> str:
    """Training jobs go to the GPU-bound train queue, publishing to the light queue."""
    return settings.light_queue if kind == "publish" else settings.train_queue


def make_celery(settings: Settings, *, set_as_current: bool = True) -> Celery:
    """A Celery app whose broker and result backend are settings.redis_url."""
    if not settings.redis_url:
        raise RuntimeError("UNKD_REDIS_URL is not set: the worker needs the stack's Redis")
    app = Celery(
        "unkd",
        broker=settings.redis_url,
        backend=settings.redis_url,
        include=["worker.tasks"],
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
    app.unkd_settings = settings  # type: ignore[attr-defined]
    return app


def settings_of(app: Celery) -> Settings:
    """The Settings an app was built with (tasks use these, not the environment)."""
    settings = getattr(app, "unkd_settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


_app: Celery | None = None


def get_app() -> Celery:
    """The worker process's app, from get_settings() (the UNKD_ environment)."""
    global _app
    if _app is None:
        _app = make_celery(get_settings())
    return _app


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery's hook: configure logging once for the worker process, ours not Celery's."""
    level = loglevel if loglevel is not None else get_settings().log_level
    if isinstance(level, str):
        level = level.upper()
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    logging.getLogger("unkd").setLevel(level)
