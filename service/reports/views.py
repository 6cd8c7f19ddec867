"""One model as the report pages see it (`ModelView`), built from its typed metadata:
training.manifest's ModelManifest and QualityReport, and the registry's ModelInfo.

Offline (`unkd report`) a view comes from a model directory's manifest.json and
report.json; in the API from the registry record, the report and, when its directory
still has one, the manifest. Either way the files are parsed by training.manifest's
readers only. No web framework and no numpy here: the offline pages need neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from service.core.records import ModelInfo
from training.manifest import (
    MANIFEST,
    REPORT,
    HeadShareCap,
    ModelManifest,
    QualityReport,
    TrainingSummary,
    read_manifest,
    read_report,
)


@dataclass(frozen=True)
class ModelView:
    """What the pages need to know about one model; every field is optional but the id
    and the report."""

    id: str
    report: QualityReport
    kind: str | None = None
    method: str | None = None
    model: str | None = None
    dim: int | None = None
    dataset_id: str | None = None  # Lineage.dataset_id
    dataset_name: str | None = None
    dataset_fingerprint: str | None = None
    teacher_id: str | None = None  # Lineage.teacher_id
    parameters: dict[str, Any] = field(default_factory=dict)  # hyper-parameters as JSON
    training: TrainingSummary | None = None  # history, best epoch, timings
    created_at: datetime | None = None
    device: str | None = None
    active: bool = False
    href: str | None = None  # where its report page lives, when pages link to each other
    head_share_cap: HeadShareCap | None = None  # a capped student: met or missed, both figures

    @property
    def has_teacher(self) -> bool:
        return self.report.teacher is not None and bool(self.report.teacher.groups)

    @property
    def title(self) -> str:
        """ "student · unkd · mf dim 10" style summary."""
        parts = [self.kind or "model"]
        if self.method:
            parts.append(self.method)
        if self.model:
            parts.append(f"{self.model} dim {self.dim}" if self.dim else self.model)
        return " · ".join(parts)


def view_from_manifest(
    manifest: ModelManifest | None,
    report: QualityReport,
    *,
    model_id: str | None = None,
    href: str | None = None,
) -> ModelView:
    """A model directory's manifest and report (the offline `unkd report`)."""
    if manifest is None:
        return ModelView(id=model_id or "model", report=report, href=href)
    return ModelView(
        id=model_id or manifest.id or "model",
        report=report,
        kind=manifest.kind,
        method=manifest.method,
        model=manifest.model,
        dim=manifest.dim,
        dataset_id=manifest.lineage.dataset_id,
        dataset_name=manifest.dataset.name,
        dataset_fingerprint=manifest.dataset.fingerprint,
        teacher_id=manifest.lineage.teacher_id,
        parameters=manifest.config.model_dump(mode="json") if manifest.config else {},
        training=manifest.training,
        created_at=manifest.created_at,
        device=manifest.device,
        href=href,
        head_share_cap=manifest.training.head_share_cap if manifest.training else None,
    )


def view_from_record(
    record: ModelInfo,
    report: QualityReport,
    *,
    manifest: ModelManifest | None = None,
    active: bool = False,
    dataset_name: str | None = None,
    href: str | None = None,
) -> ModelView:
    """A registered model (ModelRecord, or ModelOut read back from the API), its report
    and, when its directory still has one, its manifest (training history, fingerprint)."""
    parameters = record.parameters
    if not parameters and manifest is not None and manifest.config is not None:
        parameters = manifest.config.model_dump(mode="json")
    return ModelView(
        id=record.id,
        report=report,
        kind=record.kind,
        method=record.method,
        model=record.model,
        dim=record.dim,
        dataset_id=record.lineage.dataset_id,
        dataset_name=dataset_name or (manifest.dataset.name if manifest else None),
        dataset_fingerprint=manifest.dataset.fingerprint if manifest else None,
        teacher_id=record.lineage.teacher_id,
        parameters=parameters,
        training=manifest.training if manifest else None,
        created_at=record.created_at,
        device=manifest.device if manifest else None,
        active=active,
        href=href,
        head_share_cap=record.head_share_cap,
    )


def load_model_dir(path: Path) -> ModelView:
    """Read a model directory's report.json (required) and manifest.json (optional).

    Raises:
        FileNotFoundError: no report.json in `path`.
        DataError (a ValueError): a file that is not JSON or not valid; names file and field.
    """
    path = Path(path)
    if not (path / REPORT).is_file():
        raise FileNotFoundError(f"{path}: no {REPORT} (not a model directory, or not evaluated)")
    report = read_report(path)
    manifest = read_manifest(path) if (path / MANIFEST).is_file() else None
    return view_from_manifest(manifest, report, model_id=None if manifest else path.name)


class MixedDatasetsError(ValueError):
    """Models to compare were trained on different datasets; names the first one at fault."""

    def __init__(self, model_id: str, dataset: str, expected: str, first_id: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"model {model_id!r} was trained on dataset {dataset!r}, not on {expected!r} "
            f"like {first_id!r}: compare models of one dataset"
        )


def check_same_dataset(views: list[ModelView]) -> None:
    """Refuse a comparison across datasets (by registry id, else by fingerprint)."""
    if not views:
        return
    first = views[0]
    for v in views[1:]:
        for a, b in (
            (first.dataset_id, v.dataset_id),
            (first.dataset_fingerprint, v.dataset_fingerprint),
        ):
            if a is not None and b is not None:
                if a != b:
                    raise MixedDatasetsError(v.id, b, a, first.id)
                break
