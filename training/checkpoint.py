"""A model directory: final embeddings, a self-describing manifest, and its quality report.

    <model_dir>/embeddings.npz   user_emb (n_users, d) float32, item_emb (n_items, d) float32
    <model_dir>/manifest.json    training.manifest.ModelManifest: kind, model, method, dim,
                                 config, dataset, lineage, training history, timings
    <model_dir>/report.json      training.manifest.QualityReport (training.evaluation)

`ModelArtifact.save` is the one place both JSON files are written; `ModelArtifact.load`
reads them through training.manifest's readers, the one place each is parsed.

Every model (MF or LightGCN, teacher or student) scores with a dot product of its final
embeddings, so evaluation, distillation and the serving index share one representation.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.artifacts import atomic_dir, write_json_atomic
from training.errors import DataError, FingerprintMismatchError
from training.manifest import (
    MANIFEST,
    REPORT,
    ModelManifest,
    QualityReport,
    read_manifest,
    read_report,
)

__all__ = ["EMBEDDINGS", "MANIFEST", "REPORT", "ModelArtifact"]

EMBEDDINGS = "embeddings.npz"


@dataclass
class ModelArtifact:
    user_emb: np.ndarray  # (n_users, d) float32
    item_emb: np.ndarray  # (n_items, d) float32
    manifest: ModelManifest
    report: QualityReport | None = None
    path: Path | None = field(default=None, compare=False)

    @property
    def dim(self) -> int:
        return int(self.item_emb.shape[1])

    @property
    def dataset_fingerprint(self) -> str:
        return self.manifest.dataset.fingerprint

    def check_dataset(self, fingerprint: str) -> None:
        """Refuse to use this model with a dataset other than the one it was trained on."""
        if fingerprint != self.dataset_fingerprint:
            raise FingerprintMismatchError(
                f"model {self.path or self.manifest.id} was trained on dataset "
                f"{self.dataset_fingerprint}, not on {fingerprint}"
            )

    def save(self, out_dir: Path) -> Path:
        """Write atomically: the directory appears complete or not at all."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as tmp:
            np.savez(
                tmp / EMBEDDINGS,
                user_emb=np.ascontiguousarray(self.user_emb, dtype=np.float32),
                item_emb=np.ascontiguousarray(self.item_emb, dtype=np.float32),
            )
            write_json_atomic(tmp / MANIFEST, self.manifest.model_dump(mode="json"))
            if self.report is not None:
                write_json_atomic(tmp / REPORT, self.report.model_dump(mode="json"))
        self.path = out_dir
        return out_dir

    @classmethod
    def load(cls, path: Path) -> ModelArtifact:
        """Read a model directory; DataError naming the file when a part is missing or bad."""
        path = Path(path)
        if not (path / MANIFEST).is_file() or not (path / EMBEDDINGS).is_file():
            raise DataError(f"{path}: not a model directory ({MANIFEST} and {EMBEDDINGS} expected)")
        manifest = read_manifest(path)
        report = read_report(path) if (path / REPORT).is_file() else None
        try:
            with np.load(path / EMBEDDINGS, allow_pickle=False) as z:
                user_emb, item_emb = z["user_emb"], z["item_emb"]
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
            # A truncated or corrupted file must fail with its name, not a bare zip error.
            raise DataError(f"{path / EMBEDDINGS}: unreadable model embeddings ({exc})") from exc
        return cls(user_emb=user_emb, item_emb=item_emb, manifest=manifest, report=report, path=path)
