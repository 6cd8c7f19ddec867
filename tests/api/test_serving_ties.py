"""Serving and evaluation order tied scores by one rule: equal scores, lower item index first.

The reference is a numpy brute force (lexsort by score, then index), which the evaluation's
own top-k (training.topk.topk_from_embeddings, used by training.evaluation) must match too. The model has tied embeddings: a block of identical item vectors and
small-integer vectors everywhere else, so every score is exact in float32 and equal scores
are equal in faiss, numpy and torch alike. The app runs on the real Redis of tests/support.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.bundle_format import build_bundle
from tests.api.test_recommendations import make_dataset, publish, wait_serving
from tests.support.config import make_test_settings
from tests.support.redis_dbs import RedisDatabases
from training.checkpoint import ModelArtifact
from training.dataset import Dataset
from training.manifest import DatasetInfo, ModelManifest
from training.topk import topk_from_embeddings

N_USERS, N_ITEMS, DIM = 30, 400, 4
TIED = slice(40, 140)  # 100 items with one vector: any cut of k <= 50 falls inside the block


def tied_model(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    item_emb = rng.integers(-2, 3, size=(ds.n_items, DIM)).astype(np.float32)
    item_emb[TIED] = 2.0
    user_emb = rng.integers(0, 3, size=(ds.n_users, DIM)).astype(
        np.float32
    )  # >= 0: the block ranks high
    return user_emb, item_emb


@pytest.fixture(scope="module")
def tied(
    redis_databases: RedisDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Dataset, np.ndarray, np.ndarray]]:
    root = tmp_path_factory.mktemp("serving-ties")
    ds = make_dataset(n_users=N_USERS, n_items=N_ITEMS, max_seen=20, seed=11)
    user_emb, item_emb = tied_model(ds)
    artifact = ModelArtifact(
        user_emb=user_emb,
        item_emb=item_emb,
        manifest=ModelManifest(
            kind="student", model="mf", dim=DIM, dataset=DatasetInfo(fingerprint=ds.fingerprint)
        ),
    )
    build_bundle(artifact.save(root / "model"), ds, root / "bundle", model_id="T")
    settings = make_test_settings(
        "ties",
        redis_url=redis_databases.reserve(),
        data_dir=root / "data",
        max_k=100,
        reload_poll_s=0.2,
    )
    with TestClient(create_app(settings)) as c:
        r = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
        publish(r, "T", Path(root / "bundle"))
        r.close()
        assert wait_serving(c, "T")
        yield c, ds, user_emb, item_emb


def evaluation_lists(
    ds: Dataset,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    k: int,
    exclude_seen: bool = True,
    extra: list[int] | None = None,
) -> np.ndarray:
    """training.topk's lists: the order of the quality reports."""
    excl = ds.csr("train").tolil() if exclude_seen else None
    if extra:
        excl = excl if excl is not None else ds.csr("train").tolil() * 0
        for u in range(ds.n_users):
            for i in extra:
                excl[u, i] = 1
    csr = excl.tocsr() if excl is not None else None
    evaluation = topk_from_embeddings(user_emb, item_emb, np.arange(ds.n_users), csr, k)
    # The answer itself comes from a numpy brute force (exact integer scores, lexsort by
    # (-score, index)); evaluation must agree with it, and serving is compared with both.
    scores = user_emb.astype(np.float64) @ item_emb.astype(np.float64).T  # (n_users, n_items)
    if csr is not None:
        scores[csr.toarray() > 0] = -np.inf
    brute = np.full((ds.n_users, k), -1, dtype=np.int64)
    for u in range(ds.n_users):
        order = np.lexsort((np.arange(ds.n_items), -scores[u]))
        kept = order[np.isfinite(scores[u][order])][:k]
        brute[u, : len(kept)] = kept
    np.testing.assert_array_equal(evaluation, brute)
    return brute


def items_of(body: dict) -> list[int]:
    return [int(it["item_id"][1:]) for it in body["items"]]


@pytest.mark.parametrize("k", [5, 20, 50])
def test_get_and_batch_order_ties_as_evaluation_does(tied, k: int) -> None:
    c, ds, user_emb, item_emb = tied
    expected = evaluation_lists(ds, user_emb, item_emb, k)
    cut_in_block = 0
    for u in range(N_USERS):
        body = c.get(f"/v1/recommendations/u{u}", params={"k": k}).json()
        assert items_of(body) == expected[u].tolist(), f"user {u}"
        scores = [it["score"] for it in body["items"]]
        assert len(set(scores)) < len(scores)  # the list does hold ties
        cut_in_block += items_of(body)[-1] in range(TIED.start, TIED.stop)
    assert cut_in_block > 0  # some lists end inside the tied block: the cut itself is tested
    batch = c.post(
        "/v1/recommendations", json={"user_ids": [f"u{u}" for u in range(N_USERS)], "k": k}
    ).json()
    assert [items_of(res) for res in batch["results"]] == expected.tolist()


def test_ties_with_seen_items_kept_and_with_filters(tied) -> None:
    c, ds, user_emb, item_emb = tied
    expected = evaluation_lists(ds, user_emb, item_emb, 30, exclude_seen=False)
    for u in range(0, N_USERS, 3):
        body = c.get(f"/v1/recommendations/u{u}", params={"k": 30, "exclude_seen": "false"}).json()
        assert items_of(body) == expected[u].tolist()
    excluded = [40, 41, 45, 139]
    expected = evaluation_lists(ds, user_emb, item_emb, 25, extra=excluded)
    params = [("k", 25), *(("exclude", f"i{i}") for i in excluded)]
    for u in range(N_USERS):
        assert (
            items_of(c.get(f"/v1/recommendations/u{u}", params=params).json())
            == expected[u].tolist()
        )
    batch = c.post(
        "/v1/recommendations",
        json={"user_ids": ["u0", "u1"], "k": 25, "exclude": [f"i{i}" for i in excluded]},
    ).json()
    assert [items_of(res) for res in batch["results"]] == expected[:2].tolist()


def test_similar_items_of_a_tied_item_list_its_twins_by_index(tied) -> None:
    c, _, _, _ = tied
    body = c.get("/v1/items/i90/similar", params={"k": 60}).json()
    twins = [i for i in range(TIED.start, TIED.stop) if i != 90][:60]  # cosine 1, lower index first
    assert items_of(body) == twins
