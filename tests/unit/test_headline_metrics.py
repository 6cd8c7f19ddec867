"""The headline figure, NDCG, against hand-computed answers where a wrong IDCG shows.

NDCG@K normalises by IDCG over min(K, |T_u|) slots (METRICS.md A). A code path that takes
the IDCG of the largest K (or of K slots whatever |T_u|) only differs from the right one
for users with more positives than some K, so the fixture has users with 3, 15, 30 and 60
positives and K in {10, 20, 50}.

The trainer's validation NDCG@20 (what early stopping and tuning select on) must be the
report's NDCG@20 on the validation split: same users, same lists, same definition.

Each check is also run against a deliberately broken copy of the code (a mutant built
from the module's source with one line changed) and must fail there: a check that passes
on the mutant is no check. When the line to mutate is gone (a refactor), the mutant test
skips and says which line to look for.
"""

from __future__ import annotations

import inspect
import math
import sys
import types
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import training.metrics as metrics_mod
import training.trainer as trainer_mod
import training.validation as validation_mod
from training.config import EvalConfig, OptimConfig
from training.dataset import Dataset
from training.evaluation import evaluate_embeddings, evaluate_topk
from training.models import MF
from training.scoring import EmbeddingScorer

KS = (10, 20, 50)
N_ITEMS = 200
TRAIN_ITEMS = np.arange(180, 200)  # every user's training items; lists and positives use 0..179


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is ~50x faster than two contended ones on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _disc(k: int) -> float:
    return 1.0 / math.log2(k + 1)


def _ndcg_by_hand(lst: list[int], positives: set[int], k: int) -> float:
    """The METRICS.md definition, one user, written as plainly as possible."""
    dcg = sum(_disc(slot) for slot, item in enumerate(lst[:k], start=1) if item in positives)
    idcg = sum(_disc(slot) for slot in range(1, min(k, len(positives)) + 1))
    return dcg / idcg


def _fixture() -> tuple[np.ndarray, list[set[int]]]:
    """4 users, lists of 50, hit slots chosen so every K gives a different figure.

    u0: 15 positives (more than K=10), 12 of them in the list at irregular slots.
    u1: 30 positives (more than K=10, 20), hits in slots 1-10 and 21-40.
    u2: 60 positives (more than every K), every slot a hit: NDCG@K = 1 for each K.
    u3: 3 positives (fewer than every K), hits at slots 2, 9, 45.
    """
    rng = np.random.default_rng(0)
    spec = {
        0: (15, [1, 2, 4, 7, 11, 12, 15, 19, 23, 30, 41, 50]),
        1: (30, list(range(1, 11)) + list(range(21, 41))),
        2: (60, list(range(1, 51))),
        3: (3, [2, 9, 45]),
    }
    lists, positives = [], []
    for n_pos, hit_slots in spec.values():
        perm = rng.permutation(180)
        pos = perm[:n_pos]
        others = iter(perm[n_pos:])
        hits = iter(pos)
        lst = [int(next(hits)) if slot in hit_slots else int(next(others)) for slot in range(1, 51)]
        lists.append(lst)
        positives.append({int(i) for i in pos})
    return np.array(lists, dtype=np.int64), positives


def _positives_csr(positives: list[set[int]]) -> sp.csr_matrix:
    rows = [u for u, p in enumerate(positives) for _ in p]
    cols = [i for p in positives for i in sorted(p)]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(positives), N_ITEMS))


def _expected() -> dict[int, np.ndarray]:
    lists, positives = _fixture()
    return {
        k: np.array(
            [_ndcg_by_hand(list(lst), pos, k) for lst, pos in zip(lists, positives, strict=True)]
        )
        for k in KS
    }


def test_the_fixture_separates_per_k_idcg_from_largest_k_idcg():
    """Sanity of the fixture itself: a few values by hand, and per-K IDCG matters."""
    exp = _expected()
    assert exp[10][2] == exp[20][2] == exp[50][2] == pytest.approx(1.0)
    d = [_disc(k) for k in range(1, 51)]
    assert exp[10][3] == pytest.approx((d[1] + d[8]) / (d[0] + d[1] + d[2]))
    assert exp[50][3] == pytest.approx((d[1] + d[8] + d[44]) / (d[0] + d[1] + d[2]))
    # u1: hits 1-10 -> NDCG@10 = 1; NDCG@20 = DCG(1..10) / IDCG(20)
    assert exp[10][1] == pytest.approx(1.0)
    assert exp[20][1] == pytest.approx(sum(d[:10]) / sum(d[:20]))
    # the wrong normaliser (IDCG of the largest K) would give visibly different numbers
    assert exp[10][0] != pytest.approx(exp[10][0] * sum(d[:10]) / sum(d[:15]))


def _check_compute_metrics(compute: Callable[..., metrics_mod.MetricResult]) -> None:
    lists, positives = _fixture()
    res = compute(
        lists,
        _positives_csr(positives),
        pop=np.ones(N_ITEMS, dtype=np.int64),
        groups=np.zeros(N_ITEMS, dtype=np.int64),
        head=np.zeros(N_ITEMS, dtype=bool),
        n_train_users=4,
        ks=KS,
        n_groups=1,
    )
    exp = _expected()
    for k in KS:
        np.testing.assert_allclose(
            res.per_user[f"ndcg@{k}"], exp[k], rtol=1e-12, err_msg=f"per-user NDCG@{k}"
        )
        assert res.metrics[f"ndcg@{k}"] == pytest.approx(exp[k].mean(), rel=1e-12), f"NDCG@{k}"
        # one group holding every item: the group NDCG is the overall NDCG
        assert res.groups[f"ndcg@{k}"][0] == pytest.approx(exp[k].mean(), rel=1e-12), (
            f"group NDCG@{k}"
        )


def _dataset() -> Dataset:
    """The fixture as a dataset: the same 4 users' test positives, 20 training items each."""
    _, positives = _fixture()
    train = np.array([[u, i] for u in range(4) for i in TRAIN_ITEMS], dtype=np.int64)
    test = np.array([[u, i] for u, p in enumerate(positives) for i in sorted(p)], dtype=np.int64)
    return Dataset(
        name="ndcg-fixture",
        user_ids=np.array([f"u{u}" for u in range(4)]),
        item_ids=np.array([f"i{i}" for i in range(N_ITEMS)]),
        train=train,
        valid=np.empty((0, 2), dtype=np.int64),
        test=test,
    )


def _check_report(evaluate: Callable[..., dict]) -> None:
    lists, _ = _fixture()
    report = evaluate(_dataset(), lists, cfg=EvalConfig(ks=KS, groups=2), split="test")
    exp = _expected()
    for k in KS:
        assert report["metrics"][f"ndcg@{k}"] == pytest.approx(exp[k].mean(), rel=1e-12), (
            f"report NDCG@{k}"
        )


def test_compute_metrics_ndcg_uses_the_idcg_of_each_k():
    _check_compute_metrics(metrics_mod.compute_metrics)


def test_the_quality_report_ndcg_uses_the_idcg_of_each_k():
    _check_report(evaluate_topk)


# -- mutants ------------------------------------------------------------------------------
def _mutant_module(
    module: types.ModuleType, old: str, new: str, monkeypatch: pytest.MonkeyPatch
) -> types.ModuleType:
    """A copy of `module` with `old` replaced by `new` in its source (production file untouched)."""
    src = inspect.getsource(module)
    if src.count(old) != 1:
        pytest.skip(f"{module.__name__} no longer holds {old!r} exactly once: update the mutant")
    name = f"{module.__name__}_mutant"
    mod = types.ModuleType(name)
    mod.__file__ = module.__file__
    monkeypatch.setitem(sys.modules, name, mod)  # dataclasses look their module up
    exec(compile(src.replace(old, new), f"<mutant of {module.__file__}>", "exec"), mod.__dict__)
    return mod


def _on_embeddings(scorer_fn: Callable) -> Callable:
    """A scorer_validation variant called the way the trainer's validation_metrics is."""

    def fn(
        user_emb: torch.Tensor, item_emb: torch.Tensor, *args: object, **kw: object
    ) -> dict[str, float]:
        return scorer_fn(EmbeddingScorer(user_emb, item_emb), *args, **kw)

    return fn


def _mutant_function(fn: Callable, old: str, new: str) -> Callable:
    """fn re-defined from its own source with `old` replaced, in fn's module globals."""
    src = inspect.getsource(fn)
    if src.count(old) != 1:
        pytest.skip(f"{fn.__qualname__} no longer holds {old!r} exactly once: update the mutant")
    scope: dict = {}
    exec(
        compile(src.replace(old, new), f"<mutant of {fn.__qualname__}>", "exec"),
        fn.__globals__,
        scope,
    )
    return scope[fn.__name__]


IDCG_PER_K = "cumdisc[np.minimum(n_pos, k)]"
IDCG_LARGEST_K = "cumdisc[np.minimum(n_pos, kmax)]"


def test_ndcg_checks_catch_idcg_over_the_largest_k(monkeypatch):
    """Mutant: NDCG normalised by the IDCG of the largest K instead of each K."""
    mutant = _mutant_module(metrics_mod, IDCG_PER_K, IDCG_LARGEST_K, monkeypatch)
    with pytest.raises(AssertionError, match="NDCG@10"):
        _check_compute_metrics(mutant.compute_metrics)
    monkeypatch.setattr("training.evaluation.compute_metrics", mutant.compute_metrics)
    with pytest.raises(AssertionError, match="report NDCG@10"):
        _check_report(evaluate_topk)


def test_ndcg_checks_catch_idcg_over_k_slots_whatever_the_positives(monkeypatch):
    """Mutant: IDCG over K slots even when the user has fewer positives (u3 has 3)."""
    mutant = _mutant_module(metrics_mod, IDCG_PER_K, "cumdisc[np.full_like(n_pos, k)]", monkeypatch)
    with pytest.raises(AssertionError, match="NDCG@10"):
        _check_compute_metrics(mutant.compute_metrics)


# -- the trainer's validation NDCG is the report's -----------------------------------------
def _validation(
    fn: Callable, dataset: Dataset, user_emb: np.ndarray, item_emb: np.ndarray, k: int = 20
) -> dict[str, float]:
    return fn(
        torch.from_numpy(user_emb),
        torch.from_numpy(item_emb),
        dataset.csr("train"),
        dataset.csr("valid"),
        k=k,
    )


def _report_valid(dataset: Dataset, user_emb: np.ndarray, item_emb: np.ndarray) -> dict[str, float]:
    return evaluate_embeddings(
        dataset, user_emb, item_emb, split="valid", cfg=EvalConfig(ks=(10, 20, 50))
    )["metrics"]


def _many_valid_positives() -> tuple[Dataset, np.ndarray, np.ndarray]:
    """30 users x 120 items; user 0 has 40 validation positives, the others 1..25; the
    embeddings lean toward each user's validation items so lists hold hits and misses."""
    rng = np.random.default_rng(1)
    n_users, n_items, d = 30, 120, 8
    train, valid, test = [], [], []
    for u in range(n_users):
        n_valid = 40 if u == 0 else int(rng.integers(1, 26))
        perm = rng.permutation(n_items)
        train += [[u, int(i)] for i in perm[:10]]
        valid += [[u, int(i)] for i in perm[10 : 10 + n_valid]]
        test += [[u, int(perm[10 + n_valid])]]
    ds = Dataset(
        name="many-valid",
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        train=np.array(train),
        valid=np.array(valid),
        test=np.array(test),
    )
    item_emb = rng.normal(size=(n_items, d)).astype(np.float32)
    vcsr = ds.csr("valid")
    user_emb = (vcsr @ item_emb + 2.0 * rng.normal(size=(n_users, d))).astype(np.float32)
    return ds, user_emb, item_emb


def _check_validation_matches_report(
    fn: Callable, dataset: Dataset, user_emb: np.ndarray, item_emb: np.ndarray
) -> None:
    ours = _validation(fn, dataset, user_emb, item_emb)
    report = _report_valid(dataset, user_emb, item_emb)
    assert 0.0 < report["ndcg@20"] < 1.0, "the fixture must have hits and misses"
    assert ours["ndcg@20"] == pytest.approx(report["ndcg@20"], rel=1e-9, abs=1e-12), (
        "validation NDCG@20"
    )
    assert ours["recall@20"] == pytest.approx(report["recall@20"], rel=1e-9, abs=1e-12), (
        "validation Recall@20"
    )


def test_validation_ndcg_is_the_report_ndcg_on_tiny_synthetic(tiny_dataset):
    truth = tiny_dataset.truth
    rng = np.random.default_rng(0)
    # noisy truth: a plausible model, neither perfect nor random
    user_emb = (truth.user_factors + rng.normal(scale=0.5, size=truth.user_factors.shape)).astype(
        np.float32
    )
    _check_validation_matches_report(
        trainer_mod.validation_metrics,
        tiny_dataset,
        user_emb,
        truth.item_factors.astype(np.float32),
    )


def test_validation_ndcg_is_the_report_ndcg_for_users_with_more_than_20_positives():
    ds, user_emb, item_emb = _many_valid_positives()
    assert np.diff(ds.csr("valid").indptr).max() > 20
    _check_validation_matches_report(trainer_mod.validation_metrics, ds, user_emb, item_emb)
    # and by hand for user 0 (40 positives): IDCG over 20 slots
    ours_u0 = trainer_mod.validation_metrics(
        torch.from_numpy(user_emb[:1]),
        torch.from_numpy(item_emb),
        ds.csr("train")[:1],
        ds.csr("valid")[:1],
        k=20,
    )
    lst = np.argsort(-(user_emb[0] @ item_emb.T), kind="stable")
    lst = [int(i) for i in lst if i not in set(ds.csr("train")[0].indices)][:20]
    assert ours_u0["ndcg@20"] == pytest.approx(
        _ndcg_by_hand(lst, set(ds.csr("valid")[0].indices), 20)
    )


def test_validation_check_catches_idcg_over_k_slots():
    """Mutant: validation IDCG over K slots whatever |T_u| (the classic wrong normaliser)."""
    mutant = _on_embeddings(
        _mutant_function(validation_mod.scorer_validation, "np.minimum(n_pos, k) - 1", "k - 1")
    )
    ds, user_emb, item_emb = _many_valid_positives()
    with pytest.raises(AssertionError, match="validation NDCG@20"):
        _check_validation_matches_report(mutant, ds, user_emb, item_emb)


def test_validation_check_catches_training_items_left_in_the_lists():
    """Mutant: validation ranks without excluding the training items."""
    mutant = _on_embeddings(
        _mutant_function(validation_mod.scorer_validation, "block, train, k", "block, None, k")
    )
    ds, user_emb, item_emb = _many_valid_positives()
    with pytest.raises(AssertionError, match="validation"):
        _check_validation_matches_report(mutant, ds, user_emb, item_emb)


def test_fit_reports_the_validation_ndcg_the_report_gives_its_model(tiny_dataset):
    """What fit() selects epochs on (history valid_ndcg@20) is the report's valid NDCG@20
    of the embeddings it returns (one epoch, so the best epoch is that epoch)."""
    ds = tiny_dataset
    train = ds.csr("train")
    model = MF(ds.n_users, ds.n_items, 8)
    cfg = OptimConfig(epochs=1, batch_size=256, lr=0.05, eval_every=1, seed=0)
    res = trainer_mod.fit(model, ds.train, train, ds.csr("valid"), cfg, device=torch.device("cpu"))
    assert res.best_epoch == 1
    report = _report_valid(ds, res.user_emb, res.item_emb)
    assert res.history[0]["valid_ndcg@20"] == pytest.approx(report["ndcg@20"], rel=1e-6)
    assert res.history[0]["valid_recall@20"] == pytest.approx(report["recall@20"], rel=1e-6)
