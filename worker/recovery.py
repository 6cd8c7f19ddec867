"""Lost-worker recovery: a heartbeat lease per running job, and a reaper that requeues
the jobs whose worker stopped beating.

Why: tasks are acknowledged late, so a worker killed outright (SIGKILL, OOM killer, lost
host) leaves its message in the broker's unacked set, and Redis hands it back only after
the visibility timeout, which must exceed the longest job (hours). The heartbeat brings
that down to about 3 heartbeat intervals:

- `JobLease`: before a worker starts a job it takes `unkd:job:<id>:lease` (SET NX with a
  TTL of 3 x settings.job_heartbeat_s) and a daemon thread refreshes it. A second
  delivery of a job whose lease is alive (a visibility-timeout redelivery while the first
  worker still runs it) is dropped instead of run twice.
- `reap_lost_jobs`: any worker, at startup and then every heartbeat interval, looks at the
  jobs in status `running`; one without a lease lost its worker. The reaper marks it
  `queued` and puts its unacked message back on its queue (kombu's own restore, so the
  message is the original one, not a copy), or sends a new one if the broker no longer
  holds it. The next start counts attempt 2.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import LockError

from service.core import keys
from service.core.config import Settings
from service.core.registry import Registry

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

LEASE_INTERVALS = 3  # a lease outlives this many missed heartbeats


def lease_ttl_s(settings: Settings) -> float:
    return LEASE_INTERVALS * settings.job_heartbeat_s


class JobLease:
    """The heartbeat of one running job: a Redis lock refreshed by a daemon thread.

    `lost` turns True when a refresh finds the lease gone (expired while this worker was
    stalled, and possibly requeued by a reaper): the job should then stop without saving.
    """

    def __init__(self, client: redis.Redis, job_id: str, settings: Settings) -> None:
        self.job_id = job_id
        self.interval_s = settings.job_heartbeat_s
        self._lock = client.lock(
            keys.job_lease(job_id),
            timeout=lease_ttl_s(settings),
            blocking=False,
            thread_local=False,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> bool:
        """Take the lease; False when another live worker holds it."""
        if not self._lock.acquire(blocking=False):
            return False
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{self.job_id[:8]}", daemon=True
        )
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._lock.reacquire()
            except LockError:
                self.lost = True
                logger.error(
                    "job %s: heartbeat lease lost (expired); the job will stop", self.job_id
                )
                return
            except (redis.RedisError, OSError) as exc:  # Redis down: try again next beat
                logger.warning("job %s: heartbeat not written (%s)", self.job_id, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        try:
            self._lock.release()
        except LockError:
            pass  # expired already
        except (redis.RedisError, OSError) as exc:
            logger.warning(
                "job %s: lease not released (%s); it expires by itself", self.job_id, exc
            )


def _restore_unacked(celery_app: Celery, job_id: str) -> bool:
    """Put the unacked broker message of `job_id` back on its queue; False if none held."""
    with celery_app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        client = channel.client
        qos = channel.qos
        for tag, raw in client.hscan_iter(channel.unacked_key):
            try:
                message = json.loads(raw)[0]
                task_id = message["headers"]["id"]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            if task_id == job_id:
                # kombu's restore: removes it from the unacked set and pushes it back to the
                # front of its queue in one transaction (redelivered=True).
                qos.restore_by_tag(tag, client=client, leftmost=True)
                return True
    return False


def reap_lost_jobs(
    registry: Registry,
    settings: Settings,
    celery_app: Celery,
    resend: Callable[[str, str], None],
) -> list[str]:
    """Requeue every running job whose lease expired; returns their ids.

    Args:
        resend: (job_id, kind) -> sends a fresh task message, used when the broker holds
            no unacked message for the job any more.
    """
    recovered: list[str] = []
    running, _ = registry.list_jobs(status="running", limit=500)
    for job in running:
        if job.pipeline_run is not None:  # a pipeline run's step: the pipeline tick ends it
            continue
        if registry.redis.exists(keys.job_lease(job.id)):
            continue
        # One reaper per job, even with many workers starting at once.
        if not registry.redis.set(keys.reap_claim(job.id), "1", nx=True, ex=60):
            continue
        reason = f"worker lost (no heartbeat for {lease_ttl_s(settings):.1f}s)"
        requeued = registry.requeue_job(job.id, reason)
        if requeued.status != "queued":
            continue
        how = "restored its message"
        if not _restore_unacked(celery_app, job.id):
            resend(job.id, job.kind)
            how = "sent a new message"
        logger.warning("job %s (%s): %s; requeued (%s)", job.id, job.kind, reason, how)
        recovered.append(job.id)
    return recovered


class Reaper:
    """A daemon thread of each worker process: reap at start, then every heartbeat interval."""

    def __init__(
        self,
        celery_app: Celery,
        settings: Settings,
        registry: Registry,
        resend: Callable[[str, str], None],
    ) -> None:
        self.celery_app, self.settings, self.registry, self.resend = (
            celery_app,
            settings,
            registry,
            resend,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        try:
            return reap_lost_jobs(self.registry, self.settings, self.celery_app, self.resend)
        except (redis.RedisError, OSError) as exc:
            logger.warning(
                "reaper: registry or broker unreachable (%s); next try in %.0fs",
                exc,
                self.settings.job_heartbeat_s,
            )
        except Exception:  # never let the reaper die
            logger.exception("reaper: unexpected error")
        return []

    def start(self) -> None:
        self.run_once()

        def loop() -> None:
            while not self._stop.wait(self.settings.job_heartbeat_s):
                self.run_once()

        self._thread = threading.Thread(target=loop, name="unkd-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
