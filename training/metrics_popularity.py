"""Exposure, popularity bias and catalog concentration of top-K lists (METRICS.md C, D).

Called by `training.metrics.compute_metrics`, which prepares the shared arrays (hit
matrix, group of every slot) one block of users at a time: `exposure_sums` turns a block
into sums that add over blocks, `exposure_finish` turns the totals into metrics. Pure numpy. -1 slots are padding and count nowhere;
N = Σ_i c(i) is the number of real slots (= |U|·K when no list is padded).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den != 0 else float("nan")


def _cv(values: np.ndarray) -> float:
    """std / mean (population std, as Elliot) over the defined values; 0 = parity."""
    values = values[np.isfinite(values)]
    if values.size == 0 or values.mean() == 0:
        return float("nan")
    return float(values.std() / values.mean())


def gini_index(counts: np.ndarray) -> float:
    """RecBole GiniIndex: Σ_j (2j − |I| − 1) c_(j) / (|I| · N), c sorted ascending.

    Args:
        counts: (n_items,) recommendation count of every catalog item (0 for never shown).
    Returns:
        0 for perfectly equal exposure, (|I| − 1)/|I| when one item takes every slot.
    """
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n_items, total = len(c), c.sum()
    if n_items == 0 or total == 0:
        return float("nan")
    j = np.arange(1, n_items + 1, dtype=np.float64)
    return float(((2 * j - n_items - 1) * c).sum() / (n_items * total))


def shannon_entropy(counts: np.ndarray) -> float:
    """−Σ_{c(i)>0} (c(i)/N) ln(c(i)/N), natural log; not divided by the distinct count."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total == 0:
        return float("nan")
    q = c[c > 0] / total
    return float(-(q * np.log(q)).sum())


def exposure_sums(
    topk: np.ndarray,
    hit: np.ndarray,
    grp: np.ndarray,
    *,
    ks: list[int],
    pop: np.ndarray,
    head: np.ndarray,
    n_groups: int,
    n_train_users: int,
) -> dict[str, Any]:
    """Sections C and D for one block of users, as sums that add over blocks.

    Args:
        topk: (n, Kmax) int64 lists, -1 padded.
        hit: (n, Kmax) bool, slot is a test positive.
        grp: (n, Kmax) int64 popularity group of each slot, -1 on padding.
        ks: sorted cut-offs, max(ks) == Kmax.
        pop: (n_items,) φ, training interactions per item.
        head: (n_items,) bool short head Φ.
        n_groups: G.
        n_train_users: |U_train| for EPC.
    Returns:
        {"<name>@K": float or array} to add over blocks and pass to `exposure_finish`.
    """
    n, kmax = topk.shape
    n_items = len(pop)
    valid = topk >= 0
    safe = np.maximum(topk, 0)
    disc = 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))
    pop_total = float(pop.sum())
    p = pop / pop_total if pop_total > 0 else np.zeros(n_items)
    # φ = 0 items would have infinite self-information; they use φ = 1 (as for IPS weights)
    self_info = -np.log2(np.maximum(pop, 1.0) / max(pop_total, 1.0))
    tail = ~head

    slot_pop = np.where(valid, pop[safe], 0.0)  # (n, Kmax) φ of each slot
    slot_p = np.where(valid, p[safe], 0.0)
    slot_info = np.where(valid, self_info[safe], 0.0)
    slot_tail = valid & tail[safe]
    head_slot = (grp == 0).astype(np.float64) * disc  # DTR: the head group vs the rest
    rest_slot = (grp > 0).astype(np.float64) * disc
    epc_gain = hit * disc * (1.0 - pop[safe] / max(n_train_users, 1))

    out: dict[str, Any] = {}
    for k in ks:
        v = valid[:, :k]
        len_u = v.sum(axis=1)
        inv_len = np.divide(1.0, len_u, out=np.zeros(n), where=len_u > 0)  # empty list: 0
        out[f"slots@{k}"] = int(len_u.sum())
        out[f"exposure@{k}"] = np.bincount(grp[:, :k][v], minlength=n_groups)
        out[f"hits_by_group@{k}"] = np.bincount(grp[:, :k][hit[:, :k]], minlength=n_groups)
        out[f"arp@{k}"] = float((slot_pop[:, :k].sum(axis=1) * inv_len).sum())
        out[f"aplt@{k}"] = float((slot_tail[:, :k].sum(axis=1) * inv_len).sum())
        out[f"aclt@{k}"] = float(slot_tail[:, :k].sum())
        out[f"exp_pop@{k}"] = float(head_slot[:, :k].sum())
        out[f"exp_rest@{k}"] = float(rest_slot[:, :k].sum())
        out[f"util_pop@{k}"] = float((head_slot[:, :k] * hit[:, :k]).sum())
        out[f"util_rest@{k}"] = float((rest_slot[:, :k] * hit[:, :k]).sum())
        out[f"p@{k}"] = float(slot_p[:, :k].sum())
        out[f"info@{k}"] = float(slot_info[:, :k].sum())
        out[f"epc@{k}"] = float((epc_gain[:, :k].sum(axis=1) / disc[:k].sum()).sum())
        out[f"counts@{k}"] = np.bincount(topk[:, :k][v], minlength=n_items)
    return out


def exposure_finish(
    sums: dict[str, Any],
    *,
    n_users: int,
    ks: list[int],
    pop: np.ndarray,
    group_sizes: np.ndarray,
    pos_by_group: np.ndarray,
    excl_by_group: np.ndarray,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Sections C and D for every K from the sums of every block (`exposure_sums`).

    Args:
        n_users: n, the users of every block together.
        group_sizes: (G,) |G_g|.
        pos_by_group: (G,) Σ_u |T_u ∩ G_g|.
        excl_by_group: (G,) Σ_u |R_u ∩ G_g| over the evaluated users.
    Returns:
        ({"arp@K": float, ...}, {"exposure_share@K": (G,) float}).
    """
    n, n_items, n_groups = n_users, len(pop), len(group_sizes)
    m: dict[str, float] = {}
    gm: dict[str, np.ndarray] = {}
    for k in ks:
        n_slots = sums[f"slots@{k}"]  # N
        exposure = sums[f"exposure@{k}"].astype(np.float64)
        share = exposure / n_slots if n_slots else np.full(n_groups, np.nan)
        gm[f"exposure_share@{k}"] = share
        m[f"head_share@{k}"] = float(share[0])

        arp = sums[f"arp@{k}"] / n
        m[f"arp@{k}"] = arp
        m[f"narp@{k}"] = _ratio(arp, float(pop.max(initial=0)))
        m[f"aplt@{k}"] = sums[f"aplt@{k}"] / n
        m[f"aclt@{k}"] = sums[f"aclt@{k}"] / n

        # PopRSP: P_g = Σ_u |L_u ∩ g| / Σ_u |g \ R_u|
        avail = n * group_sizes - excl_by_group
        p_g = np.divide(exposure, avail, out=np.full(n_groups, np.nan), where=avail > 0)
        m[f"pop_rsp@{k}"] = _cv(p_g)
        # PopREO: P'_g = Σ_u |L_u ∩ T_u ∩ g| / Σ_u |T_u ∩ g|
        hits_g = sums[f"hits_by_group@{k}"].astype(np.float64)
        p_g = np.divide(hits_g, pos_by_group, out=np.full(n_groups, np.nan), where=pos_by_group > 0)
        m[f"pop_reo@{k}"] = _cv(p_g)

        m[f"dtr@{k}"] = _ratio(
            _ratio(sums[f"exp_pop@{k}"], sums[f"util_pop@{k}"]),
            _ratio(sums[f"exp_rest@{k}"], sums[f"util_rest@{k}"]),
        )

        m[f"popularity_bias@{k}"] = sums[f"p@{k}"] / (n * k)
        m[f"novelty@{k}"] = sums[f"info@{k}"] / (n * k)
        m[f"epc@{k}"] = sums[f"epc@{k}"] / n

        counts = sums[f"counts@{k}"]
        m[f"coverage@{k}"] = float((counts > 0).sum() / n_items)
        m[f"gini@{k}"] = gini_index(counts)
        ent = shannon_entropy(counts)
        m[f"entropy@{k}"] = ent
        m[f"nentropy@{k}"] = _ratio(ent, float(np.log(n_items)))
    return m, gm
