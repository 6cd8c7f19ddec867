"""Jobs: submit teacher training or distillation, list, show status, cancel.

Submitting validates the hyper-parameters (training.config models) and the ids it names,
writes the job record, then sends a task carrying only the job id. The request path
never trains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Body, HTTPException, Query, Response, status

from service.api.auth import WriteAccess, WriteCaller, forbidden
from service.api.deps import CeleryDep, MetricsDep, RegistryDep, SettingsDep
from service.api.prometheus import ServiceMetrics
from service.api.schemas import (
    MAX_OFFSET,
    DistillJobRequest,
    Id,
    JobAccepted,
    JobList,
    JobRequest,
    JobStatus,
    TeacherJobRequest,
)
from service.core.config import Settings
from service.core.payloads import DistillPayload, TeacherPayload, new_job
from service.core.queue import new_job_id, submit_job
from service.core.registry import DatasetRecord, GatePolicy, JobKind, JobRecord, JobState, Registry
from training.budget import (
    EASETooLargeError,
    MemoryBudgetError,
    check_distill,
    check_teacher,
)
from training.config import DistillConfig, TeacherConfig
from training.defaults import default_teacher_model

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def accepted(
    job: JobRecord,
    *,
    registry: Registry,
    celery_app: Celery,
    settings: Settings,
    metrics: ServiceMetrics,
    response: Response,
) -> JobAccepted:
    """Submit the job (service.core.queue.submit_job: a broker failure fails it, a 503) and
    answer 202 with where to follow it."""
    job = submit_job(job, registry=registry, celery_app=celery_app, settings=settings)
    metrics.jobs_submitted.labels(job.kind).inc()
    response.headers["Location"] = JobAccepted.url(job.id)
    return JobAccepted.of(job)


def _within_budget(check: Callable[[], int]) -> None:
    """Refuse (422, naming the field) a job whose memory estimate exceeds the budget, or an
    EASE teacher over a catalogue above EASE_MAX_ITEMS (naming `model` and `als`)."""
    try:
        check()
    except EASETooLargeError as exc:
        raise HTTPException(
            422,
            [{"type": "value_error", "loc": ["body", exc.field], "msg": str(exc), "input": "ease"}],
        ) from exc
    except MemoryBudgetError as exc:
        loc = ["body", *exc.field.split(".")]
        value = exc.needed // 2**20
        raise HTTPException(
            422, [{"type": "value_error", "loc": loc, "msg": str(exc), "input": f"~{value} MiB"}]
        ) from exc


def _sizes(record: DatasetRecord) -> tuple[int, int]:
    stats = record.statistics
    return int(stats.get("users", 0)), int(stats.get("items", 0))


def _teacher_job(req: TeacherJobRequest, registry: Registry, settings: Settings) -> JobRecord:
    dataset = registry.get_dataset(req.dataset_id, field="dataset_id")  # 404 naming dataset_id
    users, items = _sizes(dataset)
    limit = settings.max_job_memory_mb * 2**20
    if "model" not in req.model_fields_set:  # the default: EASE where it fits, else ALS
        req = req.model_copy(update={"model": default_teacher_model(users, items, limit)})
    _within_budget(lambda: check_teacher(users, items, req, limit))
    payload = TeacherPayload(
        dataset_id=req.dataset_id,
        config=TeacherConfig.model_validate(req.model_dump(exclude={"kind", "dataset_id", "tune"})),
        tune=req.tune,  # a tuning job (worker/tuning.py)
    )
    job_id = new_job_id()
    return new_job(job_id, payload, output_model_id=f"teacher-{job_id[:12]}")


def _distill_job(
    req: DistillJobRequest, registry: Registry, settings: Settings, key_name: str | None
) -> JobRecord:
    teacher = registry.get_model(req.teacher_id, field="teacher_id")  # 404 naming teacher_id
    if teacher.kind != "teacher":
        raise HTTPException(
            status_code=422,
            detail=f"teacher_id={req.teacher_id!r}: model is a {teacher.kind}, not a teacher",
        )
    config = req.model_dump(exclude={"kind", "teacher_id", "publish", "force", "tune"})
    payload = DistillPayload(
        teacher_id=req.teacher_id,
        dataset_id=teacher.lineage.dataset_id,
        config=DistillConfig.model_validate(config),
        publish=req.publish,
        # for the worker's publish step: the gate as set now, who asked (kept with publish only)
        gate_policy=GatePolicy.of(settings) if req.publish else None,
        key_name=key_name,
        force=req.force,
        tune=req.tune,
    )
    if payload.dataset_id:
        users, items = _sizes(registry.get_dataset(payload.dataset_id, field="teacher_id"))
        limit = settings.max_job_memory_mb * 2**20
        mapped = payload.lists_on_disk(users, settings)
        _within_budget(
            lambda: check_distill(users, items, req, teacher.dim, limit, teacher.model, mapped)
        )
    job_id = new_job_id()
    return new_job(job_id, payload, output_model_id=f"student-{req.method}-{job_id[:12]}")


@router.post("", status_code=status.HTTP_202_ACCEPTED)
def create_job(
    req: Annotated[JobRequest, Body()],
    response: Response,
    registry: RegistryDep,
    celery_app: CeleryDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    caller: WriteCaller,
) -> JobAccepted:
    """Submit a job: {"kind": "teacher", "dataset_id", ...} or {"kind": "distill", "teacher_id", ...}.

    A distill job with "publish": true publishes, so it needs an admin key; its student
    meets the publish gate when the worker publishes it (its figures exist only then)."""
    if isinstance(req, TeacherJobRequest):
        job = _teacher_job(req, registry, settings)
    else:
        if req.publish and not caller.allows("admin"):
            metrics.auth_failures.labels(reason="role").inc()
            raise forbidden(caller, "admin", 'a distill job with "publish": true')
        job = _distill_job(req, registry, settings, caller.name)
    return accepted(
        job,
        registry=registry,
        celery_app=celery_app,
        settings=settings,
        metrics=metrics,
        response=response,
    )


@router.get("")
def list_jobs(
    registry: RegistryDep,
    status_: Annotated[JobState | None, Query(alias="status")] = None,
    kind: JobKind | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> JobList:
    """List jobs, newest first, optionally filtered by status and kind."""
    items, total = registry.list_jobs(status=status_, kind=kind, limit=limit, offset=offset)
    return JobList(items=[JobStatus.of(j) for j in items], total=total, limit=limit, offset=offset)


@router.get("/{job_id}")
def get_job(job_id: Id, registry: RegistryDep) -> JobStatus:
    """A job's status, progress (epoch of epochs), latest metrics, timings and result."""
    return JobStatus.of(registry.get_job(job_id))


@router.delete("/{job_id}", status_code=status.HTTP_202_ACCEPTED, dependencies=[WriteAccess])
def cancel_job(job_id: Id, registry: RegistryDep) -> JobStatus:
    """Cancel: a queued job never starts; a running one stops at its next epoch boundary."""
    job = registry.request_cancel(job_id)
    logger.info("job %s: cancel requested (now %s)", job_id, job.status)
    return JobStatus.of(job)
