"""The laws and invariants of what each distiller feeds the student, checked on its output
(sample_epoch), against teacher ranks computed here from the teacher's scores.

UnKD (DESIGN.md): for every (u, g), two ranks r1 != r2 drawn i.i.d. with P(r) ∝ exp(-r/mu)
over the candidate list (the group's unobserved items, best first, at most L); the better
rank is the positive. So for a list of length n, with p_r = q^r / Σ q^s (q = e^{-1/mu}) and
Z = 1 - Σ p_r², the pair (positive rank a, negative rank b) has the law
    P(a, b) = 2 p_a p_b / Z  for a < b,
and the negative's rank the marginal P(b) = 2 p_b Σ_{a<b} p_a / Z. Both are chi-square
tested over many pairs; a second rank drawn almost uniformly must fail the same test.

RD, CD, RRD (DESIGN.md baselines): RD's extra positives are the teacher's top-K unobserved
items weighted exp(-r/λ); CD's items follow P(r) ∝ exp(-r/λ) with labels σ(t/T); RRD's
K interesting items come from the teacher's top ranks, in teacher order, its L
uninteresting ones from below them, never a training item, and its Plackett–Luce loss is
lowest for the teacher's order.

Every check also runs against a broken variant (a monkeypatched sampler, candidate
builder or output) and must fail there.
"""

from __future__ import annotations

import inspect
import itertools
import textwrap
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

import training.distill.base as base_mod
import training.distill.baselines as baselines_mod
import training.distill.unkd as unkd_mod
from training.config import DistillConfig
from training.distill import build_distiller
from training.distill.base import Distiller, KDBatch
from training.models.lookup import DenseLookup
from training.popularity import item_popularity, popularity_groups
from training.scoring import EmbeddingScorer

CPU = torch.device("cpu")
N_USERS, N_ITEMS, DIM, G = 120, 300, 8, 4
P_MIN = 1e-3  # seeded draws: a correct sampler passes, a wrong one lands far below


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is ~50x faster than two contended ones on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the problem: long-tailed training data and a random teacher --------------------------
class Problem:
    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        p = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.9
        p /= p.sum()
        rows, cols = [], []
        for u in range(N_USERS):
            items = rng.choice(N_ITEMS, size=rng.integers(5, 21), replace=False, p=p)
            rows += [u] * len(items)
            cols += list(items)
        self.train = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS)
        )
        self.seen = self.train.toarray() > 0
        self.t_user = torch.from_numpy(rng.normal(size=(N_USERS, DIM)).astype(np.float32))
        self.t_item = torch.from_numpy(rng.normal(size=(N_ITEMS, DIM)).astype(np.float32))
        self.scores = (self.t_user @ self.t_item.T).numpy().astype(np.float64)
        self.groups = popularity_groups(item_popularity(self.train.tocoo().col, N_ITEMS), G)
        # rank of every unobserved item among the user's unobserved items, catalogue-wide
        # and within its group; -1 for training items
        self.rank_all = self._ranks(np.zeros(N_ITEMS, dtype=np.int64))
        self.rank_group = self._ranks(self.groups)
        self.unobserved = np.stack(
            [((self.groups == g)[None, :] & ~self.seen).sum(1) for g in range(G)], axis=1
        )  # (n_users, G)

    def _ranks(self, groups: np.ndarray) -> np.ndarray:
        out = np.full((N_USERS, N_ITEMS), -1, dtype=np.int64)
        for g in np.unique(groups):
            s = np.where((groups == g)[None, :] & ~self.seen, self.scores, -np.inf)
            order = np.argsort(-s, axis=1, kind="stable")
            n = np.isfinite(s).sum(1)
            for u in range(N_USERS):  # test code: plain loops are fine here
                out[u, order[u, : n[u]]] = np.arange(n[u])
        return out


@pytest.fixture(scope="module")
def prob() -> Problem:
    return Problem()


def make_distiller(cfg: DistillConfig, prob: Problem) -> Distiller:
    """The distiller of cfg.method on the problem's teacher (a scorer over its embeddings)."""
    d = build_distiller(cfg, EmbeddingScorer(prob.t_user, prob.t_item, CPU), prob.train, CPU)
    assert d is not None
    d.prepare()
    return d


def _forgetting_training_items(real: Callable) -> Callable:
    """Mutant of teacher_candidates: ranks with an empty training matrix, so the lists
    hold the user's training items (skips when the function takes no `train`)."""
    sig = inspect.signature(real)
    if "train" not in sig.parameters:
        pytest.skip("teacher_candidates no longer takes `train`: update the mutant")

    def keep_training_items(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.arguments["train"] = sp.csr_matrix(bound.arguments["train"].shape, dtype=np.float32)
        return real(*bound.args, **bound.kwargs)

    return keep_training_items


def _epochs(d: Distiller, epochs: range, seed: int = 0) -> list[KDBatch]:
    gen = torch.Generator().manual_seed(seed)
    return [d.sample_epoch(e, gen) for e in epochs]


def _np(batch: KDBatch) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in batch.items()}


def _cat(batches: list[KDBatch]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([_np(b)[k] for b in batches]) for k in batches[0]}


def _chisquare(observed: np.ndarray, expected: np.ndarray) -> float:
    """p-value with cells expecting < 5 pooled into one (chi-square validity)."""
    observed, expected = observed.ravel().astype(float), expected.ravel().astype(float)
    ok = expected >= 5
    obs, exp = list(observed[ok]), list(expected[ok])
    if expected[~ok].sum() > 0:
        obs.append(observed[~ok].sum())
        exp.append(expected[~ok].sum())
    assert observed[expected == 0].sum() == 0, "draws in cells the law gives probability 0"
    exp_a = np.array(exp) * (sum(obs) / sum(exp))  # guard float drift in the totals
    return float(stats.chisquare(np.array(obs), exp_a).pvalue)


def _exp_law(n: int, mu: float) -> np.ndarray:
    w = np.exp(-np.arange(n) / mu)
    return w / w.sum()


# == UnKD ======================================================================================
UNKD_CFG = {"groups": G, "pairs_per_user": 30, "mu": 20.0, "top_l": 40}  # mu: the default
UNKD_EPOCHS = range(1, 17)  # 16 epochs x 120 users x 30 pairs ≈ 57k pairs
# A sharper law (mu small against the list length): there, drawing r2 again alone after a
# clash (P(r1=a, r2=b) = p_a p_b / (1 - p_a)) and drawing the pair again (p_a p_b / Z) differ
# by far more than the sampling noise of 8 epochs.
SHARP = {"mu": 3.0, "top_l": 40}
SHARP_EPOCHS = range(1, 9)


def _unkd(prob: Problem, **cfg) -> Distiller:
    return make_distiller(DistillConfig(method="unkd", unkd={**UNKD_CFG, **cfg}), prob)


@pytest.fixture(scope="module")
def unkd_batches(prob: Problem) -> list[KDBatch]:
    return _epochs(_unkd(prob), UNKD_EPOCHS)


def _pair_law(n: int, mu: float) -> np.ndarray:
    """(n, n) P(positive rank a, negative rank b): 2 p_a p_b / (1 - Σp²) above the diagonal."""
    p = _exp_law(n, mu)
    m = np.triu(2.0 * np.outer(p, p), k=1)
    return m / (1.0 - (p**2).sum())


def _check_unkd_invariants(prob: Problem, batches: list[KDBatch]) -> None:
    top_l, n_pairs = UNKD_CFG["top_l"], UNKD_CFG["pairs_per_user"]
    for epoch, batch in enumerate(batches, start=1):
        b = _np(batch)
        u, i, j = b["u"], b["i"], b["j"]
        assert (prob.groups[i] == prob.groups[j]).all(), "a pair crosses popularity groups"
        assert not prob.seen[u, i].any() and not prob.seen[u, j].any(), (
            "a pair holds a training item"
        )
        assert (i != j).all(), "a pair compares an item with itself"
        assert (prob.scores[u, i] >= prob.scores[u, j]).all(), (
            "the teacher's worse item is the positive"
        )
        assert (prob.rank_group[u, i] < top_l).all() and (prob.rank_group[u, j] < top_l).all(), (
            "an item beyond the top-L candidates of its group"
        )
        # the budget: N pairs per user split equally over the groups that can form a pair
        count = np.zeros((N_USERS, G), dtype=np.int64)
        np.add.at(count, (u, prob.groups[i]), 1)
        can = np.minimum(prob.unobserved, top_l) >= 2
        assert (count[~can] == 0).all(), f"epoch {epoch}: pairs from a list shorter than 2"
        lo, hi = n_pairs // G, -(-n_pairs // G)
        assert ((count[can] >= lo) & (count[can] <= hi)).all(), (
            f"epoch {epoch}: pairs per (user, group) outside [{lo}, {hi}] (equal split of N={n_pairs})"
        )
        full = can.all(axis=1)
        assert (count[full].sum(axis=1) == n_pairs).all(), f"epoch {epoch}: not N pairs per user"
    # over G consecutive epochs every (user, group) gets exactly N pairs
    total = np.zeros((N_USERS, G), dtype=np.int64)
    for batch in batches[:G]:
        b = _np(batch)
        np.add.at(total, (b["u"], prob.groups[b["i"]]), 1)
    can = np.minimum(prob.unobserved, top_l) >= 2
    assert (total[can] == n_pairs).all(), "over G epochs the groups did not get N pairs each"


def _pair_ranks(prob: Problem, batches: list[KDBatch], top_l: int):
    """(positive rank, negative rank, list length) of every pair, from the teacher's scores."""
    b = _cat(batches)
    u, i, j = b["u"], b["i"], b["j"]
    n = np.minimum(prob.unobserved[u, prob.groups[i]], top_l)
    a, r = prob.rank_group[u, i], prob.rank_group[u, j]
    assert (a >= 0).all() and (r >= 0).all(), "a pair holds a training item"
    assert (n >= 2).all(), "a pair from a list shorter than 2"
    return a, r, n


def _check_pair_law(a: np.ndarray, r: np.ndarray, n: np.ndarray, mu: float) -> None:
    width = int(n.max())
    expected = np.zeros((width, width))
    for length, count in zip(*np.unique(n, return_counts=True), strict=True):
        expected[:length, :length] += count * _pair_law(int(length), mu)
    observed = np.zeros((width, width))
    np.add.at(observed, (a, r), 1)
    p_neg = _chisquare(observed.sum(0), expected.sum(0))
    assert p_neg > P_MIN, f"the negative's rank does not follow the pair law: p={p_neg:.2e}"
    p_pos = _chisquare(observed.sum(1), expected.sum(1))
    assert p_pos > P_MIN, f"the positive's rank does not follow the pair law: p={p_pos:.2e}"
    p_joint = _chisquare(observed, expected)
    assert p_joint > P_MIN, (
        f"(positive rank, negative rank) does not follow the pair law: p={p_joint:.2e}"
    )


def _check_unkd_law(
    prob: Problem,
    batches: list[KDBatch],
    mu: float = UNKD_CFG["mu"],
    top_l: int = UNKD_CFG["top_l"],
) -> None:
    _check_pair_law(*_pair_ranks(prob, batches, top_l), mu)


def test_unkd_pairs_keep_the_invariants(prob, unkd_batches):
    _check_unkd_invariants(prob, unkd_batches)


def test_unkd_pair_ranks_follow_two_iid_exponential_draws(prob, unkd_batches):
    _check_unkd_law(prob, unkd_batches)


def test_unkd_pair_law_holds_where_the_clash_rule_shows(prob):
    _check_unkd_law(prob, _epochs(_unkd(prob, **SHARP), SHARP_EPOCHS), SHARP["mu"], SHARP["top_l"])


def test_unkd_lists_stop_where_the_sampler_cannot_reach_and_the_law_holds(prob):
    """mu 2 against top_l 40: the lists stop early (the default mu 20 stops at 277, not 1000),
    every list is the head of the full list, and the pairs follow the law of the full lists."""
    short = _unkd(prob, mu=2.0, top_l=40)
    full = _unkd(prob, mu=1000.0, top_l=40)  # mu this large keeps every one of the 40 ranks
    width = int(short.cands.widths.max())
    assert width < 40 and int(full.cands.widths.max()) == 40
    # What the shorter lists leave out, by the law over the full lists: under 1e-6; one rank
    # fewer would leave out more.
    law = _exp_law(40, 2.0)
    assert law[width:].sum() < 1e-6 <= law[width - 1 :].sum()
    for g in range(short.cands.n_groups):
        s_lo, f_lo = int(short.cands.offsets[g]), int(full.cands.offsets[g])
        w = int(short.cands.widths[g])
        assert torch.equal(
            short.cands.items[:, s_lo : s_lo + w], full.cands.items[:, f_lo : f_lo + w]
        )
    _check_unkd_law(prob, _epochs(short, SHARP_EPOCHS), mu=2.0, top_l=40)


def _redraw(
    n: np.ndarray, mu: float, rng: np.random.Generator, both: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Reference samplers in numpy: ranks r1 != r2 on lists of length n, P(r) ∝ exp(-r/mu);
    on a clash draw both again (the i.i.d. law) or r2 alone (what unkd.py does today)."""

    def draw(m: np.ndarray) -> np.ndarray:
        out = np.empty(len(m), dtype=np.int64)
        for k in np.unique(m):
            at = m == k
            out[at] = rng.choice(int(k), size=int(at.sum()), p=_exp_law(int(k), mu))
        return out

    r1, r2 = draw(n), draw(n)
    clash = r1 == r2
    while clash.any():
        if both:
            r1[clash] = draw(n[clash])
        r2[clash] = draw(n[clash])
        clash = r1 == r2
    return np.minimum(r1, r2), np.maximum(r1, r2)


def test_the_pair_law_check_passes_iid_pairs_and_fails_a_redraw_of_r2_alone(prob):
    """The expectation of the law test above is right: reference draws on the same lists pass
    when a clash redraws both ranks and fail when it redraws r2 alone."""
    _, _, n = _pair_ranks(prob, _epochs(_unkd(prob, **SHARP), range(1, 5)), SHARP["top_l"])
    n = np.repeat(n, 2)  # as many pairs as the law test draws
    rng = np.random.default_rng(0)
    _check_pair_law(*_redraw(n, SHARP["mu"], rng, both=True), n, SHARP["mu"])
    with pytest.raises(AssertionError, match="pair law"):
        _check_pair_law(*_redraw(n, SHARP["mu"], rng, both=False), n, SHARP["mu"])


def test_unkd_law_check_catches_an_almost_uniform_second_rank(prob, monkeypatch):
    """Mutant: the first rank follows exp(-r/mu), the second (and its redraws) mu x 100."""
    real = unkd_mod.sample_ranks
    calls = []

    def second_almost_uniform(lengths, mu, generator):
        calls.append(len(lengths))
        return real(lengths, mu if len(calls) == 1 else mu * 100.0, generator)

    d = _unkd(prob)
    monkeypatch.setattr(unkd_mod, "sample_ranks", second_almost_uniform)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for e in range(1, 5):
        calls.clear()
        batches.append(d.sample_epoch(e, gen))
        if len(calls) < 2:
            pytest.skip("UnKD no longer draws its second rank by a separate sample_ranks call")
    _check_unkd_invariants(prob, batches)  # still valid pairs: only the law is wrong
    with pytest.raises(AssertionError, match="negative's rank"):
        _check_unkd_law(prob, batches)


def test_unkd_law_check_catches_a_slightly_wrong_temperature(prob, monkeypatch):
    """Mutant: both ranks drawn with mu x 1.3 (the test's power, not just gross errors)."""
    real = unkd_mod.sample_ranks
    d = _unkd(prob)
    monkeypatch.setattr(unkd_mod, "sample_ranks", lambda n, mu, g: real(n, mu * 1.3, g))
    with pytest.raises(AssertionError, match="does not follow the pair law"):
        _check_unkd_law(prob, _epochs(d, UNKD_EPOCHS))


def test_unkd_invariant_checks_catch_broken_variants(prob, unkd_batches, monkeypatch):
    # positive and negative swapped in every other pair
    swapped = []
    for batch in unkd_batches[:G]:
        b = dict(batch)
        flip = torch.arange(len(b["i"])) % 2 == 0
        b["i"], b["j"] = (
            torch.where(flip, batch["j"], batch["i"]),
            torch.where(flip, batch["i"], batch["j"]),
        )
        swapped.append(b)
    with pytest.raises(AssertionError, match="worse item is the positive"):
        _check_unkd_invariants(prob, swapped)
    # every pair slot given to the head group
    monkeypatch.setattr(unkd_mod, "group_budget", lambda n, g, e: torch.zeros(n, dtype=torch.int64))
    with pytest.raises(AssertionError, match="pairs"):
        _check_unkd_invariants(prob, _epochs(_unkd(prob), range(1, 5)))
    monkeypatch.undo()
    # candidate lists that forgot to drop the user's training items
    monkeypatch.setattr(
        base_mod, "teacher_candidates", _forgetting_training_items(base_mod.teacher_candidates)
    )
    with pytest.raises(AssertionError, match="training item"):
        _check_unkd_invariants(prob, _epochs(_unkd(prob), range(1, 3)))


# == RD ========================================================================================
RD_CFG = {"top_k": 10, "rank_lambda": 3.0}


def _check_rd(prob: Problem, batch: KDBatch) -> None:
    b = _np(batch)
    u, i, w = b["u"], b["i"], b["w"].astype(np.float64)
    k, lam = RD_CFG["top_k"], RD_CFG["rank_lambda"]
    assert not prob.seen[u, i].any(), "an RD positive is a training item"
    r = prob.rank_all[u, i]
    assert (r >= 0).all() and (r < k).all(), "an RD positive outside the teacher's top-K unobserved"
    slots = np.zeros((N_USERS, k), dtype=np.int64)
    np.add.at(slots, (u, r), 1)
    assert (slots == 1).all(), "each user needs each of the teacher's top-K unobserved items once"
    weight = np.zeros((N_USERS, k))
    weight[u, r] = w
    ratio = weight / weight[:, :1]
    np.testing.assert_allclose(
        ratio,
        np.broadcast_to(np.exp(-np.arange(k) / lam), ratio.shape),
        rtol=1e-5,
        err_msg="RD weights are not ∝ exp(-r/λ) in rank order",
    )


def _rd(prob: Problem) -> Distiller:
    return make_distiller(DistillConfig(method="rd", rd=RD_CFG), prob)


def test_rd_positives_are_the_teachers_top_k_unobserved_weighted_by_rank(prob):
    for batch in _epochs(_rd(prob), range(1, 3)):
        _check_rd(prob, batch)


def test_rd_checks_catch_broken_variants(prob, monkeypatch):
    batch = _epochs(_rd(prob), range(1, 2))[0]
    flat = dict(batch, w=torch.ones_like(batch["w"]))
    with pytest.raises(AssertionError, match="exp"):
        _check_rd(prob, flat)
    reversed_w = dict(batch, w=batch["w"].flip(0))
    with pytest.raises(AssertionError, match="exp"):
        _check_rd(prob, reversed_w)
    monkeypatch.setattr(
        base_mod,
        "teacher_candidates",
        _forgetting_training_items(base_mod.teacher_candidates),
    )
    broken = _epochs(_rd(prob), range(1, 2))[0]
    with pytest.raises(AssertionError, match="training item"):
        _check_rd(prob, broken)


# == CD ========================================================================================
CD_CFG = {"samples": 20, "rank_lambda": 5.0, "temperature": 2.0, "top_l": 30}


def _cd(prob: Problem) -> Distiller:
    return make_distiller(DistillConfig(method="cd", cd=CD_CFG), prob)


def _check_cd(prob: Problem, batches: list[KDBatch]) -> None:
    b = _cat(batches)
    u, i, y = b["u"], b["i"], b["y"].astype(np.float64)
    top_l = CD_CFG["top_l"]
    assert not prob.seen[u, i].any(), "a CD item is a training item"
    r = prob.rank_all[u, i]
    assert (r >= 0).all() and (r < top_l).all(), "a CD item outside the teacher's top-L"
    assert len(u) == N_USERS * CD_CFG["samples"] * len(batches), "samples per user"
    np.testing.assert_allclose(
        y,
        1.0 / (1.0 + np.exp(-prob.scores[u, i] / CD_CFG["temperature"])),
        rtol=1e-5,
        atol=1e-6,
        err_msg="CD soft labels are not σ(t/T)",
    )
    observed = np.bincount(r, minlength=top_l)
    expected = _exp_law(top_l, CD_CFG["rank_lambda"]) * len(r)
    p = _chisquare(observed, expected)
    assert p > P_MIN, f"CD ranks do not follow exp(-r/λ): p={p:.2e}"


def test_cd_samples_follow_the_rank_law_with_soft_labels(prob):
    assert (prob.unobserved.sum(1) >= CD_CFG["top_l"]).all()  # every list is top_l long
    _check_cd(prob, _epochs(_cd(prob), range(1, 21)))


def test_cd_checks_catch_broken_variants(prob, monkeypatch):
    batches = _epochs(_cd(prob), range(1, 21))
    no_temperature = [
        dict(b, y=torch.sigmoid(torch.logit(b["y"].double()) * 2).float()) for b in batches
    ]
    with pytest.raises(AssertionError, match="σ"):
        _check_cd(prob, no_temperature)
    real = baselines_mod.sample_ranks
    monkeypatch.setattr(baselines_mod, "sample_ranks", lambda n, lam, g: real(n, lam * 100.0, g))
    with pytest.raises(AssertionError, match="exp"):
        _check_cd(prob, _epochs(_cd(prob), range(1, 21)))


# == RRD =======================================================================================
RRD_CFG = {"interesting": 2, "uninteresting": 10, "top_l": 10, "rank_lambda": 3.0}
RRD_EPOCHS = range(1, 41)  # one row per user per epoch: 4,800 draws of a 2-set among 45


def _rrd(prob: Problem, **cfg) -> Distiller:
    return make_distiller(DistillConfig(method="rrd", rrd={**RRD_CFG, **cfg}), prob)


def _two_set_law(n: int, lam: float) -> np.ndarray:
    """(n, n) P({a, b}), a < b, for 2 ranks drawn without replacement, P(r) ∝ exp(-r/λ)
    (successive sampling: the law of a Gumbel top-2)."""
    p = _exp_law(n, lam)
    m = np.outer(p, p) * (1.0 / (1.0 - p)[:, None] + 1.0 / (1.0 - p)[None, :])
    return np.triu(m, k=1)


def _check_rrd_interesting(prob: Problem, batches: list[KDBatch], k: int, top_l: int) -> None:
    b = _cat(batches)
    u, pos = b["u"], b["pos"]
    assert pos.shape[1] == k, "K interesting items per row"
    assert not prob.seen[u[:, None], pos].any(), "an interesting item is a training item"
    r = prob.rank_all[u[:, None], pos]
    assert (r >= 0).all() and (r < top_l).all(), (
        "an interesting item outside the teacher's top ranks"
    )
    assert (np.diff(r, axis=1) > 0).all(), "interesting items not distinct, in the teacher's order"


def _check_rrd_interesting_law(prob: Problem, batches: list[KDBatch]) -> None:
    b = _cat(batches)
    r = prob.rank_all[b["u"][:, None], b["pos"]]
    assert (r >= 0).all(), "an interesting item is a training item"
    n, lam = RRD_CFG["top_l"], RRD_CFG["rank_lambda"]
    observed = np.zeros((n, n))
    np.add.at(observed, (r[:, 0], r[:, 1]), 1)
    p = _chisquare(observed, _two_set_law(n, lam) * len(r))
    assert p > P_MIN, f"interesting items are not drawn ∝ exp(-r/λ) without replacement: p={p:.2e}"


def _check_rrd_uninteresting(prob: Problem, batches: list[KDBatch]) -> None:
    b = _cat(batches)
    u, pos, neg = b["u"], b["pos"], b["neg"]
    assert neg.shape[1] == RRD_CFG["uninteresting"], "L uninteresting items per row"
    assert not prob.seen[u[:, None], neg].any(), "an uninteresting item is a training item"
    below = prob.rank_all[u[:, None], neg] > prob.rank_all[u[:, None], pos].max(1, keepdims=True)
    assert below.all(), "an uninteresting item ranks above an interesting one"


def test_rrd_interesting_items_come_from_the_top_ranks_in_teacher_order(prob):
    _check_rrd_interesting(
        prob, _epochs(_rrd(prob, interesting=5), range(1, 4)), 5, RRD_CFG["top_l"]
    )


def test_rrd_interesting_items_follow_the_rank_law(prob):
    batches = _epochs(_rrd(prob), RRD_EPOCHS)
    _check_rrd_interesting(prob, batches, 2, RRD_CFG["top_l"])
    _check_rrd_interesting_law(prob, batches)


def test_rrd_uninteresting_items_are_unobserved_and_below_the_interesting_ones(prob):
    _check_rrd_uninteresting(prob, _epochs(_rrd(prob), range(1, 4)))


def test_rrd_sampling_checks_catch_broken_variants(prob):
    batches = _epochs(_rrd(prob, interesting=5), range(1, 4))
    flipped = [dict(b, pos=b["pos"].flip(1)) for b in batches]
    with pytest.raises(AssertionError, match="teacher's order"):
        _check_rrd_interesting(prob, flipped, 5, RRD_CFG["top_l"])
    d = _rrd(prob)
    if not isinstance(getattr(d, "log_p", None), torch.Tensor):
        pytest.skip("RRD no longer keeps its rank log-weights in `log_p`: update the mutant")
    d.log_p = torch.zeros_like(d.log_p)  # interesting items drawn uniformly from the top ranks
    with pytest.raises(AssertionError, match="exp"):
        _check_rrd_interesting_law(prob, _epochs(d, RRD_EPOCHS))
    # the uninteresting check has power too: a row whose negatives are training items
    good = _epochs(_rrd(prob), range(1, 2))[0]
    seen_items = torch.from_numpy(np.argmax(prob.seen, axis=1))
    bad = dict(good, neg=good["neg"].clone())
    bad["neg"][:, 0] = seen_items[good["u"]]
    with pytest.raises(AssertionError, match="training item"):
        _check_rrd_uninteresting(prob, [bad])


def _plackett_luce_by_hand(s_pos: np.ndarray, s_neg: np.ndarray) -> float:
    """mean over rows of -Σ_k [s_k - log(Σ_{m>=k} e^{s_m} + Σ_n e^{s_n})]."""
    total = 0.0
    for sp_row, sn_row in zip(s_pos, s_neg, strict=True):
        for k in range(len(sp_row)):
            total -= sp_row[k] - np.log(np.exp(sp_row[k:]).sum() + np.exp(sn_row).sum())
    return total / len(s_pos)


def _rrd_batch(prob: Problem, k: int = 4, n_neg: int = 6) -> KDBatch:
    """Every user's teacher top-k unobserved items in order, and n_neg items from far below."""
    pos = np.stack(
        [
            np.argsort(np.where(prob.rank_all[u] >= 0, prob.rank_all[u], 10**9))[:k]
            for u in range(N_USERS)
        ]
    )
    neg = np.stack([np.flatnonzero(prob.rank_all[u] >= 50)[:n_neg] for u in range(N_USERS)])
    return {"u": torch.arange(N_USERS), "pos": torch.from_numpy(pos), "neg": torch.from_numpy(neg)}


def _check_rrd_loss(prob: Problem, loss: Callable[[DenseLookup, KDBatch], torch.Tensor]) -> None:
    student = DenseLookup(prob.t_user.double(), prob.t_item.double())  # agrees with the teacher
    batch = _rrd_batch(prob)
    s = prob.scores
    u = batch["u"].numpy()
    by_hand = _plackett_luce_by_hand(
        s[u[:, None], batch["pos"].numpy()], s[u[:, None], batch["neg"].numpy()]
    )
    assert float(loss(student, batch)) == pytest.approx(by_hand, rel=1e-6), (
        "RRD loss is not the Plackett–Luce loss"
    )
    teacher_order = float(loss(student, batch))
    k = batch["pos"].shape[1]
    for perm in itertools.permutations(range(k)):
        if perm == tuple(range(k)):
            continue
        other = float(loss(student, dict(batch, pos=batch["pos"][:, list(perm)])))
        assert teacher_order < other, f"RRD loss not lowest in the teacher's order (vs {perm})"
    swapped = dict(
        batch, pos=batch["neg"][:, :k], neg=torch.cat([batch["pos"], batch["neg"][:, k:]], 1)
    )
    assert teacher_order < float(loss(student, swapped)), (
        "RRD loss prefers uninteresting items on top"
    )


def test_rrd_loss_is_plackett_luce_and_prefers_the_teachers_order(prob):
    d = _rrd(prob)
    _check_rrd_loss(prob, d.loss)


def test_rrd_loss_check_catches_broken_variants(prob):
    def as_a_set(emb, batch):  # order ignored: every interesting item against all items
        pu = emb.user(batch["u"]).unsqueeze(1)
        s_pos = (pu * emb.item(batch["pos"])).sum(-1)
        s_all = torch.cat([s_pos, (pu * emb.item(batch["neg"])).sum(-1)], 1)
        return -(s_pos - torch.logsumexp(s_all, 1, keepdim=True)).sum(1).mean()

    with pytest.raises(AssertionError, match="Plackett"):
        _check_rrd_loss(prob, as_a_set)
    # the real loss with its cumulative sum running the wrong way
    src = textwrap.dedent(inspect.getsource(baselines_mod.RelaxedRankingDistillation.loss))
    old = "torch.logcumsumexp(s_pos.flip(1), dim=1).flip(1)"
    if src.count(old) != 1:
        pytest.skip("RRD loss no longer holds the reverse logcumsumexp: update the mutant")
    scope: dict = {}
    exec(src.replace(old, "torch.logcumsumexp(s_pos, dim=1)"), vars(baselines_mod), scope)
    with pytest.raises(AssertionError, match="Plackett"):
        _check_rrd_loss(prob, lambda emb, batch: scope["loss"](None, emb, batch))
