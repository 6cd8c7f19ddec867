"""Full-catalogue top-K evaluation and the quality report (DESIGN.md, METRICS.md).

Entry points share one path: `evaluate_scorer` ranks with any model that scores a block of
users against all items (training.scoring: embeddings, EASE), `evaluate_embeddings` is
that path for dot-product embeddings, and `evaluate_topk` takes lists from any ranker
(FAISS index, baseline). All return a JSON-serialisable dict (plain floats, ints, lists;
null where undefined).

Protocol: users with >= 1 positive in the split are evaluated; for split="valid" the
training items are excluded, for split="test" training *and* validation items are
excluded (the validation positives are known interactions, not candidates). On equal
scores the lower item index ranks first, exactly (`training.topk` ranks every list).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from training.config import EvalConfig
from training.dataset import Dataset
from training.metrics import (
    METRIC_BLOCK_USERS,
    MetricResult,
    bootstrap_ci,
    compute_metrics,
    oracle_metrics,
    overlap_metrics,
    row_membership,
)
from training.popularity import head_tail_split, popularity_groups
from training.report import _num, attach_teacher, render_table
from training.scoring import EmbeddingScorer, TeacherScorer
from training.topk import CPU, TIE_BREAK, topk_from_embeddings, topk_from_scorer

logger = logging.getLogger(__name__)

__all__ = [
    "attach_teacher",  # re-exported: callers import the report helpers from here
    "evaluate_embeddings",
    "evaluate_scorer",
    "evaluate_topk",
    "evaluated_users",
    "exclusion_csr",
    "most_popular_topk",
    "render_table",
    "topk_from_embeddings",  # re-exported from training.topk, where it lives
]

DEFINITIONS = {
    "recall": "|L∩T|/|T| averaged over users (denominator |T|, not min(K,|T|))",
    "ndcg": "binary gain, disc(k)=1/log2(k+1), IDCG over min(K,|T|) slots",
    "groups": "UnKD popularity groups: items sorted by φ desc, equal training-interaction mass, 0 = head",
    "group_recall": "UnKD RecallAndPrecisionByGroup with denominator |U_g|, U_g = {u: T_u∩G_g ≠ ∅}",
    "mrecall": "mean of Recall_g over groups with U_g ≠ ∅ (same for mndcg)",
    "popular": "the UnKD paper's view (Chen et al., WSDM 2023): recall_popular / ndcg_popular "
    "restrict T_u to group 0, recall_unpopular / ndcg_unpopular to groups 1..G-1, each over "
    "the users with a positive in the set; the list is the full list",
    "ips": "w_i = max(φ_i,1)^-γ (φ=0 items use φ=1), per-user self-normalised; "
    "IPS-NDCG ideal = positives sorted by weight",
    "arp": "Elliot ARP, φ = training interactions; narp = arp / max φ",
    "aplt": "Elliot APLT, long tail = items outside the short head (head_mass of Σφ)",
    "aclt": "Elliot ACLT, same long tail",
    "pop_rsp": "Zhu et al. SIGIR'20 over all G groups, std/mean (population std), "
    "denominator Σ_u |g \\ excluded_u|",
    "pop_reo": "Zhu et al. SIGIR'20 over all G groups, std/mean (population std)",
    "dtr": "UnKD getDTR, group 0 vs groups 1..G-1; 1 = fair",
    "popularity_bias": "Merlin, p(i) = φ/Σφ, divided by K",
    "novelty": "Merlin, log2, φ=0 items use φ=1, divided by |U|·K",
    "epc": "Elliot / Vargas & Castells, 1 − φ/|U_train|, rank-discounted, normalised by Σ disc",
    "coverage": "fraction of the catalog recommended at least once",
    "gini": "RecBole form, never-recommended items count 0; 0 = equal",
    "entropy": "Shannon, natural log; nentropy = entropy / ln|I|",
    "head_share": "exposure share of popularity group 0",
    "overlap": "|L∩L_ref|/K per user; per group Σ_u|L∩L_ref∩G_g| / Σ_u|L_ref∩G_g|",
    "oracle": "relevance = the true top-K by truth factors among non-excluded items (binary)",
    "padding": "-1 fills lists when fewer than K items remain; padded slots count nowhere",
    "undefined": "null where a denominator is 0",
}


# -- who is evaluated and what is excluded -------------------------------------------------
def evaluated_users(dataset: Dataset, split: str = "test") -> np.ndarray:
    """(n_eval,) int64 sorted users with at least one positive in `split`."""
    return np.unique(dataset.split(split)[:, 0]).astype(np.int64)


def exclusion_csr(dataset: Dataset, split: str = "test") -> sp.csr_matrix:
    """(n_users, n_items) CSR of the items a user can't be recommended when evaluating `split`."""
    if split == "valid":
        return dataset.csr("train")
    if split == "test":
        both = dataset.csr("train") + dataset.csr("valid")
        both.data[:] = 1.0
        return both.tocsr()
    raise ValueError(f"split={split!r}: evaluate 'valid' or 'test'")


def _excluded_name(split: str) -> str:
    return "train" if split == "valid" else "train+valid"


# -- baseline ranker -----------------------------------------------------------------------
def most_popular_topk(
    dataset: Dataset, users: np.ndarray, k: int, *, split: str = "test"
) -> np.ndarray:
    """Most-popular baseline: items by training popularity, excluded items removed.

    Returns:
        (len(users), k) int64, -1 padded; equal popularity: lower item index first.
    """
    pop = dataset.popularity().astype(np.float32)[:, None]  # exact in float32 below 2^24
    ones = np.ones((dataset.n_users, 1), dtype=np.float32)
    return topk_from_embeddings(ones, pop, users, exclusion_csr(dataset, split), k)


# -- the report ------------------------------------------------------------------------------
def _align(lists: np.ndarray, dataset: Dataset, users: np.ndarray, name: str) -> np.ndarray:
    """Rows for the evaluated users: accept (n_users, K) or (n_eval, K)."""
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim == 2 and lists.shape[0] == dataset.n_users:
        return lists[users]
    if lists.ndim == 2 and lists.shape[0] == len(users):
        return lists
    raise ValueError(
        f"{name} shape {lists.shape}: need (n_users={dataset.n_users}, K) or (evaluated users={len(users)}, K)"
    )


def _check_lists(
    lists: np.ndarray,
    excluded: sp.csr_matrix,
    n_items: int,
    kmax: int,
    block: int = METRIC_BLOCK_USERS,
) -> None:
    """Refuse lists the metrics would silently mis-score (in blocks of users)."""
    if lists.shape[1] < kmax:
        raise ValueError(f"lists have {lists.shape[1]} columns, ks need {kmax}")
    if lists.min(initial=0) < -1 or lists.max(initial=0) >= n_items:
        raise ValueError(f"item ids must lie in [0, {n_items}) or be -1 padding")
    for start in range(0, len(lists), block):
        part = np.asarray(lists[start : start + block, :kmax], dtype=np.int64)
        valid = part >= 0
        if (valid[:, 1:] & ~valid[:, :-1]).any():
            raise ValueError("-1 padding must come after every real item in a list")
        s = np.sort(part, axis=1)
        if ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any():
            raise ValueError("a list repeats an item")
        bad = row_membership(part, excluded[start : start + block], n_items)
        if bad.any():
            u, pos = np.argwhere(bad)[0]
            raise ValueError(
                f"list row {start + u} slot {pos} holds excluded item {part[u, pos]}; "
                "remove seen items first"
            )


def evaluate_topk(
    dataset: Dataset,
    topk: np.ndarray,
    *,
    cfg: EvalConfig | None = None,
    split: str = "test",
    reference_topk: np.ndarray | None = None,
    device: torch.device = CPU,
) -> dict[str, Any]:
    """The quality report from precomputed lists (any ranker).

    Args:
        topk: (n_users, >= max K) or (n_evaluated_users, >= max K) int64, best first, -1
            padded, excluded items (see `exclusion_csr`) already removed.
        reference_topk: the same for a reference ranker (teacher); adds overlap@K.
        device: used only for the oracle lists of synthetic data.
    Returns:
        dict with protocol, users_evaluated, metrics, groups, ci (module docstring).
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    ks = sorted(set(cfg.ks))
    kmax = ks[-1]
    users = evaluated_users(dataset, split)
    excl_all = exclusion_csr(dataset, split)
    excl = excl_all[users]
    lists = _align(topk, dataset, users, "topk")
    _check_lists(lists, excl, dataset.n_items, kmax)
    lists = lists[:, :kmax]

    pop = dataset.popularity()
    groups = popularity_groups(pop, cfg.groups)
    res: MetricResult = compute_metrics(
        lists,
        dataset.csr(split)[users],
        pop=pop,
        groups=groups,
        head=head_tail_split(pop, cfg.head_mass),
        n_train_users=len(np.unique(dataset.train[:, 0])),
        ks=ks,
        n_groups=cfg.groups,
        ips_gamma=cfg.ips_gamma,
        excluded=excl,
    )
    metrics, group_arrays = dict(res.metrics), dict(res.groups)
    if reference_topk is not None:
        ref = _align(reference_topk, dataset, users, "reference_topk")
        _check_lists(ref, excl, dataset.n_items, kmax)
        ov, ov_groups = overlap_metrics(lists, ref[:, :kmax], groups, ks, cfg.groups)
        metrics.update(ov)
        group_arrays.update(ov_groups)
    if dataset.truth is not None:
        oracle = topk_from_embeddings(
            dataset.truth.user_factors,
            dataset.truth.item_factors,
            users,
            excl_all,
            kmax,
            chunk=cfg.user_chunk,
            device=device,
        )
        metrics.update(oracle_metrics(lists, oracle, ks))

    k_ci = 20 if 20 in ks else kmax
    ci = {
        f"{name}@{k_ci}": [
            _num(v) for v in bootstrap_ci(res.per_user[f"{name}@{k_ci}"], n=1000, seed=0)
        ]
        for name in ("recall", "ndcg")
    }
    report = {
        "protocol": {
            "split": split,
            "ks": ks,
            "groups": cfg.groups,
            "ips_gamma": cfg.ips_gamma,
            "head_mass": cfg.head_mass,
            "excluded": _excluded_name(split),
            "users": f"users with >= 1 positive in {split}",
            "tie_break": TIE_BREAK,
            "ci": f"percentile bootstrap over users, 1000 resamples, seed 0, 95%, K={k_ci}",
            "definitions": {**DEFINITIONS, "aplt": f"Elliot APLT, head_mass {cfg.head_mass}"},
        },
        "users_evaluated": int(len(users)),
        "metrics": {name: _num(v) for name, v in metrics.items()},
        "groups": _group_rows(dataset, split, groups, pop, cfg.groups, group_arrays),
        "ci": ci,
    }
    logger.info(
        "evaluated %d users on %s in %.2fs: recall@%d=%.4f ndcg@%d=%.4f",
        len(users),
        split,
        time.perf_counter() - t0,
        k_ci,
        metrics[f"recall@{k_ci}"],
        k_ci,
        metrics[f"ndcg@{k_ci}"],
    )
    return report


def _group_rows(
    dataset: Dataset,
    split: str,
    groups: np.ndarray,
    pop: np.ndarray,
    n_groups: int,
    arrays: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """One dict per popularity group, head first."""
    sizes = np.bincount(groups, minlength=n_groups)
    train_mass = np.bincount(groups, weights=pop, minlength=n_groups)
    test_items = dataset.split(split)[:, 1]
    test_count = np.bincount(groups[test_items], minlength=n_groups)
    rows = []
    for g in range(n_groups):
        row: dict[str, Any] = {
            "group": g,
            "items": int(sizes[g]),
            "catalog_share": _num(sizes[g] / max(1, dataset.n_items)),
            "train_share": _num(train_mass[g] / max(1.0, pop.sum())),
            "test_share": _num(test_count[g] / max(1, len(test_items))),
            "users": int(arrays["users"][g]),
        }
        for name in ("exposure_share", "recall", "ndcg", "overlap"):
            for key in sorted(
                (k for k in arrays if k.startswith(f"{name}@")), key=lambda s: int(s.split("@")[1])
            ):
                row[key] = _num(arrays[key][g])
        rows.append(row)
    return rows


def evaluate_scorer(
    dataset: Dataset,
    scorer: TeacherScorer,
    *,
    cfg: EvalConfig | None = None,
    split: str = "test",
    reference: TeacherScorer | None = None,
) -> dict[str, Any]:
    """Rank every evaluated user with any scorer (training.scoring) and build the report.

    The one ranking path of the reports: embeddings (`evaluate_embeddings`) and EASE alike
    go through `topk_from_scorer`, so lists exclude the same items and break ties the same way.

    Args:
        scorer: the model (teacher or student) to evaluate, on its own device.
        reference: a teacher's scorer, to add overlap@K against its lists.
    """
    cfg = cfg or EvalConfig()
    if scorer.n_items != dataset.n_items or scorer.n_users != dataset.n_users:
        raise ValueError(
            f"model scores ({scorer.n_users}, {scorer.n_items}) users x items, dataset has "
            f"(n_users={dataset.n_users}, n_items={dataset.n_items})"
        )
    users = evaluated_users(dataset, split)
    excl = exclusion_csr(dataset, split)
    kmax = max(cfg.ks)
    t0 = time.perf_counter()
    lists = topk_from_scorer(scorer, users, excl, kmax, chunk=cfg.user_chunk)
    ref_lists = None
    if reference is not None:
        ref_lists = topk_from_scorer(reference, users, excl, kmax, chunk=cfg.user_chunk)
    logger.info(
        "top-%d for %d users x %d items in %.2fs",
        kmax,
        len(users),
        dataset.n_items,
        time.perf_counter() - t0,
    )
    return evaluate_topk(
        dataset, lists, cfg=cfg, split=split, reference_topk=ref_lists, device=scorer.device
    )


def evaluate_embeddings(
    dataset: Dataset,
    user_emb: np.ndarray | torch.Tensor,
    item_emb: np.ndarray | torch.Tensor,
    *,
    cfg: EvalConfig | None = None,
    split: str = "test",
    device: torch.device = CPU,
    reference: TeacherScorer
    | tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]
    | None = None,
) -> dict[str, Any]:
    """Rank every evaluated user by user_emb @ item_emb.T and build the quality report
    (`evaluate_scorer` with an EmbeddingScorer).

    Args:
        user_emb: (n_users, d); item_emb: (n_items, d).
        reference: a teacher's scorer, or its (user_emb, item_emb), to add overlap@K.
    """
    if len(item_emb) != dataset.n_items or len(user_emb) != dataset.n_users:
        raise ValueError(
            f"embeddings ({len(user_emb)}, {len(item_emb)}) rows do not match dataset "
            f"(n_users={dataset.n_users}, n_items={dataset.n_items})"
        )
    if isinstance(reference, tuple):
        reference = EmbeddingScorer(*reference, device=device)
    return evaluate_scorer(
        dataset,
        EmbeddingScorer(user_emb, item_emb, device=device),
        cfg=cfg,
        split=split,
        reference=reference,
    )
