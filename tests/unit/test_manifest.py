"""Typed model metadata: manifest.json and report.json round trip through ModelArtifact,
bad files fail naming the file and the field, the real pipelines write valid metadata,
and the registry record is built from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.core.records import ModelRecord
from tests.report_samples import sample_manifest, sample_report, student_report
from training.checkpoint import ModelArtifact
from training.config import DistillConfig, TeacherConfig
from training.dataset import Dataset
from training.errors import DataError
from training.manifest import (
    Lineage,
    ModelManifest,
    QualityReport,
    TeacherInfo,
    read_manifest,
    read_report,
)
from training.pipelines import distill_student, evaluate_model, train_teacher

CPU = torch.device("cpu")


def _artifact(
    manifest: ModelManifest, report: QualityReport | None, n_users: int = 5, n_items: int = 7
) -> ModelArtifact:
    rng = np.random.default_rng(0)
    return ModelArtifact(
        rng.random((n_users, manifest.dim), dtype=np.float32),
        rng.random((n_items, manifest.dim), dtype=np.float32),
        manifest,
        report,
    )


@pytest.fixture(scope="module")
def family(
    tiny_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelArtifact, ModelArtifact]:
    """A teacher and an UnKD student trained by the real pipelines (a few epochs)."""
    root = tmp_path_factory.mktemp("models")
    teacher = train_teacher(
        tiny_dataset,
        TeacherConfig(model="mf", dim=8, epochs=3, batch_size=512),
        root / "t",
        device=CPU,
        model_id="teacher-1",
        dataset_id="ds-1",
    )
    cfg = DistillConfig(
        method="unkd", dim=4, epochs=2, batch_size=512, unkd={"pairs_per_user": 4, "top_l": 20}
    )  # type: ignore[arg-type]
    student = distill_student(
        tiny_dataset,
        teacher.path or root / "t",
        cfg,
        root / "s",
        device=CPU,
        model_id="student-1",
        dataset_id="ds-1",
    )
    return teacher, student


def test_round_trip_gives_equal_objects(tmp_path: Path) -> None:
    manifest = sample_manifest(
        "student-1", kind="student", method="rd", dim=4, teacher_id="teacher-1"
    )
    report = QualityReport.model_validate(student_report(1, sample_report(0)))
    saved = _artifact(manifest, report)
    loaded = ModelArtifact.load(saved.save(tmp_path / "m"))
    assert loaded.manifest == manifest and loaded.report == report
    np.testing.assert_array_equal(loaded.item_emb, saved.item_emb)
    assert read_manifest(tmp_path / "m") == manifest and read_report(tmp_path / "m") == report
    # Written once more from what was read: byte for byte the same files.
    again = ModelArtifact.load(loaded.save(tmp_path / "m2"))
    for name in ("manifest.json", "report.json"):
        assert (tmp_path / "m" / name).read_text() == (tmp_path / "m2" / name).read_text()
    assert again.manifest == manifest


def test_json_keeps_its_shape(tmp_path: Path) -> None:
    """Field names as before typing; a teacher's files carry no student-only parts."""
    teacher = _artifact(
        sample_manifest("t", kind="teacher", method=None, dim=4),
        QualityReport.model_validate(sample_report(0)),
    )
    teacher.save(tmp_path / "t")
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert list(m) == [
        "id",
        "kind",
        "model",
        "method",
        "dim",
        "config",
        "dataset",
        "lineage",
        "created_at",
        "device",
        "training",
    ]
    assert m["method"] is None and m["lineage"] == {"dataset_id": None, "teacher_id": None}
    assert m["created_at"] == "2026-01-02T03:04:05Z"
    assert m["training"]["history"][0] == {
        "epoch": 1,
        "loss": 0.65,
        "seconds": 0.1,
        "valid_recall@20": 0.07,
        "valid_ndcg@20": 0.045,
    }
    r = json.loads((tmp_path / "t" / "report.json").read_text())
    assert r == sample_report(0)


def test_evaluation_keys_we_do_not_know_pass_through(tmp_path: Path) -> None:
    raw = sample_report(0)
    raw["protocol"]["sampler"] = "full"
    raw["calibration"] = {"ece@20": 0.1}
    report = QualityReport.model_validate(raw)
    _artifact(sample_manifest("t", kind="teacher", method=None, dim=4), report).save(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "report.json").read_text()) == raw


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.update(dim="eight"), "'dim'"),
        (lambda m: m["training"]["history"][2].update(loss="low"), "'training.history.2.loss'"),
        (lambda m: m.update(kind="grandmaster"), "'kind'"),
        (lambda m: m["lineage"].update(teacher="t1"), "'lineage.teacher'"),  # unknown key
        (lambda m: m.pop("dataset"), "'dataset'"),
        (lambda m: m.update(method="unkd"), "a teacher has no distillation method"),
    ],
)
def test_invalid_manifest_names_the_file_and_the_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], field: str
) -> None:
    _artifact(sample_manifest("t", kind="teacher", method=None, dim=4), None).save(tmp_path / "t")
    path = tmp_path / "t" / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        ModelArtifact.load(tmp_path / "t")
    assert str(err.value).startswith(f"{path}: not a valid ModelManifest: ") and field in str(
        err.value
    )


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    _artifact(
        sample_manifest("t", kind="teacher", method=None, dim=4),
        QualityReport.model_validate(sample_report(0)),
    ).save(tmp_path / "t")
    (tmp_path / "t" / "report.json").write_text('{"protocol": ')
    with pytest.raises(DataError, match=r"report\.json: not valid JSON"):
        ModelArtifact.load(tmp_path / "t")
    (tmp_path / "t" / "report.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DataError, match=r"report\.json: not valid JSON"):
        read_report(tmp_path / "t")
    (tmp_path / "t" / "report.json").write_text(
        json.dumps({**sample_report(0), "metrics": {"recall": 0.1}})
    )
    with pytest.raises(
        DataError,
        match=r"not a valid QualityReport: field 'metrics\.recall\.\[key\]': String should match",
    ):
        read_report(tmp_path / "t")


def test_manifests_written_before_lineage_was_unified_still_read(tmp_path: Path) -> None:
    data = sample_manifest("s", kind="student", method="unkd", dim=4, teacher_id="t1").model_dump(
        mode="json"
    )
    data.pop("teacher")
    data["lineage"] = {
        "dataset": "f" * 32,
        "teacher": {"id": "t1", "model": "mf", "dim": 64, "path": "/m/t1"},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    m = read_manifest(tmp_path)
    assert m.lineage == Lineage(dataset_id=None, teacher_id="t1")
    assert m.teacher == TeacherInfo(model="mf", dim=64, path="/m/t1")
    data["lineage"] = {"dataset": "f" * 32, "teacher": None}
    data.update(kind="teacher", method=None, config=None)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path).lineage == Lineage() and read_manifest(tmp_path).teacher is None


def test_pipeline_manifests_validate(
    family: tuple[ModelArtifact, ModelArtifact], tiny_dataset: Dataset
) -> None:
    teacher, student = family
    for art in family:
        assert art.path is not None
        on_disk = ModelManifest.model_validate(json.loads((art.path / "manifest.json").read_text()))
        assert on_disk == art.manifest == ModelArtifact.load(art.path).manifest
        assert (
            QualityReport.model_validate(json.loads((art.path / "report.json").read_text()))
            == art.report
        )
        assert art.manifest.dataset.fingerprint == tiny_dataset.fingerprint
        assert art.manifest.dataset.name == "tiny" and art.manifest.created_at is not None
        assert art.manifest.training is not None and art.manifest.training.epochs_run >= 1
    tm, sm = teacher.manifest, student.manifest
    assert (tm.id, tm.kind, tm.model, tm.method, tm.dim) == ("teacher-1", "teacher", "mf", None, 8)
    assert tm.lineage == Lineage(dataset_id="ds-1") and tm.teacher is None
    assert tm.config == TeacherConfig(model="mf", dim=8, epochs=3, batch_size=512)
    assert (sm.id, sm.kind, sm.model, sm.method, sm.dim) == (
        "student-1",
        "student",
        "mf",
        "unkd",
        4,
    )
    assert sm.lineage == Lineage(dataset_id="ds-1", teacher_id="teacher-1")
    assert sm.teacher == TeacherInfo(model="mf", dim=8, path=str(teacher.path))
    assert (
        sm.training is not None
        and sm.training.candidate_bytes
        and sm.training.candidates_seconds is not None
    )
    assert (
        teacher.report is not None
        and teacher.report.teacher is None
        and teacher.report.deltas is None
    )
    assert student.report is not None and student.report.teacher is not None
    assert student.report.teacher.metrics == teacher.report.metrics


def test_evaluate_model_finds_the_teacher_through_the_manifest(
    family: tuple[ModelArtifact, ModelArtifact], tiny_dataset: Dataset
) -> None:
    teacher, student = family
    assert student.path is not None and student.report is not None
    report = evaluate_model(tiny_dataset, student.path)
    assert report.teacher is not None and report.metrics == pytest.approx(student.report.metrics)


def test_registry_record_is_built_from_the_metadata(
    family: tuple[ModelArtifact, ModelArtifact],
) -> None:
    _, student = family
    lineage = Lineage(dataset_id="ds-1", teacher_id="teacher-1")
    record = ModelRecord.of(
        student.manifest,
        student.report,
        model_id="student-1",
        path="/m/s",
        lineage=lineage,
        job_id="j1",
    )
    assert (record.kind, record.method, record.model, record.dim) == ("student", "unkd", "mf", 4)
    assert record.lineage == student.manifest.lineage == lineage
    assert record.parameters == DistillConfig.model_validate(record.parameters).model_dump(
        mode="json"
    )
    assert record.parameters["method"] == "unkd" and record.job_id == "j1"
    assert student.report is not None
    assert record.metrics and all(student.report.metrics[k] == v for k, v in record.metrics.items())
    assert set(record.metrics) >= {"recall@20", "ndcg@20", "overlap@20"}
    assert ModelRecord.model_validate_json(record.model_dump_json()) == record
