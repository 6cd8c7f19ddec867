"""The worker's Celery app: the shared app of service.core.queue with the tasks included.

    celery -A worker.celery_app worker -Q train,light --pool=solo

`app` is created on first access (PEP 562 module __getattr__), so importing this module
reads no environment.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, signals

from service.core.config import get_settings
from service.core.queue import make_celery

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
TASK_MODULES = ["worker.tasks"]  # every task; it imports the rest

_app: Celery | None = None


def get_app() -> Celery:
    """The worker process's app, from get_settings() (the UNKD_ environment)."""
    global _app
    if _app is None:
        _app = make_celery(get_settings(), include=TASK_MODULES)
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
