"""The serving bundle on disk: build (worker), validate, write, read and verify (API).

One directory per published model version, written atomically:

    items.faiss        inner-product index of the item embeddings (exact IndexFlatIP for "Flat")
    item_emb.npy       (n_items, d) float32, only for approximate indexes (exact fallback)
    user_emb.npy       (n_users, d) float32
    seen_indptr.npy    (n_users + 1,) int64   CSR rows: each user's training items
    seen_indices.npy   (n_train,) int32       item indices, sorted within a row
    user_ids.npy       (n_users,) unicode     external ids (no pickle)
    item_ids.npy       (n_items,) unicode
    groups.npy         (n_items,) int32       popularity group, 0 = head
    item_popularity.npy (n_items,) int64      training interactions per item (format 2+;
                                              the popular and debiased fallbacks rank by it)
    meta.json          model_id, d, metric, factory, sizes, created_at, sha256 of every file;
                       shift_column and new_user_shift for a student with a head-shift column

A student that meets its teacher's head share by construction (training.calibration) has one
embedding column that is no learned coordinate: users hold their shift beta_u >= 0, items -1
in the head group and 0 elsewhere. The inner product ranks with it as it is, so the index and
the plain search ignore it; meta.json names it (`shift_column`, with `new_user_shift`, the
shift of a user without a trained vector) so that fold-in and similar items can leave it out
(`ShiftColumn`). Bundles without the keys (every model before, and students no user of which
was shifted) have no such column.

Format 1 bundles (no item_popularity.npy) still load: `BundleFiles.optional` lacks the
array and the reader counts the same numbers from the seen matrix (every training pair).

Imports faiss, numpy and training's artifact helpers only (no FastAPI, no serving code):
the worker builds bundles with it, the API reads them with it (service.serving.bundle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from training.artifacts import atomic_dir, write_json_atomic
from training.checkpoint import NO_EMBEDDINGS, ModelArtifact
from training.manifest import MANIFEST, read_manifest

if TYPE_CHECKING:
    from training.dataset import Dataset

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
INDEX_FILE = "items.faiss"
META_FILE = "meta.json"
ARRAY_FILES = ("user_emb", "seen_indptr", "seen_indices", "user_ids", "item_ids", "groups")
# Arrays added after format 1: read, and checksummed, when the bundle lists them.
OPTIONAL_ARRAY_FILES = ("item_popularity",)
EXACT_FACTORY = "Flat"
VALIDATION_USERS = 256
VALIDATION_K = 10


class BundleError(RuntimeError):
    """A serving bundle that cannot be built or loaded. The message names the file or check."""


@dataclass(frozen=True)
class ShiftColumn:
    """The head-shift column of a student's embeddings (training.calibration): not learned.

    column: its index in the (n, d) embeddings; new_user: the shift a folded-in user gets.
    """

    column: int
    new_user: float

    def to_meta(self) -> dict[str, Any]:
        return {"shift_column": self.column, "new_user_shift": self.new_user}

    @classmethod
    def checked(cls, column: int, new_user: float, d: int) -> ShiftColumn:
        """Raises BundleError for a column outside the d embedding columns, or a negative or
        non-finite new-user shift."""
        if not 0 <= column < d:
            raise BundleError(f"shift_column={column} is outside the d={d} embedding columns")
        if not (math.isfinite(new_user) and new_user >= 0):
            raise BundleError(f"new_user_shift={new_user} must be finite and >= 0")
        return cls(column, new_user)

    @classmethod
    def of_meta(cls, meta: dict[str, Any]) -> ShiftColumn | None:
        """The column a bundle's meta.json names, or None (the keys absent: no column)."""
        if meta.get("shift_column") is None:
            return None
        try:
            column, new_user = int(meta["shift_column"]), float(meta.get("new_user_shift", 0.0))
            d = int(meta["d"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"unreadable shift column in bundle meta ({exc!r})") from exc
        return cls.checked(column, new_user, d)


def _shift_column(
    artifact: ModelArtifact, item_emb: np.ndarray, model_id: str
) -> ShiftColumn | None:
    """The model manifest's head-shift column, checked against the item embeddings: the
    column must exist and hold only -1 (head) and 0, or the manifest does not describe them."""
    training = artifact.manifest.training
    cap = training.head_share_cap if training is not None else None
    if cap is None or cap.shift_column is None:
        return None
    shift = ShiftColumn.checked(cap.shift_column, cap.new_user_shift, item_emb.shape[1])
    if not np.isin(item_emb[:, shift.column], (-1.0, 0.0)).all():
        raise BundleError(
            f"model {model_id}: item column {shift.column} is not a head-shift column "
            "(values other than -1 and 0), though the manifest names it one"
        )
    return shift


# -- build ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)  # hashlib releases the GIL on large chunks: loads don't stall requests
    return h.hexdigest()


def is_exact(factory: str) -> bool:
    return factory.replace(" ", "") == EXACT_FACTORY


def set_search_params(index: faiss.Index, nprobe: int, ef_search: int) -> None:
    """Set nprobe (IVF) or efSearch (HNSW) explicitly; exact indexes have neither."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = int(nprobe)
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", int(ef_search))


def _build_index(item_emb: np.ndarray, factory: str) -> faiss.Index:
    """Train and fill an inner-product index; on a GPU when faiss sees one.

    Args:
        item_emb: (n_items, d) float32 C-contiguous.
    Returns:
        a CPU index (serving searches CPU indexes concurrently; GPU ones are not thread-safe).
    """
    d = item_emb.shape[1]
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise BundleError(
            f"index_factory={factory!r} is not a valid faiss factory string: {exc}"
        ) from exc
    res = None
    if faiss.get_num_gpus() > 0:
        try:
            res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(res, 0, index)
        except (RuntimeError, AttributeError) as exc:  # e.g. HNSW has no GPU implementation
            logger.info("building %s on CPU: no GPU version (%s)", factory, exc)
            res = None
    try:
        if not index.is_trained:
            index.train(item_emb)
        index.add(item_emb)
    except RuntimeError as exc:
        raise BundleError(f"cannot build {factory!r} over {len(item_emb)} items: {exc}") from exc
    if res is not None:
        index = faiss.index_gpu_to_cpu(index)
    return index


def _validate_index(
    index: faiss.Index,
    item_emb: np.ndarray,
    user_emb: np.ndarray,
    factory: str,
    min_recall: float,
    seed: int = 0,
) -> float:
    """Check size and dimension; for approximate indexes, recall@10 against exact search.

    Returns:
        recall@k on a user sample (1.0 for the exact index, by construction).
    """
    n_items, d = item_emb.shape
    if index.ntotal != n_items:
        raise BundleError(f"index holds {index.ntotal} vectors, expected n_items={n_items}")
    if index.d != d or user_emb.shape[1] != d:
        raise BundleError(
            f"dimension mismatch: index d={index.d}, items d={d}, users d={user_emb.shape[1]}"
        )
    if is_exact(factory):
        return 1.0
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(user_emb), size=min(VALIDATION_USERS, len(user_emb)), replace=False)
    xq = np.ascontiguousarray(user_emb[sample])
    k = min(VALIDATION_K, n_items)
    exact = faiss.IndexFlatIP(d)
    exact.add(item_emb)
    _, truth = exact.search(xq, k)  # (n_sample, k), no -1: k <= n_items
    _, found = index.search(xq, k)
    recall = float(knn_intersection_measure(truth, found))
    if recall < min_recall:
        raise BundleError(
            f"{factory!r}: recall@{k}={recall:.3f} against exact search is below {min_recall}; "
            "raise nprobe / ef_search or use 'Flat'"
        )
    return float(recall)


def build_bundle(
    model_dir: Path,
    dataset: Dataset,
    out_dir: Path,
    *,
    model_id: str,
    index_factory: str = EXACT_FACTORY,
    nprobe: int = 16,
    n_groups: int = 4,
    ef_search: int = 128,
    min_recall: float = 0.9,
) -> dict[str, Any]:
    """Write a validated serving bundle for one model to `out_dir`, atomically.

    Args:
        model_dir: a training.checkpoint model directory (embeddings.npz + manifest.json).
        dataset: the dataset the model was trained on (ids, training items, groups).
        index_factory: "Flat" (exact), or e.g. "IVF1024,Flat" / "HNSW32" for large catalogues.
        nprobe, ef_search: search parameters the approximate index is validated with.
        min_recall: recall@10 an approximate index must reach against exact search.
    Returns:
        the bundle's meta (also written to meta.json).
    Raises:
        BundleError: among others, for a model without embeddings (an EASE teacher), before
            its weights are read.
    """
    if (Path(model_dir) / MANIFEST).is_file() and not read_manifest(Path(model_dir)).has_embeddings:
        raise BundleError(f"model {model_id}: {NO_EMBEDDINGS}")
    artifact = ModelArtifact.load(Path(model_dir))
    artifact.check_dataset(dataset.fingerprint)
    user_emb, item_emb = artifact.embeddings()
    item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)  # (n_items, d)
    user_emb = np.ascontiguousarray(user_emb, dtype=np.float32)  # (n_users, d)
    if item_emb.shape[0] != dataset.n_items or user_emb.shape[0] != dataset.n_users:
        raise BundleError(
            f"model {model_id}: embeddings cover {user_emb.shape[0]} users x {item_emb.shape[0]} items, "
            f"dataset {dataset.name!r} has {dataset.n_users} x {dataset.n_items}"
        )
    if not (np.isfinite(item_emb).all() and np.isfinite(user_emb).all()):
        raise BundleError(f"model {model_id}: embeddings contain NaN or infinite values")

    shift = _shift_column(artifact, item_emb, model_id)
    index = _build_index(item_emb, index_factory)
    set_search_params(index, nprobe, ef_search)
    recall = _validate_index(index, item_emb, user_emb, index_factory, min_recall)
    seen = dataset.csr("train")
    arrays: dict[str, np.ndarray] = {
        "user_emb": user_emb,
        "seen_indptr": seen.indptr.astype(np.int64),
        "seen_indices": seen.indices.astype(np.int32),
        "user_ids": dataset.user_ids.astype(str),
        "item_ids": dataset.item_ids.astype(str),
        "groups": dataset.groups(n_groups).astype(np.int32),
        "item_popularity": dataset.popularity().astype(np.int64),
    }
    exact = is_exact(index_factory)
    if not exact:
        arrays["item_emb"] = item_emb
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "d": int(item_emb.shape[1]),
        "metric": "inner_product",
        "factory": index_factory,
        "exact": exact,
        "n_items": int(item_emb.shape[0]),
        "n_users": int(user_emb.shape[0]),
        "n_groups": int(n_groups),
        "nprobe": int(nprobe),
        "ef_search": int(ef_search),
        "validation_recall": recall,
        "max_seen": int(np.diff(seen.indptr).max(initial=0)),
        "dataset_fingerprint": dataset.fingerprint,
        **(shift.to_meta() if shift is not None else {}),
        "created_at": datetime.now(timezone.utc).isoformat(),
        "files": {},
    }
    with atomic_dir(Path(out_dir)) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        for path in sorted(tmp.iterdir()):
            meta["files"][path.name] = _sha256(path)
        write_json_atomic(tmp / META_FILE, meta)
    logger.info(
        "bundle %s: %s over %d items, d=%d, recall@%d=%.3f -> %s",
        model_id,
        index_factory,
        meta["n_items"],
        meta["d"],
        VALIDATION_K,
        recall,
        out_dir,
    )
    return meta


# -- read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleFiles:
    """A bundle read from disk and verified: checksums, shapes and meta agree."""

    path: Path
    meta: dict[str, Any]
    index: faiss.Index
    arrays: dict[str, np.ndarray]  # ARRAY_FILES by name
    item_emb: np.ndarray | None  # (n_items, d) float32 memory map; None for the exact index
    optional: dict[str, np.ndarray] = field(default_factory=dict)  # OPTIONAL_ARRAY_FILES present


def read_bundle(
    path: Path, *, nprobe: int = 16, ef_search: int = 128, mmap: bool = False
) -> BundleFiles:
    """Read and verify a bundle (checksums, shapes); set the search parameters explicitly.

    mmap: map the index's vectors (flat indexes) and the arrays from the files instead of
    reading them into this process's memory, so API processes on one host share one copy in
    the page cache (docs/service.md "Several processes").
    """
    path = Path(path)
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
        files: dict[str, str] = meta["files"]
        n_items, n_users, d = int(meta["n_items"]), int(meta["n_users"]), int(meta["d"])
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: not a serving bundle ({META_FILE} missing)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{meta_path}: unreadable bundle meta ({exc!r})") from exc
    required = [INDEX_FILE] + [f"{n}.npy" for n in ARRAY_FILES]
    if not meta.get("exact", True):
        required.append("item_emb.npy")
    if int(meta.get("format_version", 1)) >= 2:
        required += [f"{n}.npy" for n in OPTIONAL_ARRAY_FILES]
    for name in required:
        if name not in files:
            raise BundleError(f"{meta_path}: no checksum for {name}")
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle")
        if _sha256(file) != digest:
            raise BundleError(f"{file}: checksum mismatch (corrupt or modified bundle)")
    try:
        index = faiss.read_index(str(path / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        mode: Literal["r"] | None = "r" if mmap else None
        arrays = {
            n: np.load(path / f"{n}.npy", mmap_mode=mode, allow_pickle=False) for n in ARRAY_FILES
        }
        optional = {
            n: np.load(path / f"{n}.npy", mmap_mode=mode, allow_pickle=False)
            for n in OPTIONAL_ARRAY_FILES
            if f"{n}.npy" in files
        }
        item_emb = None
        if not meta.get("exact", True):
            # mmap: only exact scans, fold-in and similar items read it, so it costs no resident memory
            item_emb = np.load(path / "item_emb.npy", mmap_mode="r", allow_pickle=False)
    except (RuntimeError, ValueError, OSError) as exc:
        raise BundleError(f"{path}: cannot read bundle files ({exc})") from exc
    checks = {
        "index.ntotal": (index.ntotal, n_items),
        "index.d": (index.d, d),
        "user_emb rows": (arrays["user_emb"].shape[0], n_users),
        "seen_indptr length": (len(arrays["seen_indptr"]), n_users + 1),
        "user_ids length": (len(arrays["user_ids"]), n_users),
        "item_ids length": (len(arrays["item_ids"]), n_items),
        "groups length": (len(arrays["groups"]), n_items),
        **{f"{n} length": (len(a), n_items) for n, a in optional.items()},
    }
    for what, (got, want) in checks.items():
        if got != want:
            raise BundleError(f"{path}: {what} is {got}, meta says {want}")
    try:
        ShiftColumn.of_meta(meta)
    except BundleError as exc:
        raise BundleError(f"{meta_path}: {exc}") from exc
    set_search_params(index, nprobe, ef_search)
    if not meta.get("exact", True) and (
        nprobe < meta.get("nprobe", 0) or ef_search < meta.get("ef_search", 0)
    ):
        logger.warning(
            "%s: searched with nprobe=%d ef_search=%d, below the nprobe=%s ef_search=%s its recall "
            "was validated with",
            path,
            nprobe,
            ef_search,
            meta.get("nprobe"),
            meta.get("ef_search"),
        )
    return BundleFiles(path, meta, index, arrays, item_emb, optional)
