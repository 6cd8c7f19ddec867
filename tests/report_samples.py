"""Quality reports and model directories for the report-page tests, without training.

The reports have the shape of training.evaluation's (protocol, metrics at K in 10/20/50,
head-first group rows, ci; for students teacher/deltas/bias_amplification/retention via
training.report.attach_teacher's layout) with seeded made-up numbers.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from service.core.registry import DatasetRecord, ModelRecord, Registry
from training.config import DistillConfig, TeacherConfig
from training.manifest import (
    MANIFEST,
    REPORT,
    DatasetInfo,
    EpochRecord,
    Lineage,
    ModelManifest,
    QualityReport,
    TeacherInfo,
    TrainingSummary,
    build_manifest,
)

KS = (10, 20, 50)
NAMES = (
    "recall",
    "ndcg",
    "precision",
    "hit",
    "mrecall",
    "mndcg",
    "ips_recall",
    "ips_ndcg",
    "arp",
    "narp",
    "aplt",
    "head_share",
    "coverage",
    "gini",
    "pop_rsp",
    "pop_reo",
    "dtr",
    "novelty",
)
GROUP_ITEMS = (24, 43, 70, 163)


def sample_report(seed: int, *, n_groups: int = 4) -> dict[str, Any]:
    """A teacher-style report (no "teacher" part) with seeded values."""
    rng = random.Random(seed)
    metrics: dict[str, float | None] = {}
    for k in KS:
        for name in NAMES:
            scale = 100.0 if name == "arp" else 1.0
            metrics[f"{name}@{k}"] = round(rng.uniform(0.05, 0.6) * scale, 6)
    metrics["dtr@50"] = None  # undefined figures are null in real reports
    groups = []
    for g in range(n_groups):
        row: dict[str, Any] = {
            "group": g,
            "items": GROUP_ITEMS[g % len(GROUP_ITEMS)] * (1 + g // 4),
            "catalog_share": round(0.1 + 0.2 * g / n_groups, 4),
            "train_share": 1 / n_groups,
            "test_share": round(1 / n_groups + rng.uniform(-0.02, 0.02), 6),
            "users": 150 - 10 * g,
        }
        for k in KS:
            row[f"exposure_share@{k}"] = round(rng.uniform(0.05, 0.5), 6)
        for k in KS:
            row[f"recall@{k}"] = round(rng.uniform(0.02, 0.4), 6)
        for k in KS:
            row[f"ndcg@{k}"] = round(rng.uniform(0.02, 0.3), 6)
        groups.append(row)
    return {
        "protocol": {
            "split": "test",
            "ks": list(KS),
            "groups": n_groups,
            "ips_gamma": 0.5,
            "head_mass": 0.8,
            "excluded": "train+valid",
            "users": "users with >= 1 positive in test",
            "tie_break": "lower item index first",
            "ci": "bootstrap, K=20",
            "definitions": {"recall": "|L∩T|/|T|"},
        },
        "users_evaluated": 200,
        "metrics": metrics,
        "groups": groups,
        "ci": {"recall@20": [0.1, 0.2], "ndcg@20": [0.05, 0.15]},
    }


def student_report(seed: int, teacher: dict[str, Any]) -> dict[str, Any]:
    """A student report with its teacher attached (the layout of attach_teacher)."""
    out = sample_report(seed, n_groups=len(teacher["groups"]))
    sm, tm = out["metrics"], teacher["metrics"]
    out["teacher"] = {"metrics": dict(tm), "groups": [dict(g) for g in teacher["groups"]]}
    out["deltas"] = {n: None if sm[n] is None or tm.get(n) is None else sm[n] - tm[n] for n in sm}
    out["bias_amplification"] = {f"arp@{k}": sm[f"arp@{k}"] / tm[f"arp@{k}"] - 1 for k in KS}
    out["retention"] = {f"ndcg@{k}": sm[f"ndcg@{k}"] / tm[f"ndcg@{k}"] for k in KS} | {
        "groups": [{"group": g["group"], "recall@20": 1.0} for g in out["groups"]]
    }
    return out


def sample_manifest(
    model_id: str,
    *,
    kind: str,
    method: str | None,
    dim: int,
    epochs: int = 6,
    dataset: str = "synthetic",
    fingerprint: str = "f" * 32,
    teacher_id: str | None = None,
) -> ModelManifest:
    """A manifest with a training history of `epochs` epochs (loss falls, NDCG rises)."""
    history = [
        EpochRecord.model_validate(
            {
                "epoch": e,
                "loss": round(0.7 - 0.05 * e, 6),
                "seconds": 0.1,
                "valid_recall@20": round(0.05 + 0.02 * e, 6),
                "valid_ndcg@20": round(0.03 + 0.015 * e, 6),
            }
        )
        for e in range(1, epochs + 1)
    ]
    config = (
        TeacherConfig(model="mf", dim=dim, epochs=epochs, lr=0.01)
        if kind == "teacher"
        else DistillConfig(method=method or "none", dim=dim, epochs=epochs, lambda_kd=1.0)
    )
    training = TrainingSummary(
        best_epoch=epochs - 1,
        epochs_run=epochs,
        seconds=1.5,
        seconds_per_epoch=0.25,
        history=history,
    )
    return build_manifest(
        config,
        model_id=model_id,
        dataset=DatasetInfo(name=dataset, fingerprint=fingerprint),
        lineage=Lineage(teacher_id=teacher_id),
        training=training,
        device="cpu",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        teacher=TeacherInfo(model="mf", dim=64) if teacher_id else None,
    )


def write_model_dir(path: Path, report: dict[str, Any], manifest: ModelManifest | None) -> Path:
    """report.json (and manifest.json) in `path`, as ModelArtifact.save writes them; no
    embeddings: pages never read them. The report is validated first (fixtures stay real)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / REPORT).write_text(
        json.dumps(QualityReport.model_validate(report).model_dump(mode="json"))
    )
    if manifest is not None:
        (path / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json")))
    return path


def sample_family(
    root: Path,
    *,
    methods: tuple[str, ...] = ("unkd", "rd", "none"),
    fingerprint: str = "f" * 32,
    dataset: str = "synthetic",
) -> dict[str, Path]:
    """A teacher and one student per method under `root`: {model id: model dir}."""
    teacher = sample_report(0)
    dirs = {
        "teacher-1": write_model_dir(
            root / "teacher-1",
            teacher,
            sample_manifest(
                "teacher-1",
                kind="teacher",
                method=None,
                dim=64,
                fingerprint=fingerprint,
                dataset=dataset,
            ),
        )
    }
    for i, method in enumerate(methods, start=1):
        mid = f"student-{method}-1"
        dirs[mid] = write_model_dir(
            root / mid,
            student_report(i, teacher),
            sample_manifest(
                mid,
                kind="student",
                method=method,
                dim=10,
                teacher_id="teacher-1",
                fingerprint=fingerprint,
                dataset=dataset,
            ),
        )
    return dirs


def _headline(model_dir: Path) -> dict[str, float]:
    metrics = json.loads((model_dir / REPORT).read_text())["metrics"]
    return {k: metrics[k] for k in ("recall@20", "ndcg@20", "head_share@20", "arp@20")}


def register_family(
    registry: Registry,
    root: Path,
    dataset_id: str,
    *,
    name: str = "synthetic",
    methods: tuple[str, ...] = ("unkd", "rd", "none"),
    suffix: str = "",
) -> list[str]:
    """A dataset, a teacher and its students in the registry; returns the model ids."""
    registry.add_dataset(
        DatasetRecord(
            id=dataset_id, name=name, source="synthetic", fingerprint=dataset_id, path="/nowhere"
        )
    )
    ids = []
    for mid, path in sample_family(
        root, methods=methods, fingerprint=dataset_id, dataset=name
    ).items():
        kind = "teacher" if mid.startswith("teacher") else "student"
        method = None if kind == "teacher" else mid.split("-")[1]
        registry.add_model(
            ModelRecord(
                id=mid + suffix,
                kind=kind,
                method=method,
                model="mf",
                dim=64 if kind == "teacher" else 10,
                parameters={"dim": 10},
                path=str(path),
                metrics=_headline(path),
                lineage=Lineage(
                    dataset_id=dataset_id,
                    teacher_id=None if kind == "teacher" else "teacher-1" + suffix,
                ),
            )
        )
        ids.append(mid + suffix)
    return ids
