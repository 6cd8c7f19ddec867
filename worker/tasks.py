"""Thin Celery tasks: read the job, call training.pipelines, register the model.

Every task takes only a job id; the job's parameters live in the registry, which is the
one source of truth for its status. Jobs are idempotent by job id: a job's model goes to
settings.models_dir / <its model id>, written atomically by the pipeline, then into the
artifact store under models/<its model id> (the data dir itself, unless UNKD_ARTIFACT_URL
names an object store), so a redelivered message finds the finished model instead of
training twice. Datasets, teachers and models to publish are read through the store too.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import redis
from celery import Celery, Task, shared_task, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded
from pydantic import ValidationError

from service.core.artifacts import ArtifactError, ArtifactStore, bundle_key, model_key
from service.core.bundle_format import BundleError, build_bundle, read_bundle
from service.core.config import Settings
from service.core.queue import DISTILL, PUBLISH, TASK_BY_KIND, TRAIN_TEACHER, queue_for, settings_of
from service.core.registry import (
    GatePolicy,
    JobRecord,
    ModelRecord,
    PublishEntry,
    PublishGateError,
    Registry,
    StagedBundle,
)
from training import pipelines
from training.budget import check_distill, check_teacher, lists_mapped
from training.checkpoint import ModelArtifact
from training.config import DistillConfig, TeacherConfig
from training.dataset import Dataset
from training.device import resolve_device
from training.errors import JobCancelled, TrainingDivergedError
from training.manifest import MANIFEST, Lineage
from training.progress import ProgressEvent
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

_registries: dict[str, Registry] = {}


def registry_for(settings: Settings) -> Registry:
    """One registry client per Redis URL and worker process."""
    url = settings.redis_url or ""
    if url not in _registries:
        _registries[url] = Registry.from_url(url, timeout_s=settings.redis_timeout_s)
    return _registries[url]


@dataclass
class JobContext:
    """What a job body needs: its record, settings, registry and training callbacks."""

    job: JobRecord
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
        """Where the job's pipeline saves its model on this host (atomically)."""
        return self.settings.models_dir.resolve() / self.model_id

    @cached_property
    def store(self) -> ArtifactStore:
        """Where datasets and models are read from and the job's model is stored."""
        return ArtifactStore.from_settings(self.settings)


def _load_dataset(ctx: JobContext, dataset_id: str) -> Dataset:
    """A registered dataset, read through the artifact store (a store URL: fetched, verified)."""
    record = ctx.registry.get_dataset(dataset_id)
    return Dataset.load(ctx.store.resolve(record.path))


def _store_model(ctx: JobContext) -> str:
    """Put the job's model directory in the store; returns its location (data dir: its path)."""
    key = model_key(ctx.model_id)
    if ctx.model_dir.is_dir():  # saved here by this delivery, or by one that died before the put
        return ctx.store.commit(key, ctx.model_dir)
    return ctx.store.location(key)  # an earlier delivery stored it already (_finished_before)


def _register(
    ctx: JobContext, artifact: ModelArtifact, *, dataset_id: str, teacher_id: str | None
) -> ModelRecord:
    record = ModelRecord.of(
        artifact.manifest,
        artifact.report,
        model_id=ctx.model_id,
        path=_store_model(ctx),
        lineage=Lineage(dataset_id=dataset_id, teacher_id=teacher_id),
        job_id=ctx.job.id,
    )
    return ctx.registry.add_model(record)


def _remove_stale_temp(ctx: JobContext) -> None:
    """Temp dirs of an earlier attempt killed while saving (hidden, never a visible model).

    Safe to remove: this worker holds the job's lease, so no other attempt is writing.
    """
    for tmp in ctx.model_dir.parent.glob(f".{ctx.model_id}.tmp-*"):
        logger.info("job %s: removing %s left by an interrupted attempt", ctx.job.id, tmp.name)
        shutil.rmtree(tmp, ignore_errors=True)


def _finished_before(ctx: JobContext) -> ModelArtifact | None:
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


def _tuned_body(ctx: JobContext) -> str:
    """A job with params["tune"]: trials on every worker, the best kept (worker/tuning.py)."""
    from worker.tuning import tune_body  # it imports this module

    return tune_body(ctx)


def _teacher_body(ctx: JobContext) -> str:
    if ctx.job.params.get("tune"):
        return _tuned_body(ctx)
    params = ctx.job.params
    cfg = TeacherConfig.model_validate(params["config"])  # validated again: payloads can be old
    dataset_id = str(params["dataset_id"])
    artifact = _finished_before(ctx)
    if artifact is None:
        dataset = _load_dataset(ctx, dataset_id)
        check_teacher(dataset.n_users, dataset.n_items, cfg, ctx.settings.max_job_memory_mb * 2**20)
        artifact = pipelines.train_teacher(
            dataset,
            cfg,
            ctx.model_dir,
            device=resolve_device(ctx.settings.device),
            on_progress=ctx.reporter,
            should_stop=ctx.stop,
            model_id=ctx.model_id,
            dataset_id=dataset_id,
        )
    _register(ctx, artifact, dataset_id=dataset_id, teacher_id=None)
    return ctx.model_id


def _distill_body(ctx: JobContext) -> str:
    if ctx.job.params.get("tune"):
        return _tuned_body(ctx)
    params = ctx.job.params
    cfg = DistillConfig.model_validate(params["config"])
    teacher = ctx.registry.get_model(str(params["teacher_id"]), field="teacher_id")
    dataset_id = str(teacher.lineage.dataset_id)
    artifact = _finished_before(ctx)
    if artifact is None:
        dataset = _load_dataset(ctx, dataset_id)
        check_distill(
            dataset.n_users,
            dataset.n_items,
            cfg,
            teacher.dim,
            ctx.settings.max_job_memory_mb * 2**20,
            teacher_model=teacher.model,
            mapped=lists_mapped(dataset.n_users, cfg, ctx.settings.fanout_min_users),
        )
        from worker.fanout import distill_in_shards, fans_out  # it imports this module

        if fans_out(ctx.settings, dataset.n_users, cfg):  # candidates ranked by every worker
            artifact = distill_in_shards(ctx, dataset, cfg, dataset_id)
        else:
            artifact = pipelines.distill_student(
                dataset,
                ctx.store.resolve(teacher.path),
                cfg,
                ctx.model_dir,
                device=resolve_device(ctx.settings.device),
                on_progress=ctx.reporter,
                should_stop=ctx.stop,
                model_id=ctx.model_id,
                dataset_id=dataset_id,
            )
    _register(ctx, artifact, dataset_id=dataset_id, teacher_id=teacher.id)
    ctx.saved_model_id = ctx.model_id
    if params.get("publish"):  # a gated publish (PublishGateError) fails the job, keeps the model
        try:
            publish_model(ctx, ctx.model_id)
        except BundleError as exc:
            raise BundleError(
                f"model {ctx.model_id} was trained, but publishing it failed: {exc}"
            ) from exc
    return ctx.model_id


def publish_model(ctx: JobContext, model_id: str) -> PublishEntry | StagedBundle:
    """Check the publish gate, build the serving bundle, load it back to validate, then
    move the active pointer and record the publish in the history.

    The job's params may carry `force` (skip the gate), `gate_policy` (the API's policy at
    submission; else this worker's settings), `key_name` (who asked, for the history) and
    `activate` (false: build and store the bundle and record it as staged, for experiment
    arms; no gate, nothing served changes).
    """
    settings = ctx.settings
    params = ctx.job.params
    force = bool(params.get("force", False))
    activate = bool(params.get("activate", True))
    raw_policy = params.get("gate_policy")
    policy = GatePolicy.model_validate(raw_policy) if raw_policy else GatePolicy.of(settings)
    # Checked here, not only at submission: the served model may have changed since.
    checks = ctx.registry.gate_checks(model_id, policy) if activate else []
    failed = [c for c in checks if c.passed is False]
    if failed and not force:
        raise PublishGateError(model_id, failed)
    model = ctx.registry.get_model(model_id)
    dataset_id = str(model.lineage.dataset_id)
    store = ArtifactStore.from_settings(settings)
    key = bundle_key(model_id, ctx.job.id)
    bundle_dir = settings.bundles_dir.resolve() / key.rsplit("/", 1)[-1]  # built here, then put
    ctx.reporter(ProgressEvent(stage="publish", message=f"building {settings.index_factory} index"))
    # A redelivered job finds its bundle: built here (data dir), or already in the shared store.
    if store.in_place or not store.exists(key):
        if not (bundle_dir / "meta.json").is_file():
            build_bundle(
                store.resolve(model.path),
                _load_dataset(ctx, dataset_id),
                bundle_dir,
                model_id=model_id,
                index_factory=settings.index_factory,
                nprobe=settings.nprobe,
                ef_search=settings.hnsw_ef_search,
            )
        read_bundle(bundle_dir, nprobe=settings.nprobe, ef_search=settings.hnsw_ef_search)
        store.put(key, bundle_dir)  # data dir: already in place; else uploaded, manifest last
        if not store.in_place:
            shutil.rmtree(bundle_dir, ignore_errors=True)  # the store holds it now
    location = store.location(key)  # data dir: str(bundle_dir), as pointers always held
    key_name = params.get("key_name")
    if not activate:
        staged = ctx.registry.record_staged(
            StagedBundle(
                model_id=model_id,
                bundle_dir=location,
                key_name=str(key_name) if key_name else None,
                job_id=ctx.job.id,
            )
        )
        logger.info("job %s: staged model %s at %s (not served)", ctx.job.id, model_id, location)
        return staged
    entry = ctx.registry.record_publish(
        PublishEntry(
            model_id=model_id,
            bundle_dir=location,
            key_name=str(key_name) if key_name else None,
            forced=force,
            job_id=ctx.job.id,
            gate=checks,
        )
    )
    logger.info(
        "job %s: published model %s from %s%s",
        ctx.job.id,
        model_id,
        location,
        " (publish gate forced)" if force and failed else "",
    )
    return entry


def _publish_body(ctx: JobContext) -> str:
    model_id = str(ctx.job.params["model_id"])
    try:
        publish_model(ctx, model_id)
    finally:
        ctx.registry.release_publish(model_id, ctx.job.id)
    return model_id


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


def run_job(task: Task, job_id: str, body: Callable[[JobContext], str]) -> dict[str, Any]:
    """Run one job body with the registry bookkeeping around it; returns a summary."""
    settings = settings_of(task.app)
    registry = registry_for(settings)
    lease = JobLease(registry.redis, job_id, settings)
    if not lease.acquire():  # a redelivery while the first worker still runs it
        logger.warning("job %s: another worker holds its lease; not running it twice", job_id)
        return {"job_id": job_id, "status": "running", "model_id": None}
    try:
        return _run_leased(task, job_id, body, settings, registry, lease)
    finally:
        lease.release()


def _run_leased(
    task: Task,
    job_id: str,
    body: Callable[[JobContext], str],
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
    ctx = JobContext(job, settings, registry, JobReporter(registry, job_id, task), stop)
    status, model_id, error = "failed", None, None
    try:
        model_id = body(ctx)
        status = "succeeded"
    except JobCancelled:
        if job.output_model_id and not registry.has_model(job.output_model_id):
            shutil.rmtree(ctx.model_dir, ignore_errors=True)  # pipelines leave none; be sure
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
    model_id = model_id or ctx.saved_model_id
    finished = registry.finish_job(job_id, status, model_id=model_id, error=error)  # type: ignore[arg-type]
    if job.kind == "distill":  # a fanned-out job's shards outlive retries, not the job
        from worker.fanout import remove_shards  # it imports this module

        try:
            remove_shards(settings, job_id)
        except Exception:
            logger.exception("job %s: its shards could not be removed", job_id)
    prune_cache(settings)
    logger.info(
        "job %s %s in %.1fs%s",
        job_id,
        status,
        finished.timings.elapsed_s or 0.0,
        f": {error}" if error else "",
    )
    return {"job_id": job_id, "status": status, "model_id": model_id, "error": error}


@shared_task(bind=True, name=TRAIN_TEACHER)
def train_teacher(self: Task, job_id: str) -> dict[str, Any]:
    """Train a teacher on a registered dataset."""
    return run_job(self, job_id, _teacher_body)


@shared_task(bind=True, name=DISTILL)
def distill(self: Task, job_id: str) -> dict[str, Any]:
    """Distil a registered teacher into a student (and publish it if asked)."""
    return run_job(self, job_id, _distill_body)


@shared_task(bind=True, name=PUBLISH)
def publish(self: Task, job_id: str) -> dict[str, Any]:
    """Publish a registered model: serving bundle, then the active pointer."""
    return run_job(self, job_id, _publish_body)


def _resend(app: Celery, settings: Settings) -> Callable[[str, str], None]:
    def resend(job_id: str, kind: str) -> None:
        app.send_task(
            TASK_BY_KIND[kind], args=[job_id], task_id=job_id, queue=queue_for(kind, settings)
        )

    return resend


_reaper: Reaper | None = None


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
