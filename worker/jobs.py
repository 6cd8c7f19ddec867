"""The job framework: a job's context, its lease, the run around its body, its model's record.

Every task that runs a job takes only a job id; the job's payload lives in the registry,
which is the one source of truth for its status, and is parsed here once per run into the
kind's typed payload (service.core.payloads). Jobs are idempotent by job id: a job's model
goes to settings.models_dir / <its model id>, written atomically by the pipeline, then
into the artifact store under models/<its model id> (the data dir itself, unless
UNKD_ARTIFACT_URL names an object store), so a redelivered message finds the finished
model instead of training twice.

What a job does is its `JobType`: the payload it takes, its body, and what is cleaned
after it ends. The bodies (worker/training_jobs.py, worker/publishing.py) use this module;
it imports none of them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

import redis
from celery import Celery, Task, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded
from pydantic import ValidationError

from service.core.artifacts import ArtifactError, ArtifactStore, model_key
from service.core.bundle_format import BundleError
from service.core.config import Settings
from service.core.payloads import DistillPayload, PublishPayload, TeacherPayload, payload_of
from service.core.queue import send_job, settings_of
from service.core.registry import JobRecord, ModelRecord, PublishGateError, Registry
from training.checkpoint import ModelArtifact
from training.errors import JobCancelled, TrainingDivergedError
from training.manifest import MANIFEST, Lineage
from worker.progress import JobReporter, StopCheck, worker_stopping
from worker.recovery import JobLease, Reaper

logger = logging.getLogger(__name__)

# Retrying cannot fix these: the same input fails the same way.
DETERMINISTIC: tuple[type[BaseException], ...] = (
    ValueError,
    LookupError,
    TrainingDivergedError,
    BundleError,
    FileNotFoundError,
    PermissionError,
    PublishGateError,
    ArtifactError,
)
# Infrastructure hiccups: worth a retry with backoff.
TRANSIENT: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)

P = TypeVar("P", TeacherPayload, DistillPayload, PublishPayload)

_registries: dict[str, Registry] = {}


def registry_for(settings: Settings) -> Registry:
    """One registry client per Redis URL and worker process."""
    url = settings.redis_url or ""
    if url not in _registries:
        _registries[url] = Registry.from_url(url, timeout_s=settings.redis_timeout_s)
    return _registries[url]


def model_dir(settings: Settings, model_id: str) -> Path:
    """Where a job's pipeline saves its model on this host (atomically)."""
    return settings.models_dir.resolve() / model_id


@dataclass
class JobContext(Generic[P]):
    """What a job body needs: its record and typed payload, settings, registry and training
    callbacks."""

    job: JobRecord
    payload: P
    settings: Settings
    registry: Registry
    reporter: JobReporter
    stop: StopCheck
    saved_model_id: str | None = None  # set once the model is registered

    @property
    def model_id(self) -> str:
        if not self.job.output_model_id:
            raise ValueError(f"job {self.job.id} has no output_model_id")
        return self.job.output_model_id

    @property
    def model_dir(self) -> Path:
        return model_dir(self.settings, self.model_id)

    @cached_property
    def store(self) -> ArtifactStore:
        """Where datasets and models are read from and the job's model is stored."""
        return ArtifactStore.from_settings(self.settings)


@dataclass(frozen=True)
class JobType(Generic[P]):
    """A kind of job: the payload it takes, its body (returns the job's model id) and what
    goes when the job ends for good (`ended(settings, job_id)`, e.g. a fan-out's shards)."""

    payload: type[P]
    body: Callable[[JobContext[P]], str]
    ended: Callable[[Settings, str], None] | None = None


# -- the job's model -------------------------------------------------------------------------


def _store_model(ctx: JobContext[Any]) -> str:
    """Put the job's model directory in the store; returns its location (data dir: its path)."""
    key = model_key(ctx.model_id)
    if ctx.model_dir.is_dir():  # saved here by this delivery, or by one that died before the put
        return ctx.store.commit(key, ctx.model_dir)
    return ctx.store.location(key)  # an earlier delivery stored it already (finished_before)


def register_model(ctx: JobContext[Any], artifact: ModelArtifact, lineage: Lineage) -> ModelRecord:
    """Store the job's model, record it in the registry, and add a capped student's head-share
    figures to the job's (registry.record_cap)."""
    record = ModelRecord.of(
        artifact.manifest,
        artifact.report,
        model_id=ctx.model_id,
        path=_store_model(ctx),
        lineage=lineage,
        job_id=ctx.job.id,
    )
    record = ctx.registry.add_model(record)
    ctx.saved_model_id = ctx.model_id
    if record.head_share_cap is not None:  # cap_met and both figures, in one registry write
        ctx.registry.record_cap(ctx.job.id, record.head_share_cap)
        if not record.head_share_cap.met:
            logger.warning(
                "job %s: student %s is above its teacher's head share@20 (%.4f > %.4f)",
                ctx.job.id,
                record.id,
                record.head_share_cap.student,
                record.head_share_cap.teacher,
            )
    return record


def _remove_stale_temp(ctx: JobContext[Any]) -> None:
    """Temp dirs of an earlier attempt killed while saving (hidden, never a visible model).

    Safe to remove: this worker holds the job's lease, so no other attempt is writing.
    """
    for tmp in ctx.model_dir.parent.glob(f".{ctx.model_id}.tmp-*"):
        logger.info("job %s: removing %s left by an interrupted attempt", ctx.job.id, tmp.name)
        shutil.rmtree(tmp, ignore_errors=True)


def finished_before(ctx: JobContext[Any]) -> ModelArtifact | None:
    """The model of an earlier delivery of this job that saved it but was not recorded:
    saved on this host (maybe not yet stored), or already in the store under its key."""
    _remove_stale_temp(ctx)
    in_place = ctx.store.in_place
    if (in_place and ctx.registry.has_model(ctx.model_id)) or (ctx.model_dir / MANIFEST).is_file():
        try:
            return ModelArtifact.load(ctx.model_dir)
        except ValueError:
            shutil.rmtree(ctx.model_dir, ignore_errors=True)
    if not in_place and ctx.store.exists(model_key(ctx.model_id)):  # stored, maybe not recorded
        return ModelArtifact.load(ctx.store.fetch(model_key(ctx.model_id)))
    return None


# -- the run around a body -------------------------------------------------------------------


def describe_error(exc: BaseException) -> str:
    """One readable line: a pydantic error names the field, the reason and the value."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(x) for x in err["loc"]) or exc.title
            parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
        return "; ".join(parts)
    return str(exc) or type(exc).__name__


def _retry_delay(retries: int) -> int:
    return int(min(60, 2 ** (retries + 1)))


def prune_cache(settings: Settings) -> None:
    """Keep this host's artifact cache under settings.artifact_cache_max_mb (URL mode only);
    a failure is logged, never the job's."""
    try:
        ArtifactStore.from_settings(settings).prune_cache(settings.artifact_cache_max_mb * 2**20)
    except Exception:
        logger.exception("artifact cache: pruning failed")


def _hand_back(registry: Registry, job_id: str) -> NoReturn:
    """The worker is stopping: queue the job again and return its message to the broker."""
    registry.requeue_job(job_id, "worker shut down mid-job")
    logger.warning("job %s: handed back to the queue (worker shutting down)", job_id)
    raise Reject("worker shutting down", requeue=True)


def typed_payload(job: JobRecord, expected: type[P]) -> P:
    """The job's payload, parsed once; a payload that no longer validates (an old client's)
    or of another kind than the task runs raises, and fails the job."""
    payload = payload_of(job)
    if not isinstance(payload, expected):
        raise ValueError(f"job {job.id} is a {job.kind} job, not one this task runs")
    return payload


def run_job(task: Task, job_id: str, job_type: JobType[P]) -> dict[str, Any]:
    """Run one job with the registry bookkeeping around its body; returns a summary."""
    settings = settings_of(task.app)
    registry = registry_for(settings)
    lease = JobLease(registry.redis, job_id, settings)
    if not lease.acquire():  # a redelivery while the first worker still runs it
        logger.warning("job %s: another worker holds its lease; not running it twice", job_id)
        return {"job_id": job_id, "status": "running", "model_id": None}
    try:
        return _run_leased(task, job_id, job_type, settings, registry, lease)
    finally:
        lease.release()


def _run_leased(
    task: Task,
    job_id: str,
    job_type: JobType[P],
    settings: Settings,
    registry: Registry,
    lease: JobLease,
) -> dict[str, Any]:
    job, should_run = registry.start_job(job_id)
    if not should_run:
        logger.info("job %s is %s: not running it", job_id, job.status)
        return {"job_id": job_id, "status": job.status, "model_id": job.model_id}
    logger.info("job %s (%s) started, attempt %d", job_id, job.kind, job.attempts)
    stop = StopCheck(registry, job_id, settings.job_soft_time_limit_s, lambda: lease.lost)
    reporter = JobReporter(registry, job_id, task)
    status, model_id, error = "failed", None, None
    ctx: JobContext[P] | None = None
    try:
        ctx = JobContext(
            job, typed_payload(job, job_type.payload), settings, registry, reporter, stop
        )
        model_id = job_type.body(ctx)
        status = "succeeded"
    except JobCancelled:
        if job.output_model_id and not registry.has_model(job.output_model_id):
            # pipelines leave none; be sure
            shutil.rmtree(model_dir(settings, job.output_model_id), ignore_errors=True)
        if stop.lost:  # a reaper requeued the job: the run that took it over records it
            return {"job_id": job_id, "status": "lost", "model_id": None}
        if stop.cancelled:
            status = "cancelled"
        elif stop.shutdown:
            _hand_back(registry, job_id)
        else:
            error = f"stopped: exceeded job_soft_time_limit_s={settings.job_soft_time_limit_s}"
    except MemoryError as exc:  # freed on return; the worker lives on for the next job
        error = f"out of memory: {describe_error(exc)}"
        logger.error("job %s: %s", job_id, error)
    except SoftTimeLimitExceeded:
        error = f"stopped: exceeded job_soft_time_limit_s={settings.job_soft_time_limit_s}"
    except DETERMINISTIC as exc:
        error = describe_error(exc)
        logger.warning("job %s failed: %s", job_id, error)
    except TRANSIENT as exc:
        retries = int(task.request.retries or 0)
        if retries < settings.job_max_retries:
            logger.warning("job %s: transient error (%r), retry %d", job_id, exc, retries + 1)
            registry.requeue_job(job_id, repr(exc))
            raise task.retry(exc=exc, countdown=_retry_delay(retries)) from exc
        error = f"gave up after {retries} retries: {exc!r}"
    except Exception as exc:  # a bug: record it, never retry it
        if worker_stopping():  # a cold shutdown interrupted the job: not the job's fault
            _hand_back(registry, job_id)
        logger.exception("job %s: unexpected error", job_id)
        error = f"{type(exc).__name__}: {exc}"
    model_id = model_id or (ctx.saved_model_id if ctx is not None else None)
    finished = registry.finish_job(job_id, status, model_id=model_id, error=error)  # type: ignore[arg-type]
    if job_type.ended is not None:  # e.g. a fanned-out job's shards outlive retries, not the job
        try:
            job_type.ended(settings, job_id)
        except Exception:
            logger.exception("job %s: what it leaves could not be removed", job_id)
    prune_cache(settings)
    logger.info(
        "job %s %s in %.1fs%s",
        job_id,
        status,
        finished.timings.elapsed_s or 0.0,
        f": {error}" if error else "",
    )
    return {"job_id": job_id, "status": status, "model_id": model_id, "error": error}


# -- the reaper: every worker requeues the jobs of workers that died -------------------------

_reaper: Reaper | None = None


def _resend(app: Celery, settings: Settings) -> Callable[[str, str], None]:
    def resend(job_id: str, kind: str) -> None:
        send_job(app, job_id, kind, settings)

    return resend


@signals.worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    """Requeue the jobs of workers that died (now, then every heartbeat interval)."""
    global _reaper
    app = getattr(sender, "app", None)
    if app is None or _reaper is not None:
        return
    settings = settings_of(app)
    _reaper = Reaper(app, settings, registry_for(settings), _resend(app, settings))
    _reaper.start()


@signals.worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop()
