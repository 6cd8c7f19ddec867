"""Pipelines: save a recipe that retrains, distils, gates and publishes; run it; read its runs.

PUT validates the recipe with the job request models of training.config (a bad teacher or
distill field is a 422 naming `teacher.<field>` / `distill.<field>`), checks the dataset it
names (404 naming dataset_id), resolves the teacher's default model as a teacher job does
(EASE where it fits, else ALS), and refuses a recipe that would serve a teacher without
embeddings (422 naming `distill`). Saving a pipeline that publishes decides what is served,
so PUT and DELETE need an admin key; a run needs a write key. POST .../run records a queued
run holding the pipeline's lock (409 while another run is queued or running) and sends its
task to the train queue; the worker runs it (worker/pipeline_runs.py).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import AdminCaller, WriteAccess
from service.api.deps import CeleryDep, RegistryDep, SettingsDep
from service.api.schemas import MAX_OFFSET, Id
from service.core.pipelines import Pipeline, PipelineName, PipelineRecipe, PipelineRun
from service.core.pipelines_store import PipelineStore
from service.core.queue import send_pipeline_run
from service.core.registry import Registry, utcnow
from training.defaults import default_teacher_model

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])

NameParam = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
_ = PipelineName  # the same rule as the stored name


class PipelineList(BaseModel):
    items: list[Pipeline]
    total: int
    limit: int
    offset: int


class RunList(BaseModel):
    items: list[PipelineRun]
    total: int
    limit: int
    offset: int


class RunRequest(BaseModel):
    """POST /v1/pipelines/{name}/run's optional body."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"min_new_events": 0}]}
    )

    min_new_events: int | None = Field(
        None,
        ge=0,
        description="this run's threshold instead of the recipe's; 0 trains even without new "
        "events (on the lineage's newest version)",
    )


RUN_EXAMPLE: dict[str, Any] = {
    "run_id": "5c0f9e2a7b3d4e8f9a1b2c3d4e5f6a7b",
    "pipeline": "nightly",
    "trigger": "schedule",
    "status": "succeeded",
    "reason": None,
    "dataset_version": "ds-7e8f9a0b1c2d",
    "new_events": 1843,
    "teacher_job": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
    "distill_job": "b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7",
    "publish_job": "c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8",
    "teacher_id": "teacher-a1b2c3d4e5f6",
    "student_id": "student-unkd-b2c3d4e5f6a7",
    "gate": [
        {
            "rule": "head_share",
            "passed": True,
            "detail": "head_share@20 of student-unkd-b2c3d4e5f6a7 is 0.4815, within 1 x its "
            "teacher teacher-a1b2c3d4e5f6's 0.5025 = 0.5025",
        },
    ],
    "published": {
        "model_id": "student-unkd-b2c3d4e5f6a7",
        "action": "experiment",
        "experiment_share": 0.1,
    },
    "metrics": {
        "student_ndcg@20": 0.0547,
        "student_head_share@20": 0.4815,
        "teacher_ndcg@20": 0.0571,
        "teacher_head_share@20": 0.5025,
    },
    "min_new_events": None,
    "created_at": "2026-12-07T03:00:00Z",
    "started_at": "2026-12-07T03:00:01Z",
    "finished_at": "2026-12-07T03:04:12Z",
}


QUEUED_EXAMPLE: dict[str, Any] = {
    **dict.fromkeys(RUN_EXAMPLE),
    **{k: RUN_EXAMPLE[k] for k in ("run_id", "pipeline", "created_at")},
    "trigger": "manual",
    "status": "queued",
    "gate": [],
    "metrics": {},
}


def _example(example: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


def store_of(registry: Registry) -> PipelineStore:
    return PipelineStore(registry.redis)


def _resolved(recipe: PipelineRecipe, registry: Registry, limit_bytes: int) -> PipelineRecipe:
    dataset = registry.get_dataset(recipe.dataset_id, field="dataset_id")  # 404 naming it
    if "model" not in recipe.teacher.model_fields_set:  # as a teacher job: EASE where it fits
        users, items = (int(dataset.statistics.get(k, 0)) for k in ("users", "items"))
        model = default_teacher_model(users, items, limit_bytes)
        recipe.teacher = recipe.teacher.model_copy(update={"model": model})
    try:
        recipe.teacher_servable_check()
    except ValueError as exc:
        raise HTTPException(
            422,
            [{"type": "value_error", "loc": ["body", "distill"], "msg": str(exc), "input": None}],
        ) from exc
    return recipe


@router.put(
    "/{name}",
    responses={201: {"description": "created"}, 404: {"description": "unknown dataset_id"}},
)
def put_pipeline(
    name: NameParam,
    recipe: Annotated[PipelineRecipe, Body()],
    response: Response,
    registry: RegistryDep,
    settings: SettingsDep,
    caller: AdminCaller,
) -> Pipeline:
    """Create (201) or replace (200) a pipeline; its schedule starts from now."""
    recipe = _resolved(recipe, registry, settings.max_job_memory_mb * 2**20)
    now = utcnow()
    pipeline = Pipeline(
        **recipe.model_dump(), name=name, key_name=caller.name, created_at=now, updated_at=now
    )
    stored, created = store_of(registry).put(pipeline)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    logger.info("pipeline %s %s by key %s", name, "created" if created else "replaced", caller.name)
    return stored


@router.get("")
def list_pipelines(
    registry: RegistryDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> PipelineList:
    """Every pipeline, newest first."""
    items, total = store_of(registry).list_pipelines(limit=limit, offset=offset)
    return PipelineList(items=items, total=total, limit=limit, offset=offset)


@router.get("/{name}")
def get_pipeline(name: NameParam, registry: RegistryDep) -> Pipeline:
    """A pipeline's recipe."""
    return store_of(registry).get(name)


@router.delete("/{name}")
def delete_pipeline(name: NameParam, registry: RegistryDep, caller: AdminCaller) -> Pipeline:
    """Remove a pipeline (a run in progress goes on to its end; its runs stay readable)."""
    return store_of(registry).delete(name)


@router.post(
    "/{name}/run",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAccess],
    responses={
        202: _example(QUEUED_EXAMPLE, "the run, queued (follow its Location)"),
        409: {"description": "a run of this pipeline is queued or running"},
    },
)
def run_pipeline(
    name: NameParam,
    registry: RegistryDep,
    celery_app: CeleryDep,
    settings: SettingsDep,
    response: Response,
    body: Annotated[RunRequest | None, Body()] = None,
) -> PipelineRun:
    """Run the pipeline now (trigger "manual"); follow GET .../runs/{run_id}."""
    store = store_of(registry)
    store.get(name)  # 404 naming it
    run = store.create_run(
        name,
        "manual",
        queued_ttl_s=settings.job_soft_time_limit_s + 600,
        min_new_events=body.min_new_events if body is not None else None,
    )
    try:
        send_pipeline_run(celery_app, run.run_id, settings)
    except Exception:
        store.end_run(run.run_id, "failed", "could not enqueue its task")
        raise
    response.headers["Location"] = f"/v1/pipelines/{name}/runs/{run.run_id}"
    return run


@router.get(
    "/{name}/runs",
    responses={
        200: _example(
            {"items": [RUN_EXAMPLE], "total": 1, "limit": 50, "offset": 0}, "newest first"
        )
    },
)
def list_runs(
    name: NameParam,
    registry: RegistryDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> RunList:
    """A pipeline's runs, newest first, each with its status, jobs, gate answer and figures."""
    items, total = store_of(registry).list_runs(name, limit=limit, offset=offset)
    return RunList(items=items, total=total, limit=limit, offset=offset)


@router.get("/{name}/runs/{run_id}", responses={200: _example(RUN_EXAMPLE, "one run")})
def get_run(name: NameParam, run_id: Id, registry: RegistryDep) -> PipelineRun:
    """One run."""
    return store_of(registry).get_run(run_id, name=name)
