"""The dataset artifact: dense ids, a train/valid/test split, statistics and a fingerprint.

On disk a dataset is a directory with `arrays.npz` (no pickles) and `manifest.json`.
External ids are strings; every array speaks dense internal ids (0..n-1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from training.artifacts import atomic_dir, read_json, write_json_atomic
from training.errors import DataError
from training.popularity import item_popularity, popularity_groups

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1


@dataclass
class SyntheticTruth:
    """True preferences of the synthetic generator: score(u, i) = user_factors[u] @ item_factors[i]."""

    user_factors: np.ndarray  # (n_users, d) float32
    item_factors: np.ndarray  # (n_items, d) float32


@dataclass
class Dataset:
    name: str
    user_ids: np.ndarray  # (n_users,) str external ids
    item_ids: np.ndarray  # (n_items,) str external ids
    train: np.ndarray  # (n_train, 2) int64 [user, item], deduplicated
    valid: np.ndarray  # (n_valid, 2) int64
    test: np.ndarray  # (n_test, 2) int64
    info: dict[str, Any] = field(default_factory=dict)  # source, format, split protocol, seed
    truth: SyntheticTruth | None = None

    def __post_init__(self) -> None:
        self.user_ids = np.asarray(self.user_ids).astype(str)
        self.item_ids = np.asarray(self.item_ids).astype(str)
        for name in SPLITS:
            arr = np.asarray(getattr(self, name), dtype=np.int64).reshape(-1, 2)
            setattr(self, name, arr)
        if len(self.test) == 0:
            raise DataError(f"dataset {self.name!r}: no test interactions after the split")

    # -- sizes and views -------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"split={name!r}: expected one of {SPLITS}")
        arr: np.ndarray = getattr(self, name)
        return arr

    def csr(self, name: str = "train") -> sp.csr_matrix:
        """(n_users, n_items) binary CSR matrix of one split, rows sorted."""
        pairs = self.split(name)
        mat = sp.csr_matrix(
            (np.ones(len(pairs), dtype=np.float32), (pairs[:, 0], pairs[:, 1])),
            shape=(self.n_users, self.n_items),
        )
        mat.sum_duplicates()
        mat.data[:] = 1.0
        return mat

    def popularity(self) -> np.ndarray:
        """(n_items,) training interactions per item."""
        return item_popularity(self.train[:, 1], self.n_items)

    def groups(self, n_groups: int = 4) -> np.ndarray:
        """(n_items,) popularity group of each item, 0 = head."""
        return popularity_groups(self.popularity(), n_groups)

    # -- statistics and identity -------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 over ids and split arrays: equal content, equal fingerprint."""
        h = hashlib.sha256()
        for ids in (self.user_ids, self.item_ids):
            h.update("\x1f".join(ids.tolist()).encode())
            h.update(b"\x1e")
        for name in SPLITS:
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.split(name), dtype="<i8").tobytes())
        return h.hexdigest()[:32]

    def statistics(self, n_groups: int = 4) -> dict[str, Any]:
        pop = self.popularity()
        groups = popularity_groups(pop, n_groups)
        n_inter = len(self.train) + len(self.valid) + len(self.test)
        test_items = self.test[:, 1]
        group_rows = []
        for g in range(n_groups):
            members = groups == g
            group_rows.append(
                {
                    "group": g,
                    "items": int(members.sum()),
                    "train_interactions": int(pop[members].sum()),
                    "train_share": float(pop[members].sum() / max(1, pop.sum())),
                    "test_share": float(members[test_items].sum() / max(1, len(test_items))),
                }
            )
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": int(n_inter),
            "train": int(len(self.train)),
            "valid": int(len(self.valid)),
            "test": int(len(self.test)),
            "density": float(n_inter / max(1, self.n_users * self.n_items)),
            "test_users": int(len(np.unique(self.test[:, 0]))),
            "items_without_train": int((pop == 0).sum()),
            "max_item_popularity": int(pop.max(initial=0)),
            "popularity_groups": group_rows,
        }

    def manifest(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "info": self.info,
            "has_truth": self.truth is not None,
            "statistics": self.statistics(),
        }

    # -- persistence ------------------------------------------------------------------
    def save(self, out_dir: Path) -> Path:
        """Write the artifact atomically to `out_dir` (replacing an older copy)."""
        out_dir = Path(out_dir)
        arrays: dict[str, np.ndarray] = {
            "user_ids": self.user_ids.astype(str),
            "item_ids": self.item_ids.astype(str),
            "train": self.train,
            "valid": self.valid,
            "test": self.test,
        }
        if self.truth is not None:
            arrays["truth_user_factors"] = self.truth.user_factors
            arrays["truth_item_factors"] = self.truth.item_factors
        with atomic_dir(out_dir) as tmp:
            # numpy's stub lets **arrays fill `allow_pickle: bool`. Passing allow_pickle=False
            # is no way out: numpy 1.x (the range allows 1.24) has no such parameter and would
            # store an array of that name.
            np.savez(tmp / "arrays.npz", **arrays)  # type: ignore[arg-type]
            write_json_atomic(tmp / "manifest.json", self.manifest())
        return out_dir

    @classmethod
    def load(cls, path: Path) -> Dataset:
        path = Path(path)
        manifest_path, arrays_path = path / "manifest.json", path / "arrays.npz"
        if not manifest_path.is_file() or not arrays_path.is_file():
            raise DataError(
                f"{path}: not a dataset artifact (manifest.json and arrays.npz expected)"
            )
        manifest = read_json(manifest_path)
        with np.load(arrays_path, allow_pickle=False) as z:
            truth = None
            if "truth_user_factors" in z.files:
                truth = SyntheticTruth(z["truth_user_factors"], z["truth_item_factors"])
            ds = cls(
                name=manifest["name"],
                user_ids=z["user_ids"],
                item_ids=z["item_ids"],
                train=z["train"],
                valid=z["valid"],
                test=z["test"],
                info=manifest.get("info", {}),
                truth=truth,
            )
        if ds.fingerprint != manifest["fingerprint"]:
            raise DataError(
                f"{path}: content does not match its manifest fingerprint (corrupt artifact)"
            )
        return ds
