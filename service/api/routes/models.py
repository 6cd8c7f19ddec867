"""Models: list, show, quality report, publish (as a light job on the worker)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status

from service.api.auth import AdminCaller
from service.api.deps import CeleryDep, MetricsDep, RegistryDep, SettingsDep
from service.api.schemas import (
    MAX_OFFSET,
    Id,
    JobAccepted,
    ModelList,
    ModelOut,
    PublishRequest,
    QualityReport,
)
from service.core.artifacts import ArtifactNotFoundError, ArtifactStore
from service.core.payloads import PublishPayload, new_job
from service.core.queue import new_job_id, submit_job
from service.core.registry import ConflictError, GatePolicy, NotFoundError
from training.errors import DataError
from training.manifest import NO_EMBEDDINGS, read_report

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
def list_models(
    registry: RegistryDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> ModelList:
    """List models (teachers and students), newest first."""
    items, total = registry.list_models(limit=limit, offset=offset)
    active = registry.get_active()
    active_id = active.model_id if active else None
    return ModelList(
        items=[ModelOut.of(m, active=m.id == active_id) for m in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{model_id}")
def get_model(model_id: Id, registry: RegistryDep) -> ModelOut:
    """One model: kind, method, parameters, lineage and headline metrics."""
    model = registry.get_model(model_id)
    active = registry.get_active()
    return ModelOut.of(model, active=active is not None and active.model_id == model_id)


@router.get("/{model_id}/report")
def get_report(model_id: Id, registry: RegistryDep, settings: SettingsDep) -> QualityReport:
    """The model's full quality report (a student's includes its teacher and the deltas)."""
    model = registry.get_model(model_id)
    try:  # the model's directory through the artifact store (a store URL: fetched, verified)
        return read_report(ArtifactStore.from_settings(settings).resolve(model.path))
    except (FileNotFoundError, ArtifactNotFoundError) as exc:
        logger.warning("model %s: no quality report (%s)", model_id, exc)
        raise NotFoundError("model_id", model_id, "quality report for this model") from exc
    except DataError as exc:  # a broken file on our side: a 500, not the client's 422
        raise RuntimeError(f"model {model_id}: unreadable quality report") from exc


@router.post(
    "/{model_id}/publish",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "the publish gate refused it, or a publish is running"}},
)
def publish_model(
    model_id: Id,
    response: Response,
    registry: RegistryDep,
    celery_app: CeleryDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    caller: AdminCaller,
    req: Annotated[PublishRequest | None, Body()] = None,
) -> JobAccepted:
    """Publish a model (an admin key): check the publish gate, then a job builds its serving
    bundle and moves the active pointer; `{"force": true}` overrides the gate.
    `{"activate": false}` builds and stores the bundle only (no gate): an experiment arm
    can then serve the model without it ever being the active one."""
    req = req or PublishRequest()
    model = registry.get_model(model_id)  # 404 naming model_id
    if model.model == "ease":  # nothing to index: refused before a job is queued
        raise ConflictError("model_id", model_id, NO_EMBEDDINGS)
    policy = req.policy(GatePolicy.of(settings))
    if req.activate and not req.force:  # 409 with the rule and the figures; the worker checks again
        registry.enforce_gate(model_id, policy)
    job_id = new_job_id()
    holder = registry.claim_publish(model_id, job_id, ttl_s=settings.job_soft_time_limit_s)
    if holder is not None:
        raise ConflictError("model_id", model_id, f"already being published by job {holder}")
    job = new_job(
        job_id,
        PublishPayload(
            model_id=model_id,
            force=req.force,
            key_name=caller.name,
            gate_policy=policy,
            activate=req.activate,
        ),
    )
    try:
        job = submit_job(job, registry=registry, celery_app=celery_app, settings=settings)
    except Exception:
        registry.release_publish(model_id, job_id)
        raise
    metrics.jobs_submitted.labels(job.kind).inc()
    response.headers["Location"] = JobAccepted.url(job.id)
    return JobAccepted.of(job)
