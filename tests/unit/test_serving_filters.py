"""Filtered and vector rows of a loaded bundle against brute force, on every path of the
width rule: the widened search, the exact scan of a small allow-list, the exact scan after
a search that came up short, and an approximate index."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pytest
from bundle_fixtures import make_bundle, make_dataset

from service.core.bundle_format import BundleError, build_bundle
from service.serving.bundle import ServingBundle, load_bundle
from service.serving.filters import (
    EXACT_SCAN_ITEMS,
    NO_ITEMS,
    RowQuery,
    resolve_filters,
    sorted_union,
    sorted_unique,
)
from service.serving.foldin import FOLD_IN_LAMBDA
from training.checkpoint import ModelArtifact
from training.dataset import Dataset
from training.manifest import DatasetInfo, ModelManifest

faiss.omp_set_num_threads(1)
K = 25


def seen_of(ds: Dataset, u: int) -> np.ndarray:
    """The user's training items, read from the dataset (not from the bundle under test)."""
    train = ds.csr("train")
    return train.indices[train.indptr[u] : train.indptr[u + 1]]


def reference(
    ds: Dataset,
    model: ModelArtifact,
    users: np.ndarray,
    banned: list[int],
    allowed: np.ndarray | None,
) -> list[list[int]]:
    """Brute-force lists in float64: seen + banned masked, only allowed items, tie rule."""
    out = []
    for u in users.tolist():
        s = model.item_emb.astype(np.float64) @ model.user_emb[u].astype(np.float64)
        s[seen_of(ds, u)] = -np.inf
        s[banned] = -np.inf
        if allowed is not None:
            s[~allowed] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))
        out.append([int(i) for i in order[np.isfinite(s[order])][:K]])
    return out


def allowed_by_hand(
    ds: Dataset, include: Sequence[int] | None, groups: Sequence[int] | None
) -> np.ndarray | None:
    """(n_items,) bool allow-list from the request and the data: the include ids the catalogue
    holds, within the dataset's popularity groups; None when the request restricts nothing."""
    if include is None and groups is None:
        return None
    allowed = np.ones(ds.n_items, dtype=bool)
    if include is not None:
        allowed[:] = False
        allowed[[i for i in include if 0 <= i < ds.n_items]] = True
    if groups is not None:
        allowed &= np.isin(ds.groups(4), list(groups))
    return allowed


def served_lists(b: ServingBundle, users: np.ndarray, query: RowQuery) -> list[list[int]]:
    _, items = b.recommend(users, K, True, [query] * len(users))
    return [[int(i) for i in row if i >= 0] for row in items]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory):
    path, ds, model = make_bundle(
        tmp_path_factory.mktemp("big"), n_users=40, n_items=6000, max_seen=40, seed=3
    )
    return load_bundle(path), ds, model


@pytest.mark.parametrize(
    "exclude, include, groups, path",
    [
        (range(0, 6000, 97), None, None, "search"),
        (None, None, [3], "search"),
        (None, None, [0, 1], "scan"),
        ([5, 6, 7], range(0, 6000, 2), None, "scan"),  # 3000 items <= EXACT_SCAN_ITEMS
        (None, range(1, 6000, 1), [3], "search"),  # include (5999 items) within a group
        (None, [10, 20, 30, 40, 999_999], None, "scan"),
    ],
)
def test_filtered_rows_match_brute_force(big, exclude, include, groups, path: str) -> None:
    b, ds, model = big
    ids = lambda r: None if r is None else [f"i{i}" for i in r]  # noqa: E731
    filters = resolve_filters(b, ids(exclude), ids(include), groups)
    # The reference reads the request and the data only, never the resolved filters.
    allowed = allowed_by_hand(ds, include, groups)
    banned = sorted(set(exclude or ()))
    users = np.arange(ds.n_users)
    scans = b.exact_scans
    got = served_lists(b, users, filters.query())
    assert got == reference(ds, model, users, banned, allowed)
    assert all(len(row) == K for row in got) or include is not None
    n_allowed = ds.n_items if allowed is None else int(allowed.sum())
    if path == "search" and n_allowed > EXACT_SCAN_ITEMS:
        assert b.exact_scans == scans
    if path == "scan":
        assert n_allowed <= EXACT_SCAN_ITEMS and b.exact_scans == scans + len(users)


def test_a_search_that_comes_up_short_is_finished_by_an_exact_scan(tmp_path: Path) -> None:
    # Tail items get tiny vectors: a tail-only shelf's widened search finds only head items.
    ds = make_dataset(n_users=20, n_items=6000, max_seen=40, seed=4)
    rng = np.random.default_rng(4)
    item_emb = rng.standard_normal((ds.n_items, 8)).astype(np.float32)
    tail = ds.groups(4) == 3
    item_emb[tail] *= 1e-3
    model = ModelArtifact(
        user_emb=rng.standard_normal((ds.n_users, 8)).astype(np.float32),
        item_emb=item_emb,
        manifest=ModelManifest(
            kind="student", model="mf", dim=8, dataset=DatasetInfo(fingerprint=ds.fingerprint)
        ),
    )
    build_bundle(model.save(tmp_path / "model"), ds, tmp_path / "bundle", model_id="short")
    b = load_bundle(tmp_path / "bundle")
    filters = resolve_filters(b, None, None, [3])
    assert tail.sum() > EXACT_SCAN_ITEMS  # searched first
    users = np.arange(ds.n_users)
    got = served_lists(b, users, filters.query())
    assert got == reference(ds, model, users, [], tail)
    assert all(len(row) == K for row in got)
    assert b.exact_scans == len(users)  # every row came up short and was scanned


def test_approximate_index_with_filters_and_a_vector_query(tmp_path: Path) -> None:
    path, ds, model = make_bundle(
        tmp_path, factory="IVF16,Flat", n_users=30, n_items=6000, nprobe=16
    )
    b = load_bundle(path, nprobe=16)  # every list probed: exact, and item_emb is a memory map
    users = np.arange(ds.n_users)
    for groups in ([3], [0]):
        filters = resolve_filters(b, ["i1", "i2"], None, groups)
        assert served_lists(b, users, filters.query()) == reference(
            ds, model, users, [1, 2], allowed_by_hand(ds, None, groups)
        )
    # a folded-in history searches like a user vector, without the user's seen items
    history = seen_of(ds, 0)
    _, items = b.recommend(np.array([-1]), K, False, [RowQuery(history, None, history)])
    s = model.item_emb.astype(np.float64) @ ridge_fold_in(model.item_emb, history)
    s[history] = -np.inf
    assert items[0].tolist() == np.lexsort((np.arange(len(s)), -s))[:K].tolist()


def test_an_approximate_search_that_returns_fewer_hits_than_asked_is_not_trusted(
    tmp_path: Path,
) -> None:
    """One probed IVF cell holds fewer items than the filtered row's search width: after the
    excluded hit is dropped exactly k hits remain, the k-th being the last one the index
    returned. Items outside the cell may score higher, so the row must be scored exactly."""
    path, ds, model = make_bundle(
        tmp_path, factory="IVF64,Flat", n_users=20, n_items=3000, nprobe=64
    )
    b = load_bundle(path, nprobe=1)  # one cell of ~47 items per query
    checked = 0
    for u in range(ds.n_users):
        _, hits = b.index.search(model.user_emb[u : u + 1], 3000)
        real = hits[0][hits[0] >= 0]
        k = len(real) - 1  # width k + 2 > the cell: the index pads with -1
        excluded = int(real[0])
        filters = resolve_filters(b, [f"i{excluded}"], None, None)
        _, items = b.recommend(np.array([u]), k, False, [filters.query()])
        s = model.item_emb.astype(np.float64) @ model.user_emb[u].astype(np.float64)
        s[excluded] = -np.inf
        expected = np.lexsort((np.arange(len(s)), -s))[:k].tolist()
        assert items[0].tolist() == expected, u
        checked += set(expected) != set(real.tolist()) - {excluded}  # the cell alone is wrong
    assert checked > 0


def ridge_fold_in(item_emb: np.ndarray, history: np.ndarray) -> np.ndarray:
    """The documented fold-in as a least-squares problem solved by numpy: u minimising
    ||Q_S u - 1||^2 + lam ||u||^2 (lam = FOLD_IN_LAMBDA x the mean squared item norm), i.e.
    the stacked system [Q_S; sqrt(lam) I] u = [1; 0], never the code's normal equations."""
    q = item_emb.astype(np.float64)
    qs = q[np.unique(history)]
    lam = FOLD_IN_LAMBDA * float(np.mean(np.sum(q * q, axis=1)))
    d = q.shape[1]
    a = np.vstack([qs, np.sqrt(lam) * np.eye(d)])
    y = np.concatenate([np.ones(len(qs)), np.zeros(d)])
    return np.linalg.lstsq(a, y, rcond=None)[0]


def test_format_1_bundle_still_loads_and_counts_popularity_from_seen_items(tmp_path: Path) -> None:
    path, ds, _ = make_bundle(tmp_path)
    fresh = load_bundle(path)
    assert fresh.popularity_source == "bundle"
    meta = json.loads((path / "meta.json").read_text())
    del meta["files"]["item_popularity.npy"]
    (path / "item_popularity.npy").unlink()
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(BundleError, match="no checksum for item_popularity.npy"):
        load_bundle(path)
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    old = load_bundle(path)
    assert old.popularity_source == "seen items"
    np.testing.assert_array_equal(old.item_popularity, ds.popularity())
    none = np.zeros(0, dtype=np.int64)
    for kind in ("popular", "debiased"):
        np.testing.assert_array_equal(
            old.fallback(kind, 12, none, None)[1], fresh.fallback(kind, 12, none, None)[1]
        )


@pytest.mark.parametrize("size", [0, 1, 5, 40, 256, 257, 2000])
def test_sorted_unique_and_union_agree_with_numpy_on_either_side_of_the_python_cut(
    size: int,
) -> None:
    """Small sets are merged in Python (no GIL hand-off), large ones by numpy; both must give
    numpy's answer: sorted, unique, int64."""
    rng = np.random.default_rng(size)
    a = rng.integers(0, max(1, size), size)  # duplicates likely
    b = rng.integers(0, 3 * max(1, size), size // 2 + 1)
    got = sorted_unique(a)
    assert got.dtype == np.int64 and got.tolist() == np.unique(a).tolist()
    assert sorted_unique(a.tolist()).tolist() == np.unique(a).tolist()
    union = sorted_union(a.astype(np.int64), b.astype(np.int64))
    assert union.dtype == np.int64 and union.tolist() == np.union1d(a, b).tolist()
    assert sorted_union(NO_ITEMS, b).tolist() == np.unique(b).tolist()
    assert sorted_union(a, NO_ITEMS).tolist() == np.unique(a).tolist()
