"""Records of the registry and its errors: plain pydantic models, no Redis, no FastAPI.

The API's response models (service/api/schemas.py) are built from these; the worker writes
them. A model record is built from the model's typed metadata (training.manifest's
ModelManifest and QualityReport) by `ModelRecord.of`, and shares its `Lineage`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from training.manifest import Lineage, ModelKind, ModelManifest, QualityReport

JobKind = Literal["teacher", "distill", "publish"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_KINDS: tuple[str, ...] = ("teacher", "distill", "publish")
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
HEADLINE_K = 20
# Report metrics a model record shows (at K = HEADLINE_K); the full report has the rest.
HEADLINE = ("recall", "ndcg", "precision", "hit", "ips_recall", "ips_ndcg", "oracle_ndcg",
            "overlap", "arp", "aplt", "head_share", "coverage", "gini", "pop_rsp", "pop_reo")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class NotFoundError(LookupError):
    """An id that names nothing. `field` is the request field or path parameter at fault."""

    def __init__(self, field: str, value: str, what: str) -> None:
        self.field, self.value, self.what = field, value, what
        super().__init__(f"{field}={value!r}: no such {what}")


class ConflictError(RuntimeError):
    """The request is valid but conflicts with the current state of the record."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field}={value!r}: {reason}")


# -- records ---------------------------------------------------------------------------


class DatasetRecord(BaseModel):
    id: str
    name: str
    source: Literal["upload", "synthetic"]
    fingerprint: str
    path: str
    options: dict[str, Any] = Field(default_factory=dict, description="format, split, seed, …")
    statistics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


def headline_metrics(report: QualityReport | None, k: int = HEADLINE_K) -> dict[str, float]:
    """The defined @k figures of a quality report that a model listing shows."""
    if report is None:
        return {}
    out: dict[str, float] = {}
    for name in HEADLINE:
        value = report.metrics.get(f"{name}@{k}")
        if value is not None:
            out[f"{name}@{k}"] = float(value)
    return out


class ModelInfo(BaseModel):
    """What the registry says about a model: the record less its directory (ModelOut
    adds whether it is served; the report pages read either)."""

    id: str
    kind: ModelKind
    method: str | None = Field(None, description="distillation method; None for a teacher")
    model: str
    dim: int
    parameters: dict[str, Any] = Field(default_factory=dict, description="its hyper-parameters")
    lineage: Lineage = Field(default_factory=Lineage, description="dataset_id, teacher_id")
    metrics: dict[str, float] = Field(default_factory=dict,
                                      description="headline @20 figures of its quality report")
    job_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ModelRecord(ModelInfo):
    path: str

    @classmethod
    def of(cls, manifest: ModelManifest, report: QualityReport | None, *, model_id: str,
           path: str, lineage: Lineage, job_id: str | None = None) -> ModelRecord:  # fmt: skip
        """The record of a saved model; `lineage` holds the registry's ids for it."""
        return cls(
            id=model_id, kind=manifest.kind, method=manifest.method, model=manifest.model,
            dim=manifest.dim,
            parameters=manifest.config.model_dump(mode="json") if manifest.config else {},
            lineage=lineage, metrics=headline_metrics(report), path=path, job_id=job_id,
        )  # fmt: skip


class JobProgress(BaseModel):
    stage: str = "queued"
    epoch: int = 0
    epochs: int = 0
    message: str = ""
    # A tuning job: trials finished (completed or pruned) of the trials asked.
    trial: int = Field(0, ge=0)
    trials: int = Field(0, ge=0)


class JobTimings(BaseModel):
    queued_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    elapsed_s: float | None = None


class JobRecord(BaseModel):
    id: str
    kind: JobKind
    status: JobState = "queued"
    params: dict[str, Any] = Field(default_factory=dict)
    output_model_id: str | None = Field(None, description="id the job's model gets (idempotent)")
    progress: JobProgress = Field(default_factory=JobProgress)
    metrics: dict[str, float] = Field(default_factory=dict)
    timings: JobTimings = Field(default_factory=JobTimings)
    error: str | None = None
    model_id: str | None = None
    attempts: int = 0
    cancel_requested: bool = False


class ActiveModel(BaseModel):
    """The serving pointer at service.core.keys.ACTIVE_MODEL, also the SERVING_EVENTS message."""

    model_id: str
    bundle_dir: str
    published_at: datetime = Field(default_factory=utcnow)
