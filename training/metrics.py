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
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp

from training.metrics_popularity import exposure_finish, exposure_sums

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


METRIC_BLOCK_USERS = 16384  # users per block: memory O(block · Kmax), not O(users · Kmax)


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        total[key] = total[key] + value if key in total else value


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
    block: int = METRIC_BLOCK_USERS,
) -> MetricResult:
    """Every list metric of METRICS.md A-D for the users of `topk`.

    Users are scored in blocks of `block`: each block's figures are sums (and per-user
    recall/NDCG) that add up, so the memory is O(block · Kmax) whatever the user count;
    the metrics are the same for any block size up to float rounding.

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
        block: users per block.
    Returns:
        MetricResult with flat metrics, per-group arrays and per-user recall/ndcg.
    """
    ks = sorted({int(k) for k in ks})
    kmax = ks[-1]
    n_items = len(pop)
    topk = np.asarray(topk)
    if topk.ndim != 2 or topk.shape[1] < kmax:
        raise ValueError(f"topk shape {topk.shape}: need (n_users, >= {kmax}) for ks={ks}")
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
    if block < 1:
        raise ValueError(f"block={block} must be >= 1")

    pop = np.asarray(pop, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    head = np.asarray(head, dtype=bool)
    totals: dict[str, Any] = {}
    per_user: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, block):
        stop = min(n, start + block)
        ptr = indptr[start : stop + 1]
        sums, pu = _block_sums(
            np.asarray(topk[start:stop, :kmax], dtype=np.int64),
            ptr - ptr[0],
            indices[ptr[0] : ptr[-1]],
            pop=pop,
            groups=groups,
            head=head,
            ks=ks,
            n_groups=n_groups,
            ips_gamma=ips_gamma,
            n_train_users=n_train_users,
        )
        _add(totals, sums)
        for key, values in pu.items():
            per_user.setdefault(key, []).append(values)

    out = MetricResult(metrics={})
    m, gm = out.metrics, out.groups
    out.per_user = {key: np.concatenate(parts) for key, parts in per_user.items()}
    for k in ks:  # A: means over users
        m[f"recall@{k}"] = _mean(out.per_user[f"recall@{k}"])
        m[f"precision@{k}"] = totals[f"precision@{k}"] / n
        m[f"ndcg@{k}"] = _mean(out.per_user[f"ndcg@{k}"])
        m[f"hit@{k}"] = totals[f"hit@{k}"] / n
        m[f"mrr@{k}"] = totals[f"mrr@{k}"] / n
    # B: per-group means over U_g = users with a positive in G_g (undefined where U_g is empty)
    gm["users"] = totals["group_users"]
    for k in ks:
        for name in ("recall", "ndcg"):
            vals = _safe_div(totals[f"group_{name}@{k}"], totals["group_users"])
            gm[f"{name}@{k}"] = vals
            # macro over the groups where it is defined (all G unless a group has no positives)
            m[f"m{name}@{k}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        for name in ("recall", "ndcg"):  # the paper's view; NaN without a positive in the set
            for subset in ("popular", "unpopular"):
                m[f"{name}_{subset}@{k}"] = float(
                    _safe_div(totals[f"{name}_{subset}@{k}"], totals[f"{subset}_users"])
                )
        m[f"ips_recall@{k}"] = totals[f"ips_recall@{k}"] / n
        m[f"ips_ndcg@{k}"] = totals[f"ips_ndcg@{k}"] / n

    # -- C, D. exposure, popularity bias, concentration --------------------------------------
    excl_by_group = np.zeros(n_groups, dtype=np.int64)
    if excluded is not None:
        _, excl_idx = csr_parts(excluded)
        excl_by_group = np.bincount(groups[excl_idx], minlength=n_groups)
    pop_m, pop_g = exposure_finish(
        totals,
        n_users=n,
        ks=ks,
        pop=pop,
        group_sizes=np.bincount(groups, minlength=n_groups),
        pos_by_group=np.bincount(groups[indices], minlength=n_groups),
        excl_by_group=excl_by_group,
    )
    m.update(pop_m)
    gm.update(pop_g)
    return out


def _block_sums(
    topk: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    *,
    pop: np.ndarray,
    groups: np.ndarray,
    head: np.ndarray,
    ks: list[int],
    n_groups: int,
    ips_gamma: float,
    n_train_users: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One block of users: the sums `compute_metrics` adds up, and per-user recall/NDCG.

    Args:
        topk: (n, Kmax) int64 lists of the block; indptr, indices: its positives.
    """
    n, kmax = topk.shape
    n_items = len(pop)
    n_pos = np.diff(indptr)
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

    sums: dict[str, Any] = {}
    pu: dict[str, np.ndarray] = {}

    # -- A. accuracy ----------------------------------------------------------------------
    hit_cum = np.cumsum(hit, axis=1)  # hits within the first k slots
    dcg_cum = np.cumsum(hit * disc, axis=1)
    any_hit = hit_cum > 0
    first_hit = np.argmax(hit, axis=1)  # 0 when there is no hit; masked by any_hit below
    for k in ks:
        hits_k = hit_cum[:, k - 1]
        pu[f"recall@{k}"] = hits_k / n_pos
        pu[f"ndcg@{k}"] = dcg_cum[:, k - 1] / cumdisc[np.minimum(n_pos, k)]
        sums[f"precision@{k}"] = float((hits_k / k).sum())
        sums[f"hit@{k}"] = float(any_hit[:, k - 1].sum())
        sums[f"mrr@{k}"] = float(np.where(any_hit[:, k - 1], 1.0 / (first_hit + 1), 0.0).sum())

    # -- B. per-group accuracy (U_g = users with a positive in G_g) -------------------------
    sums["group_users"] = (pos_by_group > 0).sum(axis=0)
    for k in ks:
        sums[f"group_recall@{k}"] = np.zeros(n_groups)
        sums[f"group_ndcg@{k}"] = np.zeros(n_groups)
    for g in range(n_groups):
        users_g = pos_by_group[:, g] > 0
        if not users_g.any():
            continue
        in_g = hit[users_g] & (grp[users_g] == g)
        hg, dg = np.cumsum(in_g, axis=1), np.cumsum(in_g * disc, axis=1)
        t_g = pos_by_group[users_g, g]
        for k in ks:
            sums[f"group_recall@{k}"][g] = (hg[:, k - 1] / t_g).sum()
            sums[f"group_ndcg@{k}"][g] = (dg[:, k - 1] / cumdisc[np.minimum(t_g, k)]).sum()

    # -- B. the UnKD paper's view: popular items (the head group) against the rest ----------
    # Chen et al. (WSDM 2023) report Recall/NDCG@10 on popular and on unpopular items beside the
    # overall figure: the ground truth restricted to the set, over the users with a positive in it.
    for name, t_s, in_s in (
        ("popular", pos_by_group[:, 0], grp == 0),
        ("unpopular", pos_by_group[:, 1:].sum(axis=1), grp > 0),
    ):
        users_s = t_s > 0
        h_s = hit[users_s] & in_s[users_s]
        hs, ds = np.cumsum(h_s, axis=1), np.cumsum(h_s * disc, axis=1)
        sums[f"{name}_users"] = int(users_s.sum())
        for k in ks:
            sums[f"recall_{name}@{k}"] = float((hs[:, k - 1] / t_s[users_s]).sum())
            sums[f"ndcg_{name}@{k}"] = float(
                (ds[:, k - 1] / cumdisc[np.minimum(t_s[users_s], k)]).sum()
            )

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
        sums[f"ips_recall@{k}"] = float((w_hit_cum[:, k - 1] / w_total).sum())
        sums[f"ips_ndcg@{k}"] = float((w_dcg_cum[:, k - 1] / ideal).sum())

    # -- C, D. exposure, popularity bias, concentration --------------------------------------
    sums.update(
        exposure_sums(
            topk,
            hit,
            grp,
            ks=ks,
            pop=pop,
            head=head,
            n_groups=n_groups,
            n_train_users=n_train_users,
        )
    )
    return sums, pu


def overlap_metrics(
    topk: np.ndarray,
    reference: np.ndarray,
    groups: np.ndarray,
    ks: list[int] | tuple[int, ...],
    n_groups: int,
    block: int = METRIC_BLOCK_USERS,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Teacher-student agreement Overlap@K (METRICS.md E), in blocks of `block` users.

    Overall: (1/|U|) Σ_u |L_u ∩ L_u^ref| / K. Per group g: Σ_u |L_u ∩ L_u^ref ∩ G_g| /
    Σ_u |L_u^ref ∩ G_g|, the share of the reference's group-g slots that `topk` reproduces
    (the overall figure is the same ratio with G_g = I when lists are full).

    Args:
        topk, reference: (n_users, >= max(ks)) int64, rows aligned, -1 padded.
    Returns:
        ({"overlap@K": float}, {"overlap@K": (G,) float}).
    """
    n_items, n = len(groups), len(topk)
    shared_total = {k: 0.0 for k in ks}
    shared_g = {k: np.zeros(n_groups, dtype=np.int64) for k in ks}
    ref_g = {k: np.zeros(n_groups, dtype=np.int64) for k in ks}
    for start in range(0, n, block):
        for k in ks:
            a = np.asarray(topk[start : start + block, :k], dtype=np.int64)
            b = np.asarray(reference[start : start + block, :k], dtype=np.int64)
            shared = list_membership(a, b, n_items)  # (block, k) bool
            shared_total[k] += float((shared.sum(axis=1) / k).sum())
            shared_g[k] += np.bincount(groups[np.maximum(a, 0)][shared], minlength=n_groups)
            ref_g[k] += np.bincount(groups[b[b >= 0]], minlength=n_groups)
    overall = {f"overlap@{k}": shared_total[k] / n if n else float("nan") for k in sorted(ks)}
    by_group = {f"overlap@{k}": _safe_div(shared_g[k], ref_g[k]) for k in sorted(ks)}
    return overall, by_group


def oracle_metrics(
    topk: np.ndarray,
    oracle: np.ndarray,
    ks: list[int] | tuple[int, ...],
    block: int = METRIC_BLOCK_USERS,
) -> dict[str, float]:
    """Precision and NDCG against the true top-K (binary relevance: i ∈ O_u@K), in blocks.

    Args:
        topk: (n_users, >= max(ks)) the ranker's lists.
        oracle: (n_users, >= max(ks)) the true best items per user (same exclusions).
    Returns:
        {"oracle_precision@K": float, "oracle_ndcg@K": float}
    """
    n = len(topk)
    n_items = int(max(topk.max(initial=0), oracle.max(initial=0))) + 1
    disc = discounts(max(ks))
    cumdisc = np.concatenate([[0.0], np.cumsum(disc)])
    precision = {k: 0.0 for k in ks}
    ndcg = {k: 0.0 for k in ks}
    for start in range(0, n, block):
        for k in ks:
            a = np.asarray(topk[start : start + block, :k], dtype=np.int64)
            b = np.asarray(oracle[start : start + block, :k], dtype=np.int64)
            rel = list_membership(a, b, n_items)  # (block, k)
            n_rel = (b >= 0).sum(axis=1)
            precision[k] += float((rel.sum(axis=1) / k).sum())
            ndcg[k] += float(_safe_div((rel * disc[:k]).sum(axis=1), cumdisc[n_rel]).sum())
    out: dict[str, float] = {}
    for k in sorted(ks):
        out[f"oracle_precision@{k}"] = precision[k] / n if n else float("nan")
        out[f"oracle_ndcg@{k}"] = ndcg[k] / n if n else float("nan")
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
