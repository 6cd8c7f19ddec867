"""Typed model metadata: a model directory's manifest.json (`ModelManifest`) and
report.json (`QualityReport`), with the one function that reads each file.

    ModelManifest   what a model is and how it was built: kind, architecture, method, dim,
                    hyper-parameters, dataset, `Lineage`, training history and timings
    QualityReport   what training.evaluation measured on the test split (plus, for a
                    student, its teacher's figures, the deltas and retention)

`training.checkpoint.ModelArtifact.save` is the only writer of both files, and
`read_manifest` / `read_report` here the only readers (ModelArtifact.load, the report
pages and the API use them). The registry's model record, the API's responses and the
report pages are built from these objects. Figures whose keys are data ("recall@20",
"valid_ndcg@20") stay flat in the JSON, as training.evaluation writes them, and are
typed as `float | None` under a checked "<name>@<K>" key. Imports only pydantic and the
standard library (no numpy), so the report pages can use it without the training stack.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    model_validator,
)

from training.artifacts import read_json
from training.config import DistillConfig, MethodName, TeacherConfig, TeacherModelName
from training.errors import DataError

MANIFEST = "manifest.json"
REPORT = "report.json"

ModelKind = Literal["teacher", "student"]
MetricKey = Annotated[str, StringConstraints(pattern=r"^[a-z_]+@\d+$")]  # e.g. "recall@20"
Figure = float | None  # null where undefined (a zero denominator, NaN)


def _absent(value: object) -> bool:
    """Optional parts that are left out of the JSON, not written as null (as before typing)."""
    return value is None


class _Closed(BaseModel):
    """Metadata this module builds: an unknown key is a mistake."""

    model_config = ConfigDict(extra="forbid")


class _Figures(BaseModel):
    """Declared fields plus figures keyed "<name>@<K>", kept flat as in the JSON."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[MetricKey, Figure] = Field(init=False)

    @property
    def figures(self) -> dict[str, Figure]:
        """The keyed figures, e.g. {"recall@20": 0.31, "ndcg@20": 0.18}."""
        return dict(self.__pydantic_extra__ or {})

    def value(self, key: str) -> Figure:
        """A declared numeric field or a keyed figure by name; None when absent."""
        if key in type(self).model_fields:
            v = getattr(self, key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
        return (self.__pydantic_extra__ or {}).get(key)


# -- the manifest ------------------------------------------------------------------------


class DatasetInfo(_Closed):
    """The dataset a model was trained on, as training.dataset.Dataset describes it."""

    name: str | None = None
    fingerprint: str = Field(min_length=1, description="content hash; checked before reuse")


class Lineage(_Closed):
    """Where a model came from, by id. One meaning in a manifest, a registry record
    (service.core.records.ModelRecord) and the API's model responses.

    dataset_id: the registry id of the dataset it was trained on; None for a model trained
        offline (`unkd train`), where the manifest's dataset.fingerprint identifies it.
    teacher_id: the model id of the teacher it was distilled from; None for a teacher.
    """

    dataset_id: str | None = None
    teacher_id: str | None = None


class TeacherInfo(_Closed):
    """A student's teacher as it was at distillation time (its id is in `Lineage`)."""

    model: TeacherModelName
    dim: int = Field(ge=1)
    path: str | None = Field(None, description="its model directory, to compare against")


class EpochRecord(_Figures):
    """One epoch of training; the keyed figures are validation metrics ("valid_ndcg@20")."""

    epoch: int = Field(ge=1)
    loss: float
    seconds: float = Field(ge=0)


class HeadShareCap(_Closed):
    """A student's head share@20 against its teacher's (the cap), as kept: both over the
    top-20 lists of every user, training items excluded (training.calibration.exposure: a
    property of the lists, no held-out label is read). The job's cap, its status and the
    publish gate compare these two figures."""

    teacher: float = Field(ge=0, le=1, description="the teacher's head share@20: the cap")
    student: float = Field(ge=0, le=1, description="the kept student's head share@20")
    met: bool = Field(description="student <= teacher")
    rule: Literal["shift", "select"] = Field(
        description="how the job met it (DistillConfig.cap_rule)"
    )
    unshifted: float | None = Field(
        None, ge=0, le=1, description="shift: the student's head share@20 before the shifts"
    )
    users_shifted: float = Field(
        0.0, ge=0, le=1, description="shift: share of users whose head scores were lowered"
    )
    shift_column: int | None = Field(
        None,
        ge=0,
        description="shift: the embedding column that holds the shifts (users: their shift; "
        "items: -1 in the head group, 0 elsewhere); None when no user was shifted",
    )
    new_user_shift: float = Field(
        0.0, ge=0, description="shift: the shift a folded-in user gets (the mean over users)"
    )

    def summary(self) -> str:
        """One line for the CLI and the report page: met or missed, with both figures."""
        if self.met:
            text = f"head-share cap met: {self.student:.4f} <= teacher's {self.teacher:.4f}"
        else:
            text = f"head-share cap MISSED: {self.student:.4f} > teacher's {self.teacher:.4f}"
        text += " (head share@20 over every user's list"
        if self.rule == "shift" and self.unshifted is not None:
            text += (
                f"; {self.unshifted:.4f} before the head shifts, "
                f"{100 * self.users_shifted:.0f} % of users shifted"
            )
        return text + ")"


class TrainingSummary(_Closed):
    """How the embeddings were fitted: the kept (best) epoch, timings and the history."""

    best_epoch: int = Field(ge=0, description="the epoch whose embeddings were kept")
    epochs_run: int = Field(ge=0)
    seconds: float = Field(ge=0, description="wall time of the whole fit")
    seconds_per_epoch: float = Field(ge=0)
    history: list[EpochRecord] = Field(default_factory=list)
    backend: str | None = Field(
        None,
        exclude_if=_absent,
        description="what fitted it, when not our trainer: implicit.cpu, "
        "implicit.gpu (als), torch (ease)",
    )
    # Students only: ranking the teacher's candidates before the first epoch.
    candidates_seconds: float | None = Field(None, ge=0, exclude_if=_absent)
    candidate_bytes: int | None = Field(None, ge=0, exclude_if=_absent)
    # Students under a head-share cap: the one measure the job, its status and the publish
    # gate share (validation head share@20 of the kept model against its teacher's).
    head_share_cap: HeadShareCap | None = Field(None, exclude_if=_absent)


class WeightsInfo(_Closed):
    """What a model without embeddings (an EASE teacher) keeps instead of embeddings.npz."""

    file: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]+\.npz$", description="a file of the model directory"
    )
    arrays: dict[str, str] = Field(description="array name -> shape, dtype and meaning")
    scoring: str = Field(description="how a user's scores over all items are computed")


NO_EMBEDDINGS = "EASE teachers have no embeddings to serve: distil a student"
EASE_WEIGHTS = WeightsInfo(
    file="ease.npz",
    arrays={"B": "(n_items, n_items) float32 item-item weights, zero diagonal"},
    scoring="score(u) = X_u @ B, X_u = u's training interactions (binary) of the model's dataset",
)


class ModelManifest(_Closed):
    """manifest.json: what a model is and how it was built.

    training.pipelines fills every field. A model directory made from embeddings trained
    elsewhere (benchmarks, fixtures) needs only kind, model, dim and dataset.fingerprint.
    """

    id: str | None = Field(None, description="model id (the registry's in the service)")
    kind: ModelKind
    model: TeacherModelName = Field(
        description="teachers: mf, lightgcn, als (embeddings) or ease (weights); students: mf or lightgcn"
    )
    method: MethodName | None = Field(None, description="distillation method; None for a teacher")
    dim: int = Field(ge=1, description="embedding size; for ease, n_items (the length of B's rows)")
    weights: WeightsInfo | None = Field(
        None, exclude_if=_absent, description="a model without embeddings: what it keeps instead"
    )
    config: TeacherConfig | DistillConfig | None = Field(None, description="hyper-parameters")
    dataset: DatasetInfo
    lineage: Lineage = Field(default_factory=Lineage)
    teacher: TeacherInfo | None = Field(None, exclude_if=_absent)
    created_at: datetime | None = None
    device: str | None = None
    training: TrainingSummary | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_lineage(cls, data: Any) -> Any:
        """Read manifests written before Lineage was one structure: "lineage" was
        {"dataset": <fingerprint>, "teacher": {"id", "model", "dim", "path"} | null}."""
        if not isinstance(data, dict):
            return data
        old = data.get("lineage")
        if not isinstance(old, dict) or "dataset" not in old:
            return data
        teacher = old.get("teacher")
        data = {**data, "lineage": {"dataset_id": None, "teacher_id": None}}
        if isinstance(teacher, dict):
            data["lineage"]["teacher_id"] = teacher.get("id")
            data.setdefault("teacher", {k: teacher.get(k) for k in ("model", "dim", "path")})
        return data

    @model_validator(mode="after")
    def _teacher_has_no_method(self) -> ModelManifest:
        if self.kind == "teacher" and (self.method is not None or self.teacher is not None):
            raise ValueError("a teacher has no distillation method and no teacher")
        if self.kind == "student" and self.model not in ("mf", "lightgcn"):
            raise ValueError(f"model={self.model!r}: a student is embeddings (mf or lightgcn)")
        if (self.model == "ease") != (self.weights is not None):
            raise ValueError("weights describe an ease model's file, and only an ease model's")
        return self

    @property
    def has_embeddings(self) -> bool:
        """False for a model that keeps other weights (EASE): nothing to serve from it."""
        return self.weights is None


def build_manifest(
    cfg: TeacherConfig | DistillConfig,
    *,
    model_id: str,
    dataset: DatasetInfo,
    lineage: Lineage,
    training: TrainingSummary,
    device: str,
    created_at: datetime,
    teacher: TeacherInfo | None = None,
    n_items: int | None = None,
) -> ModelManifest:
    """The manifest of a model trained with `cfg` (teacher or student alike): kind,
    architecture, method and dim follow from the config; an ease teacher's dim is n_items
    and its manifest names its weights file."""
    kind: ModelKind
    model: TeacherModelName
    method: MethodName | None
    if isinstance(cfg, DistillConfig):
        kind, model, method = "student", cfg.student_model, cfg.method
    else:
        kind, model, method = "teacher", cfg.model, None
    ease = model == "ease"
    if ease and n_items is None:
        raise ValueError("an ease teacher's manifest needs n_items (its dim)")
    return ModelManifest(
        id=model_id,
        kind=kind,
        model=model,
        method=method,
        dim=n_items if ease and n_items else cfg.dim,
        weights=EASE_WEIGHTS if ease else None,
        config=cfg,
        dataset=dataset,
        lineage=lineage,
        teacher=teacher,
        created_at=created_at,
        device=device,
        training=training,
    )


# -- the quality report ------------------------------------------------------------------


class _Open(BaseModel):
    """Parts written by training.evaluation: keys it adds later pass through unchanged."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)


class EvalProtocol(_Open):
    """How the report was measured (training.evaluation, METRICS.md)."""

    split: Literal["valid", "test"]
    ks: list[int] = Field(min_length=1, description="list lengths K, ascending")
    groups: int = Field(ge=1, description="popularity groups, 0 = head")
    ips_gamma: float
    head_mass: float
    excluded: str = Field(description="items no list may hold, e.g. train+valid")
    users: str = Field(description="who is evaluated")
    tie_break: str
    ci: str = Field(description="how the confidence intervals were drawn")
    definitions: dict[str, str] = Field(description="metric name -> its exact definition")


class GroupRow(_Figures):
    """One popularity group (0 = head): its size and shares, then its figures at each K
    ("exposure_share@K", "recall@K", "ndcg@K", and "overlap@K" against a teacher)."""

    group: int = Field(ge=0)
    items: int = Field(ge=0)
    catalog_share: Figure
    train_share: Figure
    test_share: Figure
    users: int = Field(ge=0, description="evaluated users with a test positive in the group")


class TeacherFigures(_Closed):
    """The teacher's own metrics and group rows, attached to its student's report."""

    metrics: dict[MetricKey, Figure]
    groups: list[GroupRow]


class RetentionRow(_Figures):
    """Student / teacher ratios of one group ("recall@K", "ndcg@K")."""

    group: int = Field(ge=0)


class Retention(_Figures):
    """Student / teacher ratios ("ndcg@K", "mrecall@K", "mndcg@K") and per group."""

    groups: list[RetentionRow] = Field(default_factory=list)


TrialState = Literal["complete", "pruned", "fail", "running", "waiting"]


class TrialRecord(_Closed):
    """One trial of a tuning study (training.tuning): the configuration it tried and what it
    measured on the validation split."""

    number: int = Field(ge=0, description="Optuna's trial number, in order of creation")
    state: TrialState
    params: dict[str, float | int | str | bool] = Field(
        default_factory=dict, description="the tuned fields, dotted for nested options (unkd.mu)"
    )
    valid_ndcg: Figure = Field(
        None, description="validation NDCG@20 of its kept epoch (pruned: the last measured)"
    )
    valid_head_share: Figure = Field(None, description="validation head-group share@20")
    feasible: bool | None = Field(None, description="head share within the constraint; None: none")
    epochs: int | None = Field(None, ge=0, description="epochs run (the last reported when pruned)")
    seconds: float | None = Field(None, ge=0)
    note: str | None = Field(None, exclude_if=_absent, description="why it failed or was retried")


class TuningSummary(_Closed):
    """How a tuned model's configuration was chosen: every trial, on the validation split only."""

    objective: str = Field(description='what was maximised, e.g. "valid ndcg@20"')
    constraint: str | None = Field(None, description="what a kept trial had to satisfy")
    teacher_valid_head_share: Figure = Field(None, exclude_if=_absent)
    trials_requested: int = Field(ge=1)
    best_trial: int = Field(ge=0, description="number of the trial whose model this is")
    best_feasible: bool = Field(
        True, description="False: no trial met the constraint; the least violating was kept"
    )
    sampler: str
    pruner: str | None = None
    seconds: float | None = Field(None, ge=0, description="wall time of the whole study")
    trials: list[TrialRecord] = Field(default_factory=list)


class QualityReport(_Open):
    """report.json: the quality report of one model (training.evaluation,
    training.report.attach_teacher). teacher, deltas, bias_amplification and retention
    exist for students only; tuning for models chosen by a tuning study (training.tuning)."""

    protocol: EvalProtocol
    users_evaluated: int = Field(ge=0)
    metrics: dict[MetricKey, Figure]
    groups: list[GroupRow]
    ci: dict[MetricKey, tuple[Figure, Figure]] = Field(
        default_factory=dict, description="95% bootstrap interval [low, high]"
    )
    teacher: TeacherFigures | None = Field(None, exclude_if=_absent)
    deltas: dict[MetricKey, Figure] | None = Field(
        None, exclude_if=_absent, description="student − teacher per metric"
    )
    bias_amplification: dict[MetricKey, Figure] | None = Field(
        None, exclude_if=_absent, description="ARP ratio − 1, Δ head share, ΔGini"
    )
    retention: Retention | None = Field(None, exclude_if=_absent)
    tuning: TuningSummary | None = Field(
        None, exclude_if=_absent, description="the trials that chose this model's configuration"
    )

    @property
    def main_k(self) -> int:
        """The K pages and tables lead with: 20 when measured, else the largest K."""
        return 20 if 20 in self.protocol.ks else max(self.protocol.ks)


# -- reading (the one place each file is parsed) -----------------------------------------

_M = TypeVar("_M", bound=BaseModel)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"field {where!r}: {err['msg']} (got {err.get('input')!r:.80})")
    return "; ".join(parts)


def _read(model: type[_M], path: Path) -> _M:
    try:
        data = read_json(path)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DataError(f"{path}: not a valid {model.__name__}: {_describe(exc)}") from exc


def read_manifest(model_dir: Path) -> ModelManifest:
    """Parse `model_dir`/manifest.json.

    Raises:
        FileNotFoundError: no manifest.json there.
        DataError: not JSON, or not a valid manifest; the message names the file and field.
    """
    return _read(ModelManifest, Path(model_dir) / MANIFEST)


def read_report(model_dir: Path) -> QualityReport:
    """Parse `model_dir`/report.json.

    Raises:
        FileNotFoundError: no report.json there.
        DataError: not JSON, or not a valid report; the message names the file and field.
    """
    return _read(QualityReport, Path(model_dir) / REPORT)
