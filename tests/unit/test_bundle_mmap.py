"""A bundle read with mmap=True (settings.serving_mmap: API processes share one copy in the
page cache) answers exactly as one read into memory, and really maps its files."""

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


def test_mapped_bundle_answers_as_the_copied_one(tmp_path: Path) -> None:
    path, ds, _ = make_bundle(tmp_path, n_users=60, n_items=400)
    copied, mapped = load_bundle(path), load_bundle(path, mmap=True)
    assert _mapped(mapped.user_emb) and _mapped(mapped.seen_indices) and _mapped(mapped.seen_indptr)
    assert not _mapped(copied.user_emb)
    users = np.arange(ds.n_users)
    for exclude_seen in (True, False):
        a, b = copied.recommend(users, 20, exclude_seen), mapped.recommend(users, 20, exclude_seen)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(
        copied.item_emb, mapped.item_emb
    )  # the flat index's vectors, mapped
    history = np.array([3, 7, 11])
    np.testing.assert_array_equal(copied.fold_in(history), mapped.fold_in(history))
