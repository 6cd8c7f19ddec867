"""A model directory: final weights, a self-describing manifest, and its quality report.

    <model_dir>/embeddings.npz   user_emb (n_users, d) float32, item_emb (n_items, d) float32
                                 (every model but EASE: mf, lightgcn, als, all students)
    <model_dir>/ease.npz         B (n_items, n_items) float32, zero diagonal (EASE teachers,
                                 instead of embeddings.npz; the manifest's `weights` says so)
    <model_dir>/manifest.json    training.manifest.ModelManifest: kind, model, method, dim,
                                 config, dataset, lineage, training history, timings
    <model_dir>/report.json      training.manifest.QualityReport (training.evaluation)

`ModelArtifact.save` is the one place both JSON files are written; `ModelArtifact.load`
reads them through training.manifest's readers, the one place each is parsed.

Embedding models score with a dot product of their final embeddings, so evaluation,
distillation and the serving index share one representation; an EASE teacher scores
X_u @ B (training.scoring) and cannot be served: it is distilled into a student.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.artifacts import atomic_dir, write_json_atomic
from training.errors import ConfigError, DataError, FingerprintMismatchError
from training.manifest import (
    EASE_WEIGHTS,
    MANIFEST,
    NO_EMBEDDINGS,
    REPORT,
    ModelManifest,
    QualityReport,
    read_manifest,
    read_report,
)

__all__ = [
    "EASE_FILE",
    "EMBEDDINGS",
    "MANIFEST",
    "NO_EMBEDDINGS",
    "REPORT",
    "ModelArtifact",
    "NoEmbeddingsError",
]

EMBEDDINGS = "embeddings.npz"
EASE_FILE = EASE_WEIGHTS.file  # "ease.npz"


class NoEmbeddingsError(ConfigError):
    """A model without embeddings (an EASE teacher) asked for them, e.g. to be published."""


@dataclass
class ModelArtifact:
    """A model in memory. Embedding models fill user_emb and item_emb; an EASE teacher
    fills item_item (B) instead, and its embeddings are None."""

    user_emb: np.ndarray | None  # (n_users, d) float32
    item_emb: np.ndarray | None  # (n_items, d) float32
    manifest: ModelManifest
    report: QualityReport | None = None
    path: Path | None = field(default=None, compare=False)
    item_item: np.ndarray | None = None  # (n_items, n_items) float32 EASE B

    def __post_init__(self) -> None:
        has_emb = self.user_emb is not None and self.item_emb is not None
        if has_emb == (self.item_item is not None) or has_emb != self.manifest.has_embeddings:
            raise ValueError(
                f"model {self.manifest.id}: {self.manifest.model} needs "
                f"{'embeddings' if self.manifest.has_embeddings else 'item_item'} only"
            )

    @property
    def dim(self) -> int:
        return int(self.item_emb.shape[1]) if self.item_emb is not None else self.manifest.dim

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(user_emb (n_users, d), item_emb (n_items, d)); NoEmbeddingsError for EASE."""
        if self.user_emb is None or self.item_emb is None:
            raise NoEmbeddingsError(f"model {self.manifest.id or self.path}: {NO_EMBEDDINGS}")
        return self.user_emb, self.item_emb

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
            if self.item_item is not None:
                np.savez(tmp / EASE_FILE, B=np.ascontiguousarray(self.item_item, dtype=np.float32))
            else:
                user_emb, item_emb = self.embeddings()
                np.savez(
                    tmp / EMBEDDINGS,
                    user_emb=np.ascontiguousarray(user_emb, dtype=np.float32),
                    item_emb=np.ascontiguousarray(item_emb, dtype=np.float32),
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
        if not (path / MANIFEST).is_file():
            raise DataError(f"{path}: not a model directory ({MANIFEST} and {EMBEDDINGS} expected)")
        manifest = read_manifest(path)
        weights = EMBEDDINGS if manifest.weights is None else manifest.weights.file
        if not (path / weights).is_file():
            raise DataError(f"{path}: not a model directory ({MANIFEST} and {weights} expected)")
        report = read_report(path) if (path / REPORT).is_file() else None
        try:
            with np.load(path / weights, allow_pickle=False) as z:
                if manifest.weights is not None:
                    return cls(None, None, manifest, report, path=path, item_item=z["B"])
                user_emb, item_emb = z["user_emb"], z["item_emb"]
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
            # A truncated or corrupted file must fail with its name, not a bare zip error.
            raise DataError(f"{path / weights}: unreadable model weights ({exc})") from exc
        return cls(
            user_emb=user_emb, item_emb=item_emb, manifest=manifest, report=report, path=path
        )
