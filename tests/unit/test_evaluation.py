"""training.evaluation and training.topk: chunked top-k, the report's shape, teacher comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training.config import EvalConfig
from training.dataset import Dataset, SyntheticTruth
from training.evaluation import (
    attach_teacher,
    evaluate_embeddings,
    evaluate_topk,
    evaluated_users,
    exclusion_csr,
    most_popular_topk,
    render_table,
    topk_from_embeddings,
)

CFG = EvalConfig(ks=(5, 10, 20), groups=3)
METRIC_NAMES = (
    "recall",
    "ndcg",
    "precision",
    "hit",
    "mrr",
    "mrecall",
    "mndcg",
    "recall_popular",
    "ndcg_popular",
    "recall_unpopular",
    "ndcg_unpopular",
    "ips_recall",
    "ips_ndcg",
    "arp",
    "narp",
    "aplt",
    "aclt",
    "coverage",
    "gini",
    "entropy",
    "nentropy",
    "pop_rsp",
    "pop_reo",
    "dtr",
    "popularity_bias",
    "novelty",
    "epc",
    "head_share",
)


def make_dataset(
    n_users: int = 60, n_items: int = 80, truth: bool = False, seed: int = 0
) -> Dataset:
    """Random long-tailed interactions, split per pair 70/10/20."""
    rng = np.random.default_rng(seed)
    n = n_users * 12
    items = np.minimum((rng.pareto(1.2, n) * 8).astype(np.int64), n_items - 1)
    pairs = np.unique(np.stack([rng.integers(0, n_users, n), items], axis=1), axis=0)
    cut = rng.random(len(pairs))
    t = None
    if truth:
        t = SyntheticTruth(
            rng.normal(size=(n_users, 4)).astype(np.float32),
            rng.normal(size=(n_items, 4)).astype(np.float32),
        )
    return Dataset(
        name="tiny",
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        train=pairs[cut < 0.7],
        valid=pairs[(cut >= 0.7) & (cut < 0.8)],
        test=pairs[cut >= 0.8],
        truth=t,
    )


def embeddings(ds: Dataset, seed: int, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(ds.n_users, d)).astype(np.float32),
        rng.normal(size=(ds.n_items, d)).astype(np.float32),
    )


def brute_topk(scores: np.ndarray, excl: sp.csr_matrix, k: int) -> np.ndarray:
    """Reference: full sort by (score desc, item index asc), excluded items dropped, -1 padded."""
    out = np.full((len(scores), k), -1, dtype=np.int64)
    for u, row in enumerate(scores):
        order = np.lexsort((np.arange(len(row)), -row))
        order = order[~np.isin(order, excl[u].indices)][:k]
        out[u, : len(order)] = order
    return out


# -- top-k ---------------------------------------------------------------------------------
def test_topk_lives_in_training_topk_and_evaluation_re_exports_it() -> None:
    import training.evaluation as evaluation
    import training.topk as topk

    # training.trainer and older callers import it from training.evaluation
    assert evaluation.topk_from_embeddings is topk.topk_from_embeddings
    assert {"topk_from_embeddings", "attach_teacher", "render_table"} <= set(evaluation.__all__)
    assert all(hasattr(evaluation, name) for name in evaluation.__all__)


def test_topk_excludes_training_items_and_matches_a_full_sort():
    ds = make_dataset()
    ue, ie = embeddings(ds, 1)
    users = np.arange(ds.n_users)
    train = ds.csr("train")
    top = topk_from_embeddings(ue, ie, users, train, 10)
    assert top.shape == (ds.n_users, 10) and top.dtype == np.int64
    assert not any(np.isin(top[u], train[u].indices).any() for u in users)
    np.testing.assert_array_equal(top, brute_topk(ue @ ie.T, train, 10))


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_topk_is_independent_of_chunk_size(chunk):
    ds = make_dataset()
    ue, ie = embeddings(ds, 2)
    users = evaluated_users(ds)
    excl = exclusion_csr(ds)
    ref = topk_from_embeddings(ue, ie, users, excl, 20, chunk=len(users))
    np.testing.assert_array_equal(topk_from_embeddings(ue, ie, users, excl, 20, chunk=chunk), ref)


def test_topk_tie_break_lower_index_first():
    # scores of one user: item 0..5 -> [1, 2, 2, 2, 0, 2]; the four 2s tie at the cut
    ue = np.ones((1, 1), dtype=np.float32)
    ie = np.array([[1], [2], [2], [2], [0], [2]], dtype=np.float32)
    assert topk_from_embeddings(ue, ie, np.array([0]), None, 2).tolist() == [[1, 2]]
    assert topk_from_embeddings(ue, ie, np.array([0]), None, 5).tolist() == [[1, 2, 3, 5, 0]]
    # a tie inside the list but not across the cut (the fast path): scores [5, 2, 9, 2, 0, 9]
    ie = np.array([[5], [2], [9], [2], [0], [9]], dtype=np.float32)
    assert topk_from_embeddings(ue, ie, np.array([0]), None, 3).tolist() == [[2, 5, 0]]
    assert topk_from_embeddings(ue, ie, np.array([0]), None, 4).tolist() == [[2, 5, 0, 1]]
    # integer embeddings: many exact ties, still the same as the (score, index) full sort
    rng = np.random.default_rng(3)
    ue, ie = (
        rng.integers(-1, 2, (40, 2)).astype(np.float32),
        rng.integers(-1, 2, (30, 2)).astype(np.float32),
    )
    excl = sp.random(40, 30, density=0.2, format="csr", random_state=0)
    for chunk in (3, 64):
        top = topk_from_embeddings(ue, ie, np.arange(40), excl, 12, chunk=chunk)
        np.testing.assert_array_equal(top, brute_topk(ue @ ie.T, excl, 12))


DEVICES = ["cpu"] + [pytest.param("cuda", marks=pytest.mark.gpu)] * torch.cuda.is_available()


@pytest.mark.parametrize("device", DEVICES)
def test_topk_same_lists_on_every_device(device):
    # float scores (fast path) and integer scores (ties across the cut: exact path)
    rng = np.random.default_rng(6)
    excl = sp.random(50, 40, density=0.3, format="csr", random_state=1)
    for ue, ie in (
        (rng.normal(size=(50, 4)), rng.normal(size=(40, 4))),
        (rng.integers(-1, 2, (50, 2)), rng.integers(-1, 2, (40, 2))),
    ):
        ue, ie = ue.astype(np.float32), ie.astype(np.float32)
        top = topk_from_embeddings(
            ue, ie, np.arange(50), excl, 15, chunk=8, device=torch.device(device)
        )
        np.testing.assert_array_equal(top, brute_topk(ue @ ie.T, excl, 15))


def test_topk_pads_with_minus_one_and_takes_torch_tensors():
    ue = torch.ones((2, 1))
    ie = torch.arange(5, dtype=torch.float32)[:, None]
    excl = sp.csr_matrix((np.ones(3), ([0, 0, 0], [4, 2, 0])), shape=(2, 5))
    top = topk_from_embeddings(ue, ie, np.array([0, 1]), excl, 4)
    assert top.tolist() == [[3, 1, -1, -1], [4, 3, 2, 1]]


def test_topk_refuses_nan_embeddings():
    ie = np.array([[np.nan], [1.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        topk_from_embeddings(np.ones((1, 1)), ie, np.array([0]), None, 1)


def test_most_popular_ranks_by_training_popularity():
    ds = make_dataset()
    users = evaluated_users(ds)
    top = most_popular_topk(ds, users, 5)
    pop = ds.popularity()
    excl = exclusion_csr(ds)
    np.testing.assert_array_equal(
        top, brute_topk(np.tile(pop.astype(float), (len(users), 1)), excl[users], 5)
    )


# -- the report ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ds():
    return make_dataset(truth=True)


@pytest.fixture(scope="module")
def student_report(ds):
    ue, ie = embeddings(ds, 4, d=3)
    return evaluate_embeddings(ds, ue, ie, cfg=CFG, reference=embeddings(ds, 5))


@pytest.fixture(scope="module")
def teacher_report(ds):
    return evaluate_embeddings(ds, *embeddings(ds, 5), cfg=CFG)


def test_report_has_the_documented_keys_and_is_json(ds, student_report):
    r = student_report
    json.dumps(r, allow_nan=False)
    assert set(r) == {"protocol", "users_evaluated", "metrics", "groups", "ci"}
    proto = r["protocol"]
    for key in (
        "ks",
        "groups",
        "ips_gamma",
        "head_mass",
        "split",
        "tie_break",
        "excluded",
        "definitions",
    ):
        assert key in proto
    assert proto["excluded"] == "train+valid" and proto["ks"] == [5, 10, 20]
    assert "head_mass 0.8" in proto["definitions"]["aplt"]
    assert r["users_evaluated"] == len(np.unique(ds.test[:, 0]))
    expected = {f"{name}@{k}" for name in METRIC_NAMES for k in (5, 10, 20)}
    expected |= {
        f"{name}@{k}"
        for name in ("overlap", "oracle_precision", "oracle_ndcg")
        for k in (5, 10, 20)
    }
    assert set(r["metrics"]) == expected
    assert all(v is None or isinstance(v, float) for v in r["metrics"].values())
    assert [g["group"] for g in r["groups"]] == [0, 1, 2]
    for g in r["groups"]:
        for key in ("items", "catalog_share", "train_share", "test_share"):
            assert key in g
        for k in (5, 10, 20):
            assert {f"exposure_share@{k}", f"recall@{k}", f"ndcg@{k}", f"overlap@{k}"} <= set(g)
    assert sum(g["items"] for g in r["groups"]) == ds.n_items
    assert r["metrics"]["head_share@10"] == pytest.approx(r["groups"][0]["exposure_share@10"])
    lo, hi = r["ci"]["recall@20"]
    assert lo <= r["metrics"]["recall@20"] <= hi
    assert set(r["ci"]) == {"recall@20", "ndcg@20"}


def test_oracle_metrics_only_with_truth(ds, teacher_report):
    assert "oracle_ndcg@10" in teacher_report["metrics"]
    plain = make_dataset(truth=False)
    r = evaluate_embeddings(plain, *embeddings(plain, 5), cfg=CFG)
    assert not any(k.startswith("oracle_") for k in r["metrics"])
    assert not any(k.startswith("overlap") for k in r["metrics"])
    # ranking by the truth itself is the oracle
    perfect = evaluate_embeddings(ds, ds.truth.user_factors, ds.truth.item_factors, cfg=CFG)
    assert perfect["metrics"]["oracle_precision@10"] == pytest.approx(1.0)
    assert perfect["metrics"]["oracle_ndcg@10"] == pytest.approx(1.0)


def test_overlap_with_itself_is_one(ds):
    emb = embeddings(ds, 5)
    r = evaluate_embeddings(ds, *emb, cfg=CFG, reference=emb)
    assert r["metrics"]["overlap@10"] == pytest.approx(1.0)
    assert all(g["overlap@10"] in (None, pytest.approx(1.0)) for g in r["groups"])


def test_test_split_excludes_train_and_valid_valid_split_only_train(ds):
    ue, ie = embeddings(ds, 4)
    users = evaluated_users(ds, "test")
    top = topk_from_embeddings(ue, ie, users, exclusion_csr(ds, "test"), 20)
    seen = ds.csr("train") + ds.csr("valid")
    assert not any(np.isin(top[i], seen[u].indices).any() for i, u in enumerate(users))
    r = evaluate_embeddings(ds, ue, ie, cfg=CFG, split="valid")
    assert r["protocol"]["excluded"] == "train"
    assert r["users_evaluated"] == len(np.unique(ds.valid[:, 0]))


def test_evaluate_topk_matches_evaluate_embeddings(ds, teacher_report):
    users = evaluated_users(ds)
    top = topk_from_embeddings(*embeddings(ds, 5), users, exclusion_csr(ds), 20)
    assert evaluate_topk(ds, top, cfg=CFG) == teacher_report
    full = np.full((ds.n_users, 20), -1, dtype=np.int64)
    full[users] = top  # (n_users, K) input is accepted too
    assert evaluate_topk(ds, full, cfg=CFG)["metrics"] == teacher_report["metrics"]


def test_evaluate_topk_refuses_lists_with_seen_items(ds):
    users = evaluated_users(ds)
    top = most_popular_topk(ds, users, 20)
    seen_user = next(i for i, u in enumerate(users) if exclusion_csr(ds)[u].nnz)
    top[seen_user, 0] = exclusion_csr(ds)[users[seen_user]].indices[0]
    with pytest.raises(ValueError, match="excluded item"):
        evaluate_topk(ds, top, cfg=CFG)
    with pytest.raises(ValueError, match="columns"):
        evaluate_topk(ds, top[:, :10], cfg=CFG)


def test_attach_teacher_deltas_are_differences(student_report, teacher_report):
    r = attach_teacher(student_report, teacher_report)
    json.dumps(r, allow_nan=False)
    assert "teacher" not in student_report  # a copy, the input is unchanged
    assert r["teacher"]["metrics"] == teacher_report["metrics"]
    assert r["teacher"]["groups"] == teacher_report["groups"]
    sm, tm = student_report["metrics"], teacher_report["metrics"]
    for name, delta in r["deltas"].items():
        if delta is not None:
            assert delta == pytest.approx(sm[name] - tm[name])
    assert set(r["deltas"]) == set(sm) & set(tm)
    b = r["bias_amplification"]
    assert b["arp@10"] == pytest.approx(sm["arp@10"] / tm["arp@10"] - 1)
    assert b["head_share@10"] == pytest.approx(sm["head_share@10"] - tm["head_share@10"])
    assert b["gini@20"] == pytest.approx(sm["gini@20"] - tm["gini@20"])
    ret = r["retention"]
    assert ret["ndcg@20"] == pytest.approx(sm["ndcg@20"] / tm["ndcg@20"])
    assert ret["mrecall@10"] == pytest.approx(sm["mrecall@10"] / tm["mrecall@10"])
    s0, t0 = student_report["groups"][0], teacher_report["groups"][0]
    if t0["recall@20"]:
        assert ret["groups"][0]["recall@20"] == pytest.approx(s0["recall@20"] / t0["recall@20"])


def test_attach_teacher_refuses_other_protocols(ds, student_report):
    other = evaluate_embeddings(ds, *embeddings(ds, 5), cfg=EvalConfig(ks=(5, 10, 20), groups=4))
    with pytest.raises(ValueError, match="groups"):
        attach_teacher(student_report, other)


def test_render_table(student_report, teacher_report):
    text = render_table(student_report)
    assert "recall" in text and "@20" in text and "rec@20" in text
    assert len([ln for ln in text.splitlines() if ln.strip().startswith(("0 ", "1 ", "2 "))]) == 3
    both = render_table(attach_teacher(student_report, teacher_report))
    assert "T@20" in both and "Δ@20" in both and "bias amplification" in both
    assert render_table({}) == "no quality report"
