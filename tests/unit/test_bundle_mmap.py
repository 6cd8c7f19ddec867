"""A bundle read with mmap=True (settings.serving_mmap: API processes share one copy in the
page cache) really maps its files, and both reads hold the model's own vectors. That every
load path answers like brute force is tests/unit/test_bundle_load_paths.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bundle_fixtures import make_bundle

from service.serving.bundle import load_bundle


def _mapped(a: np.ndarray) -> bool:
    """True when `a` (or an array it views) is a memory map of a file."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base if isinstance(a.base, np.ndarray) else None  # type: ignore[assignment]
    return False


def test_mapped_bundle_maps_its_files_and_holds_the_models_vectors(tmp_path: Path) -> None:
    path, ds, model = make_bundle(tmp_path, n_users=60, n_items=400)
    copied, mapped = load_bundle(path), load_bundle(path, mmap=True)
    assert _mapped(mapped.user_emb) and _mapped(mapped.seen_indices) and _mapped(mapped.seen_indptr)
    assert not _mapped(copied.user_emb)
    train = ds.csr("train")
    for b in (copied, mapped):  # each against the model and the dataset, not the other
        np.testing.assert_array_equal(b.user_emb, model.user_emb)
        np.testing.assert_array_equal(b.item_emb, model.item_emb)  # the flat index's vectors
        np.testing.assert_array_equal(b.seen_indptr, train.indptr)
        for u in range(ds.n_users):
            assert b.seen(u).tolist() == sorted(
                train.indices[train.indptr[u] : train.indptr[u + 1]]
            )
