"""The distillers: UnKD's sampler (within-group pairs, teacher order, the exp(-r/mu) law),
teacher candidate lists, and every distiller's loss falling over a few epochs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

from training.config import DistillConfig
from training.distill import build_distiller
from training.distill.ranking import rank_probabilities, sample_ranks, teacher_candidates
from training.distill.unkd import group_budget, sample_unkd_pairs
from training.models import MF
from training.popularity import popularity_groups
from training.scoring import EmbeddingScorer


def _random_problem(n_users: int = 60, n_items: int = 80, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Long-tailed training data so the popularity groups differ in size.
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    p /= p.sum()
    rows, cols = [], []
    for u in range(n_users):
        items = rng.choice(n_items, size=rng.integers(3, 15), replace=False, p=p)
        rows += [u] * len(items)
        cols += list(items)
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    t_user = torch.from_numpy(rng.normal(size=(n_users, d)).astype(np.float32))
    t_item = torch.from_numpy(rng.normal(size=(n_items, d)).astype(np.float32))
    pop = np.asarray(train.sum(0)).ravel().astype(np.int64)
    return train, t_user, t_item, popularity_groups(pop, 4)


def test_candidates_are_unobserved_group_members_in_teacher_order():
    train, t_user, t_item, groups = _random_problem()
    cands = teacher_candidates(EmbeddingScorer(t_user, t_item), train, groups, top_l=10, chunk=7)
    scores = (t_user @ t_item.T).numpy()
    for u in range(train.shape[0]):
        seen = set(train[u].indices)
        for g in range(4):
            lo = int(cands.offsets[g])
            n = int(cands.lengths[u, g])
            row = cands.items[u, lo : lo + n].numpy()
            unseen = [i for i in np.flatnonzero(groups == g) if i not in seen]
            best = sorted(unseen, key=lambda i: -scores[u, i])[: len(row)]
            assert n == min(10, len(unseen))
            assert list(row) == best
            assert (cands.items[u, lo + n : lo + int(cands.widths[g])] == -1).all()


def test_candidates_do_not_depend_on_the_user_chunk():
    train, t_user, t_item, groups = _random_problem()
    a = teacher_candidates(EmbeddingScorer(t_user, t_item), train, groups, top_l=12, chunk=5)
    b = teacher_candidates(EmbeddingScorer(t_user, t_item), train, groups, top_l=12, chunk=1000)
    assert torch.equal(a.items, b.items) and torch.equal(a.lengths, b.lengths)


@pytest.mark.parametrize("block", [None, 7])
def test_unkd_pairs_stay_within_a_group_and_follow_the_teacher(block, monkeypatch):
    if block is not None:  # users drawn in blocks (SAMPLE_BLOCK_USERS): every user still gets pairs
        monkeypatch.setattr("training.distill.unkd.SAMPLE_BLOCK_USERS", block)
    train, t_user, t_item, groups = _random_problem()
    cands = teacher_candidates(EmbeddingScorer(t_user, t_item), train, groups, top_l=20)
    gen = torch.Generator().manual_seed(1)
    pairs = sample_unkd_pairs(cands, pairs_per_user=30, mu=5.0, epoch=1, generator=gen)
    u, i, j = (pairs[k].numpy() for k in ("u", "i", "j"))
    assert len(u) > 0
    assert (groups[i] == groups[j]).all(), "a pair crossed popularity groups"
    assert (i != j).all()
    scores = (t_user @ t_item.T).numpy()
    assert (scores[u, i] >= scores[u, j]).all(), "the teacher's better item must be the positive"
    dense = train.toarray()
    assert dense[u, i].sum() == 0 and dense[u, j].sum() == 0, "training items are never candidates"
    per_user = np.bincount(u, minlength=train.shape[0])
    assert (per_user[cands.lengths.numpy().max(1) >= 2] > 0).all(), (
        "a user with candidates got no pairs"
    )


def test_group_budget_splits_pairs_equally_over_epochs():
    counts = np.zeros(4)
    for epoch in range(4):
        counts += np.bincount(group_budget(30, 4, epoch).numpy(), minlength=4)
    assert counts.tolist() == [30.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("n,mu", [(1000, 20.0), (50, 20.0), (7, 2.0)])
def test_rank_sampler_follows_the_exponential_law(n, mu):
    gen = torch.Generator().manual_seed(0)
    draws = sample_ranks(torch.full((200_000,), n), mu, gen).numpy()
    assert draws.min() >= 0 and draws.max() < n
    expected = rank_probabilities(n, mu) * len(draws)
    observed = np.bincount(draws, minlength=n).astype(float)
    # Pool the far tail so every cell expects at least 5 draws (chi-square validity).
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    p_value = stats.chisquare(obs, exp).pvalue
    assert p_value > 1e-3, f"ranks do not follow exp(-r/mu): p={p_value:.2e}"
    # And a wrong law is rejected: the test has power.
    wrong = rank_probabilities(n, mu * 2)[keep]
    if n > 20:
        assert (
            stats.chisquare(observed[keep], wrong / wrong.sum() * observed[keep].sum()).pvalue
            < 1e-6
        )


@pytest.mark.parametrize("method", ["unkd", "rd", "cd", "rrd"])
def test_each_distillation_loss_falls_when_optimised(method):
    train, t_user, t_item, _ = _random_problem()
    cfg = DistillConfig(
        method=method,
        dim=8,
        unkd={"top_l": 20, "mu": 5.0},
        rrd={"top_l": 20, "interesting": 5, "uninteresting": 10},
    )
    dist = build_distiller(cfg, EmbeddingScorer(t_user, t_item), train, torch.device("cpu"))
    dist.prepare()
    torch.manual_seed(0)
    student = MF(train.shape[0], train.shape[1], 8, sparse=True)  # the large-table path
    opt = torch.optim.SparseAdam(list(student.parameters()), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for epoch in range(1, 41):
        batch = dist.sample_epoch(epoch, gen)
        loss = dist.loss(student.lookup(), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), (
        f"{method} loss did not fall: {losses}"
    )


def test_none_method_has_no_distiller_and_unknown_method_is_refused():
    train, t_user, t_item, _ = _random_problem()
    assert (
        build_distiller(
            DistillConfig(method="none"),
            EmbeddingScorer(t_user, t_item),
            train,
            torch.device("cpu"),
        )
        is None
    )
    with pytest.raises(ValueError, match="method"):
        DistillConfig(method="bogus")


def test_a_student_trains_on_pairs_drawn_in_blocks(monkeypatch):
    """Users drawn in several blocks come back as int32 (half the memory); the trainer widens
    every batch to int64 before the loss, and the student trains (loss falls) as with one block."""
    from training.config import OptimConfig
    from training.trainer import fit

    monkeypatch.setattr("training.distill.unkd.SAMPLE_BLOCK_USERS", 7)
    train, t_user, t_item, _ = _random_problem()
    cfg = DistillConfig(method="unkd", dim=8, unkd={"top_l": 20, "mu": 5.0})
    dist = build_distiller(cfg, EmbeddingScorer(t_user, t_item), train, torch.device("cpu"))
    dist.prepare()
    drawn = dist.sample_epoch(1, torch.Generator().manual_seed(0))
    assert {t.dtype for t in drawn.values()} == {torch.int32}
    assert len(drawn["u"]) > 0 and set(np.unique(drawn["u"].numpy())) == set(range(train.shape[0]))
    seen: list[torch.dtype] = []
    loss = dist.loss
    monkeypatch.setattr(
        dist, "loss", lambda emb, batch: seen.append(batch["u"].dtype) or loss(emb, batch)
    )
    coo = train.tocoo()
    pairs = np.stack([coo.row, coo.col], axis=1).astype(np.int64)
    student = MF(train.shape[0], train.shape[1], 8)
    result = fit(
        student,
        pairs,
        train,
        train,
        OptimConfig(epochs=6, batch_size=64, lr=0.05, eval_every=3),
        device=torch.device("cpu"),
        distiller=dist,
        lambda_kd=1.0,
    )
    assert seen and set(seen) == {torch.int64}
    losses = [row["loss"] for row in result.history]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
