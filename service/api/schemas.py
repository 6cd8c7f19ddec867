"""Request and response models of the REST API (datasets, jobs, models, operations).

Hyper-parameters are not redefined here: job requests extend training.config's
TeacherConfig and DistillConfig, so the edge validates exactly what the worker will.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service.core.records import (
    DatasetRecord,
    GatePolicy,
    JobKind,
    JobProgress,
    JobRecord,
    JobState,
    JobTimings,
    ModelInfo,
    ModelRecord,
    PublishEntry,
)
from training.config import DistillConfig, TeacherConfig, TuneOptions
from training.manifest import HeadShareCap
from training.manifest import QualityReport as QualityReport  # GET /v1/models/{id}/report

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
# List offsets beyond this are refused (422): Redis ranges are 64-bit, and no listing is
# that long, so a larger offset is only ever an attack or a bug.
MAX_OFFSET = 1_000_000_000


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- datasets --------------------------------------------------------------------------


class UploadOptions(_Forbid):
    """Form fields sent beside the uploaded `file`."""

    format: Literal["auto", "csv", "tsv", "parquet", "recbole", "movielens", "lines"] = "auto"
    split: Literal["auto", "random", "temporal", "given"] = Field(
        "auto", description="auto: the file's split column when it has one, else random"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    holdout: float = Field(0.2, gt=0, lt=1, description="share of each user's items held out")
    min_user_interactions: int = Field(1, ge=1, le=100_000)
    min_item_interactions: int = Field(1, ge=1, le=100_000)
    name: str | None = Field(None, min_length=1, max_length=200)


MAX_SYNTHETIC_CELLS = 50_000_000  # ~1-2 s of generation on one core
MAX_SYNTHETIC_INTERACTIONS = 5_000_000


class SyntheticParams(_Forbid):
    """The built-in long-tail generator; unset fields take training.synthetic's defaults."""

    n_users: int | None = Field(None, ge=2, le=1_000_000)
    n_items: int | None = Field(None, ge=10, le=1_000_000)
    dim: int | None = Field(None, ge=2, le=512, description="true preference dimension")
    skew: float | None = Field(None, ge=0, le=5, description="exposure popularity skew, 0 = none")
    interactions_per_user: float | None = Field(None, gt=0, le=10_000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    holdout: float | None = Field(None, gt=0, lt=1)
    temperature: float | None = Field(None, gt=0, le=100)
    quality_std: float | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _bounded_work(self) -> SyntheticParams:
        # Generation runs inside the request and scores every (user, item) cell once, so
        # each bound alone is not enough: 1M users x 1M items would be hours of CPU.
        from training.synthetic import SYNTHETIC_DEFAULTS

        users = self.n_users or SYNTHETIC_DEFAULTS["n_users"]
        items = self.n_items or SYNTHETIC_DEFAULTS["n_items"]
        per_user = self.interactions_per_user or SYNTHETIC_DEFAULTS["interactions_per_user"]
        if users * items > MAX_SYNTHETIC_CELLS:
            raise ValueError(
                f"n_users x n_items = {users * items:,} exceeds {MAX_SYNTHETIC_CELLS:,}; "
                "lower n_users or n_items"
            )
        if users * min(per_user, items / 2) > MAX_SYNTHETIC_INTERACTIONS:
            raise ValueError(
                f"n_users x interactions_per_user exceeds {MAX_SYNTHETIC_INTERACTIONS:,} "
                "interactions; lower n_users or interactions_per_user"
            )
        return self


class SyntheticDatasetRequest(_Forbid):
    synthetic: SyntheticParams = Field(default_factory=lambda: SyntheticParams())
    name: str | None = Field(None, min_length=1, max_length=200)


class DatasetOut(BaseModel):
    id: str
    name: str
    source: Literal["upload", "synthetic", "version"]
    fingerprint: str
    options: dict[str, Any]
    statistics: dict[str, Any] = Field(description="sizes, split and popularity groups")
    created_at: datetime
    root_id: str | None = Field(None, description="the lineage's root; None for a root")
    parent_id: str | None = Field(None, description="the version it grew from; None for a root")
    version: int = Field(0, description="0 for a root, then 1, 2, … along its lineage")
    events_cursor: str = Field(
        "0-0", description="events stream id up to which events are in it (inclusive)"
    )
    lineage: dict[str, Any] | None = Field(
        None,
        description="a version's parent_id, events_from (exclusive), events_to (inclusive), "
        "events (positive events added), segment (artifact-store key), new_users, new_items, "
        "new_pairs",
    )

    @classmethod
    def of(cls, record: DatasetRecord) -> DatasetOut:
        return cls.model_validate(record.model_dump(exclude={"path"}))


class DatasetList(BaseModel):
    items: list[DatasetOut]
    total: int
    limit: int
    offset: int


# -- jobs --------------------------------------------------------------------------------


class TeacherJobRequest(TeacherConfig):
    """Train a teacher: TeacherConfig's fields plus the dataset to train on."""

    kind: Literal["teacher"]
    dataset_id: Id
    tune: TuneOptions | None = Field(
        None, description="tune on the validation split: {'trials': N} (docs/tuning.md)"
    )


class DistillJobRequest(DistillConfig):
    """Distil a student: DistillConfig's fields plus the teacher and whether to publish."""

    kind: Literal["distill"]
    teacher_id: Id
    publish: bool = Field(
        False, description="publish the student when the job succeeds (an admin key)"
    )
    force: bool = Field(False, description="with publish: publish even if the publish gate refuses")
    tune: TuneOptions | None = Field(
        None, description="tune on the validation split: {'trials': N} (docs/tuning.md)"
    )

    @field_validator("force")
    @classmethod
    def _force_needs_publish(cls, force: bool, info: ValidationInfo) -> bool:
        if force and not info.data.get("publish"):
            raise ValueError("only with publish: true (it overrides the publish gate)")
        return force


JobRequest = Annotated[TeacherJobRequest | DistillJobRequest, Field(discriminator="kind")]


class JobAccepted(BaseModel):
    id: str
    kind: JobKind
    status: JobState
    status_url: str

    @staticmethod
    def url(job_id: str) -> str:
        """Where a job's status is read (also the 202's Location)."""
        return f"/v1/jobs/{job_id}"

    @classmethod
    def of(cls, record: JobRecord) -> JobAccepted:
        return cls(
            id=record.id, kind=record.kind, status=record.status, status_url=cls.url(record.id)
        )


class JobStatus(BaseModel):
    id: str
    kind: JobKind
    status: JobState
    progress: JobProgress
    metrics: dict[str, float]
    error: str | None
    model_id: str | None = Field(description="the resulting model, once the job succeeded")
    timings: JobTimings
    attempts: int = Field(description="times a worker started it; above 1 after a retry")
    cancel_requested: bool
    params: dict[str, Any]
    cap_met: bool | None = Field(
        None,
        description="a distill job under a head-share cap, once it succeeded: whether its "
        "student's head share@20 is at most its teacher's (both in head_share_cap)",
    )
    head_share_cap: HeadShareCap | None = None
    pipeline_run: str | None = Field(
        None, description="the pipeline run this job is a step of (GET /v1/pipelines/…/runs)"
    )

    @classmethod
    def of(cls, record: JobRecord) -> JobStatus:
        return cls.model_validate(record.model_dump(exclude={"output_model_id"}))


class JobList(BaseModel):
    items: list[JobStatus]
    total: int
    limit: int
    offset: int


# -- models ------------------------------------------------------------------------------


class ModelOut(ModelInfo):
    """A registered model: the record less its directory, plus whether it is served."""

    active: bool = Field(description="this model answers /v1/recommendations")

    @classmethod
    def of(cls, record: ModelRecord, *, active: bool) -> ModelOut:
        return cls.model_validate({**record.model_dump(exclude={"path"}), "active": active})


class ModelList(BaseModel):
    items: list[ModelOut]
    total: int
    limit: int
    offset: int


class PublishRequest(_Forbid):
    """Optional body of POST /v1/models/{id}/publish: override the publish gate, or build
    the bundle without serving it."""

    force: bool = Field(
        False, description="publish even if the gate refuses (recorded in the history)"
    )
    activate: bool = Field(
        True,
        description="false: build and store the serving bundle without serving it (the active "
        "model and the history stay as they are), so an experiment arm can serve the model to a share "
        "of users first; the publish gate does not apply to it (arms are not gated)",
    )
    max_head_share_ratio: float | None = Field(
        None,
        gt=0,
        le=100,
        description="this publish only: a student's head_share@20 at most this x its teacher's",
    )
    min_ndcg_ratio: float | None = Field(
        None,
        ge=0,
        le=100,
        description="this publish only: ndcg@20 at least this x the served model's",
    )

    def policy(self, default: GatePolicy) -> GatePolicy:
        """`default` (from Settings) with this request's thresholds."""
        update = {
            k: v
            for k, v in (
                ("max_head_share_ratio", self.max_head_share_ratio),
                ("min_ndcg_ratio", self.min_ndcg_ratio),
            )
            if v is not None
        }
        return default.model_copy(update=update)


class PublishHistory(BaseModel):
    items: list[PublishEntry] = Field(description="publishes and rollbacks, newest first")
    total: int
    limit: int
    offset: int


# -- operations --------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    redis: bool
    index_loaded: bool
    model_id: str | None = None
