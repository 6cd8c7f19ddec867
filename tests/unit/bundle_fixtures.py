"""Tiny synthetic datasets, model directories and serving bundles for the serving tests.

Imported by tests/unit/test_bundle.py, test_index_store.py and tests/api/test_recommendations.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.core.bundle_format import build_bundle
from training.checkpoint import ModelArtifact
from training.dataset import Dataset
from training.manifest import DatasetInfo, ModelManifest


def make_dataset(
    n_users: int = 40, n_items: int = 300, max_seen: int = 25, seed: int = 0, heavy_users: int = 0
) -> Dataset:
    """Users u0.. and items i0.. with 1..max_seen training items each; the first
    `heavy_users` users have seen all but 3 items of the catalogue."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(n_users):
        n_seen = n_items - 3 if u < heavy_users else int(rng.integers(1, max_seen + 1))
        for i in rng.choice(n_items, size=n_seen, replace=False):
            pairs.append((u, int(i)))
    train = np.array(pairs, dtype=np.int64)
    test = np.array([(u, int(rng.integers(n_items))) for u in range(n_users)], dtype=np.int64)
    return Dataset(
        name="tiny",
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        train=train,
        valid=np.zeros((0, 2), dtype=np.int64),
        test=test,
    )


def make_model_dir(root: Path, dataset: Dataset, dim: int = 8, seed: int = 0) -> Path:
    """A model directory with gaussian embeddings (no ties in practice)."""
    rng = np.random.default_rng(seed + 1000)
    artifact = ModelArtifact(
        user_emb=rng.standard_normal((dataset.n_users, dim)).astype(np.float32),
        item_emb=rng.standard_normal((dataset.n_items, dim)).astype(np.float32),
        # the least a model directory needs: made from embeddings, not trained here
        manifest=ModelManifest(
            kind="student",
            model="mf",
            dim=dim,
            dataset=DatasetInfo(fingerprint=dataset.fingerprint),
        ),
    )
    return artifact.save(Path(root) / f"model-{seed}")


def make_bundle(
    root: Path, model_id: str = "m1", seed: int = 0, factory: str = "Flat", **kwargs: object
) -> tuple[Path, Dataset, ModelArtifact]:
    """Dataset + model + bundle under `root`; kwargs go to make_dataset (sizes) or build_bundle."""
    ds_keys = {"n_users", "n_items", "max_seen", "heavy_users"}
    ds = make_dataset(seed=seed, **{k: v for k, v in kwargs.items() if k in ds_keys})  # type: ignore[arg-type]
    model_dir = make_model_dir(root, ds, dim=int(kwargs.get("dim", 8)), seed=seed)  # type: ignore[call-overload]
    build_kwargs = {k: v for k, v in kwargs.items() if k not in ds_keys | {"dim"}}
    out = Path(root) / "bundles" / model_id
    build_bundle(model_dir, ds, out, model_id=model_id, index_factory=factory, **build_kwargs)  # type: ignore[arg-type]
    return out, ds, ModelArtifact.load(model_dir)


def brute_force_topk(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    users: np.ndarray,
    k: int,
    seen: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k in numpy: (n, k) scores and items, seen items masked when given."""
    scores = user_emb[users].astype(np.float64) @ item_emb.T.astype(np.float64)  # (n, n_items)
    if seen is not None:
        for row, s in enumerate(seen):
            scores[row, s] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), top
