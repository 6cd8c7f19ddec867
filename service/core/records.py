"""Records of the registry and its errors: plain pydantic models, no Redis, no FastAPI.

The API's response models (service/api/schemas.py) are built from these; the worker writes
them. A model record is built from the model's typed metadata (training.manifest's
ModelManifest and QualityReport) by `ModelRecord.of`, and shares its `Lineage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.core.config import Settings
from training.manifest import HeadShareCap, Lineage, ModelKind, ModelManifest, QualityReport

JobKind = Literal["teacher", "distill", "publish"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_KINDS: tuple[str, ...] = ("teacher", "distill", "publish")
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
HEADLINE_K = 20
# Report metrics a model record shows (at K = HEADLINE_K); the full report has the rest.
HEADLINE = (
    "recall",
    "ndcg",
    "precision",
    "hit",
    "ips_recall",
    "ips_ndcg",
    "oracle_ndcg",
    "overlap",
    "arp",
    "aplt",
    "head_share",
    "coverage",
    "gini",
    "pop_rsp",
    "pop_reo",
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class NotFoundError(LookupError):
    """An id that names nothing. `field` is the request field or path parameter at fault.

    `message` replaces the usual "<field>=<value>: no such <what>" where one value does not
    tell it (several unknown ids of a batch, no experiment running); it names the field too.
    """

    def __init__(self, field: str, value: str, what: str, *, message: str | None = None) -> None:
        self.field, self.value, self.what = field, value, what
        super().__init__(message or f"{field}={value!r}: no such {what}")


class ConflictError(RuntimeError):
    """The request is valid but conflicts with the current state of the record."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field}={value!r}: {reason}")


class NotServingError(RuntimeError):
    """Nothing is served yet (no model was published), so the request cannot be answered now
    (503; it will be once a model is published). `field` names what is missing."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


# -- records ---------------------------------------------------------------------------


class DatasetRecord(BaseModel):
    """A registered dataset: a root (an upload, the synthetic set) or a version of one, built
    from its parent and the positive events since (service/core/versions.py). The lineage
    fields have defaults, so records written before versions existed still read."""

    id: str
    name: str
    source: Literal["upload", "synthetic", "version"]
    fingerprint: str
    path: str
    options: dict[str, Any] = Field(default_factory=dict, description="format, split, seed, …")
    statistics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    root_id: str | None = Field(None, description="the lineage's root; None for a root")
    parent_id: str | None = Field(None, description="the version it grew from; None for a root")
    version: int = Field(0, description="0 for a root, then 1, 2, … along its lineage")
    events_cursor: str = Field(
        "0-0", description="events stream id up to which events are in it (inclusive)"
    )
    lineage: dict[str, Any] | None = Field(
        None,
        description="a version's parent_id, events_from (exclusive), events_to (inclusive), "
        "events (positive events added) and segment (artifact-store key)",
    )

    @property
    def lineage_root(self) -> str:
        """The id of the root of this record's lineage (its own id for a root)."""
        return self.root_id or self.id


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
    metrics: dict[str, float] = Field(
        default_factory=dict, description="headline @20 figures of its quality report"
    )
    head_share_cap: HeadShareCap | None = Field(
        None,
        description="a student under a head-share cap: its head share@20 and its teacher's over "
        "every user's list (the figures the publish gate compares)",
    )
    job_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ModelRecord(ModelInfo):
    path: str

    @classmethod
    def of(
        cls,
        manifest: ModelManifest,
        report: QualityReport | None,
        *,
        model_id: str,
        path: str,
        lineage: Lineage,
        job_id: str | None = None,
    ) -> ModelRecord:
        """The record of a saved model; `lineage` holds the registry's ids for it."""
        return cls(
            id=model_id,
            kind=manifest.kind,
            method=manifest.method,
            model=manifest.model,
            dim=manifest.dim,
            parameters=manifest.config.model_dump(mode="json") if manifest.config else {},
            lineage=lineage,
            metrics=headline_metrics(report),
            head_share_cap=manifest.training.head_share_cap if manifest.training else None,
            path=path,
            job_id=job_id,
        )


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
    # The job's payload in its JSON form (service.core.payloads: built by new_job, typed again
    # by payload_of), so a record an older client wrote stays readable when it no longer validates.
    params: dict[str, Any] = Field(default_factory=dict)
    output_model_id: str | None = Field(None, description="id the job's model gets (idempotent)")
    progress: JobProgress = Field(default_factory=JobProgress)
    metrics: dict[str, float] = Field(default_factory=dict)
    timings: JobTimings = Field(default_factory=JobTimings)
    error: str | None = None
    model_id: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    # A distill job under a head-share cap, once its model is registered: whether the kept
    # student's head share@20 is at most its teacher's, and both figures.
    cap_met: bool | None = None
    head_share_cap: HeadShareCap | None = None
    # A step of a pipeline run (worker/pipeline_runs.py), which runs it in its own process:
    # the run's id. The reaper leaves such a job to the pipeline tick, which fails it with
    # its run; a job of its own would run again without the run around it.
    pipeline_run: str | None = None


class ActiveModel(BaseModel):
    """The serving pointer at service.core.keys.ACTIVE_MODEL, also the SERVING_EVENTS message."""

    model_id: str
    bundle_dir: str
    published_at: datetime = Field(default_factory=utcnow)


# -- the A/B experiment (service.serving.experiment serves it) --------------------------------


class ExperimentArm(BaseModel):
    model_id: str
    weight: float
    bundle_dir: str = Field(
        description="the serving bundle the arm answers from (its newest publish)"
    )


class Experiment(BaseModel):
    """The running experiment, as stored at service.core.keys.EXPERIMENT and answered by the routes."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "arms": [
                        {
                            "model_id": "student-unkd-4e1f",
                            "weight": 0.5,
                            "bundle_dir": "/srv/unkd/bundles/student-unkd-4e1f-9a0b1c2d",
                        },
                        {
                            "model_id": "student-rd-77a0",
                            "weight": 0.5,
                            "bundle_dir": "/srv/unkd/bundles/student-rd-77a0-5e6f7a8b",
                        },
                    ],
                    "salt": "unkd-vs-rd-december",
                    "started_at": "2026-12-01T09:30:00Z",
                    "started_by": "alice",
                }
            ]
        }
    )

    arms: list[ExperimentArm]
    salt: str = Field(
        description="mixed into the user hash (service.serving.experiment.assignment_point)"
    )
    started_at: datetime
    started_by: str | None = Field(
        description="the name of the API key that started it; null when keys are off"
    )


@dataclass(frozen=True)
class ServingState:
    """The active pointer and the running experiment as stored (JSON text; None: absent), read
    together in one round trip by every API process's watcher.

    Kept as text: the watcher compares the experiment's text with the one it serves, and a
    record that does not parse must be reported by the reader without hiding the other one.
    `active()` and `experiment()` type them (pydantic.ValidationError when one does not parse).
    """

    active_json: str | None
    experiment_json: str | None

    def active(self) -> ActiveModel | None:
        raw = self.active_json
        return ActiveModel.model_validate_json(raw) if raw is not None else None

    def experiment(self) -> Experiment | None:
        raw = self.experiment_json
        return Experiment.model_validate_json(raw) if raw is not None else None


# -- publishing: the gate and the history ----------------------------------------------------

GATE_K = HEADLINE_K  # the gate reads the headline @20 figures of the models' reports


class GatePolicy(BaseModel):
    """The publish gate: Settings give the default, a publish request may tighten or loosen
    it (and `force` skips it, recorded in the history)."""

    enabled: bool = True
    max_head_share_ratio: float = Field(
        1.0, gt=0, le=100, description=("a student's head_share@20 at most this x its teacher's")
    )
    min_ndcg_ratio: float = Field(
        0.9,
        ge=0,
        le=100,
        description=("a model's ndcg@20 at least this x the served model's (same dataset)"),
    )

    @classmethod
    def of(cls, settings: Settings) -> GatePolicy:
        """The default policy: UNKD_PUBLISH_GATE and UNKD_GATE_* settings."""
        return cls(
            enabled=settings.publish_gate,
            max_head_share_ratio=settings.gate_max_head_share_ratio,
            min_ndcg_ratio=settings.gate_min_ndcg_ratio,
        )


class GateCheck(BaseModel):
    """One rule of the gate on one publish: passed True/False, or None when not checked."""

    rule: Literal["head_share", "ndcg"]
    passed: bool | None
    detail: str


class PublishGateError(ConflictError):
    """The gate refused the publish (409); the message has the rule, the figures, the way out."""

    def __init__(self, model_id: str, failed: list[GateCheck]) -> None:
        self.checks = failed
        reason = (
            "publish gate refused it: "
            + "; ".join(c.detail for c in failed)
            + '. Publish anyway with {"force": true} in the publish body (an admin key; '
            "recorded in the publish history), or change the policy (UNKD_PUBLISH_GATE, "
            "UNKD_GATE_MAX_HEAD_SHARE_RATIO, UNKD_GATE_MIN_NDCG_RATIO)"
        )
        super().__init__("model_id", model_id, reason)


def _figure(model: ModelRecord, name: str) -> float | None:
    value = model.metrics.get(f"{name}@{GATE_K}")
    return float(value) if value is not None else None


def _cap_check(candidate: ModelRecord, policy: GatePolicy) -> GateCheck:
    """The head-share rule on the figures the student's own job kept: its head share@20 and
    its teacher's over every user's list (training.calibration.exposure). The job met its cap
    on these very numbers, so a job that says cap_met passes at the default ratio 1; no test
    split's noise enters (test users are half of the users)."""
    cap = candidate.head_share_cap
    assert cap is not None
    limit = policy.max_head_share_ratio * cap.teacher
    ok = cap.student <= limit + 1e-12
    return GateCheck(
        rule="head_share",
        passed=ok,
        detail=(
            f"head_share@{GATE_K} of {candidate.id} over every user's list is {cap.student:.4f}, "
            f"{'within' if ok else 'above'} {policy.max_head_share_ratio:g} x its teacher "
            f"{candidate.lineage.teacher_id}'s {cap.teacher:.4f} = {limit:.4f}"
        ),
    )


def evaluate_gate(
    candidate: ModelRecord,
    *,
    teacher: ModelRecord | None,
    served: ModelRecord | None,
    policy: GatePolicy,
) -> list[GateCheck]:
    """The gate's rules for publishing `candidate`, each with its figures.

    head_share: a student's head_share@20 <= max_head_share_ratio x its teacher's: the figures
    its job kept (ModelRecord.head_share_cap, over every user's list), or for a model without
    them, the test reports' figures.
    ndcg: ndcg@20 >= min_ndcg_ratio x the served model's, when another model trained on the
    same dataset is served (NDCG of different test splits is not comparable). A rule whose
    figures are missing from the reports is not checked (passed None), and says why.
    """
    if not policy.enabled:
        return []
    k, checks = GATE_K, []
    if candidate.kind == "student" and candidate.head_share_cap is not None:
        checks.append(_cap_check(candidate, policy))
    elif candidate.kind == "student":  # a model from before the job recorded its cap
        mine = _figure(candidate, "head_share")
        theirs = _figure(teacher, "head_share") if teacher is not None else None
        if teacher is None or mine is None or theirs is None:
            who = f"teacher {candidate.lineage.teacher_id}" if teacher is None else teacher.id
            checks.append(
                GateCheck(
                    rule="head_share",
                    passed=None,
                    detail=(
                        f"head_share@{k} not checked: no figure for {candidate.id if mine is None else who}"
                    ),
                )
            )
        else:
            limit = policy.max_head_share_ratio * theirs
            ok = mine <= limit + 1e-12
            checks.append(
                GateCheck(
                    rule="head_share",
                    passed=ok,
                    detail=(
                        f"head_share@{k} of {candidate.id} is {mine:.4f}, {'within' if ok else 'above'} "
                        f"{policy.max_head_share_ratio:g} x its teacher {teacher.id}'s {theirs:.4f} = {limit:.4f}"
                    ),
                )
            )
    if served is not None and served.id != candidate.id:
        if served.lineage.dataset_id != candidate.lineage.dataset_id:
            checks.append(
                GateCheck(
                    rule="ndcg",
                    passed=None,
                    detail=(
                        f"ndcg@{k} not checked: served model {served.id} was trained on dataset "
                        f"{served.lineage.dataset_id}, {candidate.id} on {candidate.lineage.dataset_id}"
                    ),
                )
            )
        else:
            mine, theirs = _figure(candidate, "ndcg"), _figure(served, "ndcg")
            if mine is None or theirs is None:
                checks.append(
                    GateCheck(
                        rule="ndcg",
                        passed=None,
                        detail=(
                            f"ndcg@{k} not checked: no figure for {candidate.id if mine is None else served.id}"
                        ),
                    )
                )
            else:
                floor = policy.min_ndcg_ratio * theirs
                ok = mine >= floor - 1e-12
                checks.append(
                    GateCheck(
                        rule="ndcg",
                        passed=ok,
                        detail=(
                            f"ndcg@{k} of {candidate.id} is {mine:.4f}, {'at least' if ok else 'below'} "
                            f"{policy.min_ndcg_ratio:g} x the served {served.id}'s {theirs:.4f} = {floor:.4f}"
                        ),
                    )
                )
    return checks


class StagedBundle(BaseModel):
    """A serving bundle built by a publish with "activate": false: stored, not served; an
    experiment arm can serve it. `key_name` names the API key that asked (never the key)."""

    model_id: str
    bundle_dir: str
    staged_at: datetime = Field(default_factory=utcnow)
    key_name: str | None = None
    job_id: str | None = None


class PublishEntry(BaseModel):
    """One line of the publish history: a publish or a rollback that made a model the served
    one. `key_name` names the API key that asked (never the key); None when keys are off."""

    model_id: str
    bundle_dir: str
    published_at: datetime = Field(default_factory=utcnow)
    action: Literal["publish", "rollback"] = "publish"
    key_name: str | None = None
    forced: bool = Field(False, description="the publish gate was overridden with force")
    previous_model_id: str | None = Field(None, description="the model served before this one")
    job_id: str | None = None
    gate: list[GateCheck] = Field(
        default_factory=list, description="the rules checked and their figures"
    )
