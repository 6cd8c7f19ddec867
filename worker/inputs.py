"""A training job's inputs, resolved in one place: its dataset, its teacher, its memory budget.

Every path that trains reads its inputs here (a plain job, a tuning study's trials, the
shards of a job that fans out), so each checks the same budget with the same arguments:
`mapped=` says whether a distill job's candidate lists stay on disk, by the rule the API's
check at submission uses too (DistillPayload.lists_on_disk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.core.artifacts import ArtifactStore
from service.core.config import Settings
from service.core.payloads import DistillPayload, TeacherPayload
from service.core.registry import ModelRecord, Registry
from training.budget import check_distill, check_teacher
from training.config import DistillConfig, TeacherConfig
from training.dataset import Dataset


def load_dataset(registry: Registry, store: ArtifactStore, dataset_id: str) -> Dataset:
    """A registered dataset, read through the artifact store (a store URL: fetched, verified)."""
    record = registry.get_dataset(dataset_id)
    return Dataset.load(store.resolve(record.path))


def budget_bytes(settings: Settings) -> int:
    return settings.max_job_memory_mb * 2**20


@dataclass(frozen=True)
class TeacherInputs:
    """What training a teacher reads."""

    dataset_id: str
    dataset: Dataset
    config: TeacherConfig


@dataclass(frozen=True)
class DistillInputs:
    """What distilling a student reads: the teacher's record and directory (on this host)."""

    dataset_id: str
    dataset: Dataset
    config: DistillConfig
    teacher: ModelRecord
    teacher_dir: Path


def teacher_inputs(
    payload: TeacherPayload, settings: Settings, registry: Registry, store: ArtifactStore
) -> TeacherInputs:
    """The dataset, checked against this worker's memory budget (MemoryBudgetError names
    the field to lower)."""
    dataset = load_dataset(registry, store, payload.dataset_id)
    check_teacher(dataset.n_users, dataset.n_items, payload.config, budget_bytes(settings))
    return TeacherInputs(payload.dataset_id, dataset, payload.config)


def distill_teacher(payload: DistillPayload, registry: Registry) -> ModelRecord:
    """The registered teacher a distill job names (NotFoundError naming teacher_id)."""
    return registry.get_model(payload.teacher_id, field="teacher_id")


def distill_inputs(
    payload: DistillPayload,
    settings: Settings,
    registry: Registry,
    store: ArtifactStore,
    *,
    dataset: Dataset | None = None,
) -> DistillInputs:
    """The teacher and the dataset of its lineage (`dataset`: already read by the caller),
    checked against this worker's memory budget with the lists' placement (`mapped`)."""
    teacher = distill_teacher(payload, registry)
    dataset_id = str(teacher.lineage.dataset_id)
    if dataset is None:
        dataset = load_dataset(registry, store, dataset_id)
    cfg = payload.config
    check_distill(
        dataset.n_users,
        dataset.n_items,
        cfg,
        teacher.dim,
        budget_bytes(settings),
        teacher_model=teacher.model,
        mapped=payload.lists_on_disk(dataset.n_users, settings),
    )
    return DistillInputs(dataset_id, dataset, cfg, teacher, store.resolve(teacher.path))
