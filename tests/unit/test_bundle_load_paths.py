"""Every way a serving bundle reaches a process answers like brute force over the model.

A bundle is read into memory (the default), mapped from its files (settings.serving_mmap),
fetched from the artifact store into this host's cache (a URL pointer), or found in that
cache by a process started later, with the store itself gone. Each path, on an exact index
and on an IVF index probed in full (whose vectors sit in item_emb.npy, mapped or not), is
checked on its own against lists computed here in float64 from the model's embeddings and
the dataset: plain top-k with and without seen items, a filtered row, a folded-in history,
similar items and the popular fallback. No path is compared with another.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from bundle_fixtures import make_bundle

from service.core.artifacts import ArtifactStore, bundle_key
from service.core.config import Settings
from service.serving.bundle import ServingBundle, load_bundle
from service.serving.filters import RowQuery, resolve_filters
from service.serving.foldin import FOLD_IN_LAMBDA
from service.serving.index_store import IndexStore
from training.dataset import Dataset

faiss.omp_set_num_threads(1)
K = 15
N_USERS, N_ITEMS = 30, 500


def top(scores: np.ndarray, k: int, banned: np.ndarray | list[int] = ()) -> list[int]:
    """Brute-force top-k: equal scores, lower index first; banned items never."""
    s = np.array(scores, dtype=np.float64)
    s[np.asarray(banned, dtype=np.int64)] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))
    return [int(i) for i in order[np.isfinite(s[order])][:k]]


def seen_of(ds: Dataset, u: int) -> np.ndarray:
    train = ds.csr("train")
    return train.indices[train.indptr[u] : train.indptr[u + 1]]


def load_copy(path: Path, tmp: Path, nprobe: int) -> ServingBundle:
    return load_bundle(path, nprobe=nprobe)


def load_mmap(path: Path, tmp: Path, nprobe: int) -> ServingBundle:
    return load_bundle(path, nprobe=nprobe, mmap=True)


def _stored(path: Path, tmp: Path) -> tuple[str, str]:
    """Put the bundle in a file:// artifact store as a publish job would; (url, location)."""
    url = f"file://{tmp / 'shared-store'}"
    writer = ArtifactStore(url, tmp / "worker")
    key = bundle_key("m1", "0123abcd-job")
    writer.put(key, path)
    return url, writer.location(key)


def _api_store(url: str, data_dir: Path, nprobe: int, mmap: bool) -> IndexStore:
    settings = Settings(data_dir=data_dir, artifact_url=url, nprobe=nprobe, serving_mmap=mmap)
    return IndexStore(settings, None)


def load_fetched(path: Path, tmp: Path, nprobe: int, mmap: bool = False) -> ServingBundle:
    url, location = _stored(path, tmp)
    store = _api_store(url, tmp / "api", nprobe, mmap)
    bundle = store.load_now({"model_id": "m1", "bundle_dir": location, "published_at": "t0"})
    assert bundle.path.is_relative_to(store.artifacts.cache_dir)  # fetched into the cache
    return bundle


def load_fetched_mmap(path: Path, tmp: Path, nprobe: int) -> ServingBundle:
    return load_fetched(path, tmp, nprobe, mmap=True)


def load_from_cache(path: Path, tmp: Path, nprobe: int) -> ServingBundle:
    """A process started after the fetch finds the bundle in the cache: the store is gone."""
    url, location = _stored(path, tmp)
    first = _api_store(url, tmp / "api", nprobe, False)
    first.load_now({"model_id": "m1", "bundle_dir": location, "published_at": "t0"})
    shutil.rmtree(tmp / "shared-store")
    later = _api_store(url, tmp / "api", nprobe, False)
    return later.load_now({"model_id": "m1", "bundle_dir": location, "published_at": "t0"})


LOADS: dict[str, Callable[[Path, Path, int], ServingBundle]] = {
    "copy": load_copy,
    "mmap": load_mmap,
    "store-fetch": load_fetched,
    "store-fetch-mmap": load_fetched_mmap,
    "store-cache": load_from_cache,
}


@pytest.fixture(scope="module", params=["Flat", "IVF8,Flat"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("load-paths")
    nprobe = 8  # every IVF list probed: exact
    path, ds, model = make_bundle(
        root, factory=request.param, n_users=N_USERS, n_items=N_ITEMS, max_seen=30, nprobe=nprobe
    )
    return path, ds, model, nprobe


@pytest.mark.parametrize("how", list(LOADS))
def test_every_load_path_answers_like_brute_force(built, how: str, tmp_path: Path) -> None:
    path, ds, model, nprobe = built
    b = LOADS[how](path, tmp_path, nprobe)
    q = model.item_emb.astype(np.float64)
    user_scores = model.user_emb.astype(np.float64) @ q.T  # (n_users, n_items)
    users = np.arange(ds.n_users)

    # plain rows, seen items dropped and kept
    _, with_seen = b.recommend(users, K, exclude_seen=False)
    _, without = b.recommend(users, K, exclude_seen=True)
    for u in users.tolist():
        assert with_seen[u].tolist() == top(user_scores[u], K), (how, u)
        assert without[u].tolist() == top(user_scores[u], K, seen_of(ds, u)), (how, u)

    # every unseen item and nothing else, when k is the whole catalogue
    _, everything = b.recommend(users, N_ITEMS, exclude_seen=True)
    for u in users.tolist():
        unseen = set(range(N_ITEMS)) - set(seen_of(ds, u).tolist())
        row = everything[u].tolist()
        assert set(row) - {-1} == unseen and row.count(-1) == N_ITEMS - len(unseen), (how, u)

    # a filtered row: exclude two ids, head and tail groups only (groups from the dataset)
    groups = ds.groups(4)
    filters = resolve_filters(b, ["i3", "i4"], None, [0, 3])
    _, rows = b.recommend(users, K, True, [filters.query()] * len(users))
    for u in users.tolist():
        s = user_scores[u].copy()
        s[~np.isin(groups, [0, 3])] = -np.inf
        banned = np.union1d(seen_of(ds, u), [3, 4])
        assert [i for i in rows[u].tolist() if i >= 0] == top(s, K, banned), (how, u)

    # a folded-in history: ridge regression solved here as a stacked least-squares problem
    history = np.array([5, 17, 17, 230, 499])
    hs = q[np.unique(history)]
    lam = FOLD_IN_LAMBDA * float(np.mean(np.sum(q * q, axis=1)))
    a = np.vstack([hs, np.sqrt(lam) * np.eye(q.shape[1])])
    y = np.concatenate([np.ones(len(hs)), np.zeros(q.shape[1])])
    u_hist = np.linalg.lstsq(a, y, rcond=None)[0]
    np.testing.assert_allclose(b.fold_in(history), u_hist, rtol=1e-4, atol=1e-7)
    _, rows = b.recommend(np.array([-1]), K, False, [RowQuery(history, None, history)])
    assert rows[0].tolist() == top(q @ u_hist, K, history), how

    # similar items: cosine over the item vectors, the item itself left out
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    for item in (0, 123, 499):
        _, rows = b.recommend(
            np.array([-1]), K, False, [RowQuery(np.array([item]), None, None, item)]
        )
        assert rows[0].tolist() == top(unit @ unit[item], K, [item]), (how, item)

    # the popular fallback: training interactions per item, counted from the dataset
    pop = np.bincount(ds.train[:, 1], minlength=ds.n_items)
    _, fallback = b.fallback("popular", K, np.zeros(0, dtype=np.int64), None)
    assert fallback.tolist() == np.lexsort((np.arange(ds.n_items), -pop))[:K].tolist(), how
