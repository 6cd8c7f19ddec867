"""Top-K list metrics, vectorised over users (METRICS.md sections A, B and E).

Pure numpy, no torch: the inputs are finished top-K lists, so any ranker (embeddings,
a FAISS index, a popularity baseline) is scored by the same code.

Conventions shared by every function here:
- `topk`: (n_users, Kmax) int64, best first, excluded items already removed; -1 pads a
  list that is shorter than Kmax and is ignored everywhere (it is never a hit, never
  exposed, never counted in |L_u|).
- positives: CSR rows aligned with `topk` rows (row u of the CSR is user u of `topk`).
- every evaluated user has at least one positive; such users are dropped by the caller.
- undefined values (0/0 denominators) come back as NaN; the report turns them into null.

The exposure / popularity / diversity metrics (section C, D) live in
`training.metrics_popularity`; `compute_metrics` here runs both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp

from training.metrics_popularity import exposure_metrics

logger = logging.getLogger(__name__)

Positives: TypeAlias = sp.csr_matrix | sp.csr_array | tuple[np.ndarray, np.ndarray]


@dataclass
class MetricResult:
    """What `compute_metrics` returns.

    metrics:  flat {"recall@10": float, ...}, NaN where undefined.
    groups:   {"recall@10": (G,) float, "ndcg@10", "exposure_share@10", "users": (G,), ...}
    per_user: {"recall@10": (n_users,) float, "ndcg@10": ...} for bootstrap CIs and paired tests.
    """

    metrics: dict[str, float]
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    per_user: dict[str, np.ndarray] = field(default_factory=dict)


def discounts(kmax: int) -> np.ndarray:
    """(kmax,) float64 disc(k) = 1 / log2(k + 1) for ranks k = 1..kmax."""
    return 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))


def csr_parts(pos: Positives) -> tuple[np.ndarray, np.ndarray]:
    """(indptr (n+1,), indices (nnz,)) int64 of a CSR matrix or an (indptr, indices) pair."""
    if isinstance(pos, tuple):
        indptr, indices = pos
    else:
        indptr, indices = pos.indptr, pos.indices
    return np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)


def _row_keys(indptr: np.ndarray, indices: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted (nnz,) int64 keys row * n_items + item, one per stored entry."""
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    return np.sort(rows * n_items + indices)


def _member(lists: np.ndarray, sorted_keys: np.ndarray, n_items: int) -> np.ndarray:
    """(n, K) bool: lists[u, k] is in row u of the set encoded by `sorted_keys`; -1 -> False."""
    n = lists.shape[0]
    keys = np.arange(n, dtype=np.int64)[:, None] * n_items + np.maximum(lists, 0)
    if len(sorted_keys) == 0:
        return np.zeros(lists.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return (sorted_keys[at] == keys) & (lists >= 0)


def row_membership(lists: np.ndarray, pos: Positives, n_items: int) -> np.ndarray:
    """(n, K) bool: lists[u, k] in row u of `pos` (CSR or (indptr, indices))."""
    indptr, indices = csr_parts(pos)
    return _member(lists, _row_keys(indptr, indices, n_items), n_items)


def list_membership(lists: np.ndarray, other: np.ndarray, n_items: int) -> np.ndarray:
    """(n, Ka) bool: lists[u, k] appears in other[u, :] (both (n, .) int64, -1 = padding)."""
    ok = other >= 0
    rows = np.broadcast_to(np.arange(len(other), dtype=np.int64)[:, None], other.shape)
    keys = np.sort(rows[ok] * n_items + other[ok])
    return _member(lists, keys, n_items)


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with NaN where den == 0 (an undefined value, not a zero score)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def compute_metrics(
    topk: np.ndarray,
    positives: Positives,
    *,
    pop: np.ndarray,
    groups: np.ndarray,
    head: np.ndarray,
    n_train_users: int,
    ks: tuple[int, ...] | list[int],
    n_groups: int,
    ips_gamma: float = 0.5,
    excluded: Positives | None = None,
) -> MetricResult:
    """Every list metric of METRICS.md A-D for the users of `topk`.

    Args:
        topk: (n_users, >= max(ks)) int64 lists, -1 padded.
        positives: test positives, rows aligned with `topk`; every row non-empty.
        pop: (n_items,) training interactions per item, φ.
        groups: (n_items,) int popularity group, 0 = head.
        head: (n_items,) bool short head Φ (METRICS.md head/tail, head_mass 0.8).
        n_train_users: |U_train| for EPC.
        ks: cut-offs K.
        n_groups: G (a group may be empty, so it is not inferred from `groups`).
        ips_gamma: γ of the IPS weights w_i = max(φ_i, 1)^-γ.
        excluded: items each user could not be recommended (R_u), rows aligned with
            `topk`; used by PopRSP's denominator. None = nothing excluded.
    Returns:
        MetricResult with flat metrics, per-group arrays and per-user recall/ndcg.
    """
    ks = sorted({int(k) for k in ks})
    kmax = ks[-1]
    n_items = len(pop)
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim != 2 or topk.shape[1] < kmax:
        raise ValueError(f"topk shape {topk.shape}: need (n_users, >= {kmax}) for ks={ks}")
    topk = topk[:, :kmax]
    indptr, indices = csr_parts(positives)
    n = topk.shape[0]
    if len(indptr) != n + 1:
        raise ValueError(f"positives have {len(indptr) - 1} rows, topk has {n}")
    n_pos = np.diff(indptr)
    if n == 0 or (n_pos == 0).any():
        raise ValueError(
            f"{int((n_pos == 0).sum())} of {n} users have no positives; drop them first"
        )
    if topk.max(initial=-1) >= n_items:
        raise ValueError(f"topk holds item {int(topk.max())} >= n_items={n_items}")

    pop = np.asarray(pop, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    valid = topk >= 0
    safe = np.maximum(topk, 0)
    grp = np.where(valid, groups[safe], -1)  # (n, Kmax), -1 on padding
    hit = row_membership(topk, (indptr, indices), n_items)  # (n, Kmax) bool
    disc = discounts(kmax)
    cumdisc = np.concatenate([[0.0], np.cumsum(disc)])  # IDCG(m) = cumdisc[min(m, K)]
    rows = np.repeat(np.arange(n, dtype=np.int64), n_pos)
    # |T_u ∩ G_g| for every user and group: (n, G)
    pos_by_group = np.bincount(rows * n_groups + groups[indices], minlength=n * n_groups)
    pos_by_group = pos_by_group.reshape(n, n_groups)

    out = MetricResult(metrics={})
    m, gm, pu = out.metrics, out.groups, out.per_user

    # -- A. accuracy ----------------------------------------------------------------------
    hit_cum = np.cumsum(hit, axis=1)  # hits within the first k slots
    dcg_cum = np.cumsum(hit * disc, axis=1)
    any_hit = hit_cum > 0
    first_hit = np.argmax(hit, axis=1)  # 0 when there is no hit; masked by any_hit below
    for k in ks:
        hits_k = hit_cum[:, k - 1]
        recall_u = hits_k / n_pos
        ndcg_u = dcg_cum[:, k - 1] / cumdisc[np.minimum(n_pos, k)]
        pu[f"recall@{k}"], pu[f"ndcg@{k}"] = recall_u, ndcg_u
        m[f"recall@{k}"] = _mean(recall_u)
        m[f"precision@{k}"] = _mean(hits_k / k)
        m[f"ndcg@{k}"] = _mean(ndcg_u)
        m[f"hit@{k}"] = _mean(any_hit[:, k - 1].astype(np.float64))
        m[f"mrr@{k}"] = _mean(np.where(any_hit[:, k - 1], 1.0 / (first_hit + 1), 0.0))

    # -- B. per-group and group-macro accuracy (U_g = users with a positive in G_g) ----------
    gm["users"] = (pos_by_group > 0).sum(axis=0)
    for k in ks:
        gm[f"recall@{k}"] = np.full(n_groups, np.nan)
        gm[f"ndcg@{k}"] = np.full(n_groups, np.nan)
    for g in range(n_groups):
        in_g = hit & (grp == g)
        hg, dg = np.cumsum(in_g, axis=1), np.cumsum(in_g * disc, axis=1)
        users_g = pos_by_group[:, g] > 0
        if not users_g.any():
            continue  # empty group or no test positives in it: Recall_g undefined
        t_g = pos_by_group[users_g, g]
        for k in ks:
            gm[f"recall@{k}"][g] = _mean(hg[users_g, k - 1] / t_g)
            gm[f"ndcg@{k}"][g] = _mean(dg[users_g, k - 1] / cumdisc[np.minimum(t_g, k)])
    for k in ks:
        # macro over the groups where Recall_g is defined (all G unless a group has no positives)
        for name in ("recall", "ndcg"):
            vals = gm[f"{name}@{k}"]
            m[f"m{name}@{k}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")

    # -- B. IPS-weighted recall / NDCG, w_i = max(φ_i, 1)^-γ -------------------------------
    w = np.maximum(pop, 1.0) ** (-ips_gamma)  # φ = 0 items get φ = 1: a finite, largest weight
    w_pos = w[indices]
    w_total = np.bincount(rows, weights=w_pos, minlength=n)  # Σ_{i∈T_u} w_i
    w_hit = hit * w[safe]
    w_hit_cum, w_dcg_cum = np.cumsum(w_hit, axis=1), np.cumsum(w_hit * disc, axis=1)
    # ideal IPS DCG: the user's positives ordered by weight, heaviest first
    order = np.lexsort((-w_pos, rows))
    rank_in_row = np.arange(len(rows)) - indptr[rows[order]]
    for k in ks:
        top = rank_in_row < k
        ideal = np.bincount(
            rows[order][top], weights=w_pos[order][top] * disc[rank_in_row[top]], minlength=n
        )
        m[f"ips_recall@{k}"] = _mean(w_hit_cum[:, k - 1] / w_total)
        m[f"ips_ndcg@{k}"] = _mean(w_dcg_cum[:, k - 1] / ideal)

    # -- C, D. exposure, popularity bias, concentration --------------------------------------
    excl_by_group = np.zeros(n_groups, dtype=np.int64)
    if excluded is not None:
        _, excl_idx = csr_parts(excluded)
        excl_by_group = np.bincount(groups[excl_idx], minlength=n_groups)
    pop_m, pop_g = exposure_metrics(
        topk,
        hit,
        grp,
        ks=ks,
        pop=pop,
        head=np.asarray(head, dtype=bool),
        group_sizes=np.bincount(groups, minlength=n_groups),
        pos_by_group=pos_by_group.sum(axis=0),
        excl_by_group=excl_by_group,
        n_train_users=n_train_users,
    )
    m.update(pop_m)
    gm.update(pop_g)
    return out


def overlap_metrics(
    topk: np.ndarray,
    reference: np.ndarray,
    groups: np.ndarray,
    ks: list[int] | tuple[int, ...],
    n_groups: int,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Teacher-student agreement Overlap@K (METRICS.md E).

    Overall: (1/|U|) Σ_u |L_u ∩ L_u^ref| / K. Per group g: Σ_u |L_u ∩ L_u^ref ∩ G_g| /
    Σ_u |L_u^ref ∩ G_g|, the share of the reference's group-g slots that `topk` reproduces
    (the overall figure is the same ratio with G_g = I when lists are full).

    Args:
        topk, reference: (n_users, >= max(ks)) int64, rows aligned, -1 padded.
    Returns:
        ({"overlap@K": float}, {"overlap@K": (G,) float}).
    """
    n_items = len(groups)
    overall: dict[str, float] = {}
    by_group: dict[str, np.ndarray] = {}
    for k in sorted(ks):
        a, b = topk[:, :k], reference[:, :k]
        shared = list_membership(a, b, n_items)  # (n, k) bool
        overall[f"overlap@{k}"] = _mean(shared.sum(axis=1) / k)
        ga = groups[np.maximum(a, 0)][shared]
        ref_ok = b >= 0
        by_group[f"overlap@{k}"] = _safe_div(
            np.bincount(ga, minlength=n_groups), np.bincount(groups[b[ref_ok]], minlength=n_groups)
        )
    return overall, by_group


def oracle_metrics(
    topk: np.ndarray, oracle: np.ndarray, ks: list[int] | tuple[int, ...]
) -> dict[str, float]:
    """Precision and NDCG against the true top-K (binary relevance: i ∈ O_u@K).

    Args:
        topk: (n_users, >= max(ks)) the ranker's lists.
        oracle: (n_users, >= max(ks)) the true best items per user (same exclusions).
    Returns:
        {"oracle_precision@K": float, "oracle_ndcg@K": float}
    """
    out: dict[str, float] = {}
    n_items = int(max(topk.max(initial=0), oracle.max(initial=0))) + 1
    disc = discounts(max(ks))
    cumdisc = np.concatenate([[0.0], np.cumsum(disc)])
    for k in sorted(ks):
        rel = list_membership(topk[:, :k], oracle[:, :k], n_items)  # (n, k)
        n_rel = (oracle[:, :k] >= 0).sum(axis=1)
        out[f"oracle_precision@{k}"] = _mean(rel.sum(axis=1) / k)
        out[f"oracle_ndcg@{k}"] = _mean(_safe_div((rel * disc[:k]).sum(axis=1), cumdisc[n_rel]))
    return out


def bootstrap_ci(
    values: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-user `values` (n resamples over users).

    Resamples are drawn in batches so memory stays near 4M indices whatever the user count.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    size = values.size
    batch = max(1, 4_000_000 // size)
    means = np.empty(n)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        idx = rng.integers(0, size, size=(stop - start, size), dtype=np.int32)
        means[start:stop] = values[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
