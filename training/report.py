"""Comparing and showing quality reports: teacher deltas and the CLI table.

Works on the plain dicts built by `training.evaluation` (also importable from there);
training.pipelines validates the result into a `training.manifest.QualityReport`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from training.manifest import QualityReport


def _num(x: Any) -> float | None:
    """A plain float for JSON, None where the value is undefined (NaN, inf)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return _num(a / b)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else _num(a - b)


def attach_teacher(report: dict[str, Any], teacher_report: dict[str, Any]) -> dict[str, Any]:
    """A copy of a student's report with its teacher's figures, deltas and ratios.

    Adds "teacher" {metrics, groups}, "deltas" {name: student − teacher},
    "bias_amplification" {"arp@K": ARP_S/ARP_T − 1, "head_share@K": E_G1(S) − E_G1(T),
    "gini@K": ΔGini} and "retention" {"ndcg@K", "mrecall@K", "mndcg@K": S/T, "groups":
    [{"group", "recall@K", "ndcg@K": S/T}]}. Undefined entries are null.
    """
    for key in ("split", "ks", "groups"):
        s, t = report["protocol"].get(key), teacher_report["protocol"].get(key)
        if s != t:
            raise ValueError(
                f"student and teacher reports differ in protocol {key!r}: {s!r} vs {t!r}"
            )
    out = copy.deepcopy(report)
    sm, tm = report["metrics"], teacher_report["metrics"]
    ks = report["protocol"]["ks"]
    out["teacher"] = {
        "metrics": copy.deepcopy(tm),
        "groups": copy.deepcopy(teacher_report["groups"]),
    }
    out["deltas"] = {name: _diff(sm[name], tm[name]) for name in sm if name in tm}
    bias: dict[str, float | None] = {}
    for k in ks:
        arp_ratio = _ratio(sm.get(f"arp@{k}"), tm.get(f"arp@{k}"))
        bias[f"arp@{k}"] = None if arp_ratio is None else arp_ratio - 1.0
        bias[f"head_share@{k}"] = _diff(sm.get(f"head_share@{k}"), tm.get(f"head_share@{k}"))
        bias[f"gini@{k}"] = _diff(sm.get(f"gini@{k}"), tm.get(f"gini@{k}"))
    out["bias_amplification"] = bias
    retention: dict[str, Any] = {}
    for k in ks:
        for name in ("ndcg", "mrecall", "mndcg"):
            retention[f"{name}@{k}"] = _ratio(sm.get(f"{name}@{k}"), tm.get(f"{name}@{k}"))
    retention["groups"] = [
        {"group": s_row["group"]}
        | {
            f"{name}@{k}": _ratio(s_row.get(f"{name}@{k}"), t_row.get(f"{name}@{k}"))
            for k in ks
            for name in ("recall", "ndcg")
        }
        for s_row, t_row in zip(report["groups"], teacher_report["groups"], strict=True)
    ]
    out["retention"] = retention
    return out


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"


HEADLINE = (
    "recall",
    "ndcg",
    "precision",
    "hit",
    "mrr",
    "mrecall",
    "mndcg",
    "ips_recall",
    "ips_ndcg",
    "oracle_precision",
    "oracle_ndcg",
    "overlap",
    "arp",
    "narp",
    "aplt",
    "aclt",
    "head_share",
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
)


def render_table(report: QualityReport | Mapping[str, Any] | None) -> str:
    """Plain-text tables for the CLI: metrics by K (with teacher and Δ when attached),
    then one row per popularity group at the main K."""
    if isinstance(report, QualityReport):
        report = report.model_dump(mode="json")
    if not report or not report.get("metrics"):
        return "no quality report"
    proto = report["protocol"]
    ks = proto["ks"]
    k_main = 20 if 20 in ks else ks[-1]
    m = report["metrics"]
    tm = report.get("teacher", {}).get("metrics")
    cols = (
        [f"@{k}" for k in ks] if tm is None else [f"{w}@{k}" for k in ks for w in ("S", "T", "Δ")]
    )
    lines = [
        f"quality report  split={proto['split']}  users={report['users_evaluated']}  "
        f"groups={proto['groups']}  excluded={proto['excluded']}",
        f"{'metric':<18}" + "".join(f"{c:>10}" for c in cols),
    ]
    for name in HEADLINE:
        if f"{name}@{ks[0]}" not in m:
            continue
        cells = []
        for k in ks:
            key = f"{name}@{k}"
            cells.append(m.get(key))
            if tm is not None:
                cells += [tm.get(key), report["deltas"].get(key)]
        lines.append(f"{name:<18}" + "".join(f"{_fmt(c):>10}" for c in cells))
    for name, (lo, hi) in report.get("ci", {}).items():
        lines.append(f"95% CI {name}: [{_fmt(lo)}, {_fmt(hi)}]")

    head = [
        "group",
        "items",
        "catalog",
        "train",
        "test",
        f"exp@{k_main}",
        f"rec@{k_main}",
        f"ndcg@{k_main}",
    ]
    keys = [f"exposure_share@{k_main}", f"recall@{k_main}", f"ndcg@{k_main}"]
    if any(f"overlap@{k_main}" in row for row in report["groups"]):
        head.append(f"ovl@{k_main}")
        keys.append(f"overlap@{k_main}")
    t_groups = report.get("teacher", {}).get("groups")
    if t_groups is not None:
        head += [f"T.exp@{k_main}", f"T.rec@{k_main}", f"Δrec@{k_main}"]
    lines += ["", "".join(f"{h:>10}" for h in head)]
    for i, row in enumerate(report["groups"]):
        cells = [str(row["group"]), str(row["items"])]
        cells += [_fmt(row.get(c)) for c in ("catalog_share", "train_share", "test_share", *keys)]
        if t_groups is not None:
            t_row = t_groups[i]
            rk = f"recall@{k_main}"
            cells += [
                _fmt(t_row.get(f"exposure_share@{k_main}")),
                _fmt(t_row.get(rk)),
                _fmt(_diff(row.get(rk), t_row.get(rk))),
            ]
        lines.append("".join(f"{c:>10}" for c in cells))
    if "bias_amplification" in report:
        b = report["bias_amplification"]
        lines.append(
            f"\nbias amplification @{k_main}: ΔARP={_fmt(b.get(f'arp@{k_main}'))}  "
            f"ΔE_G1={_fmt(b.get(f'head_share@{k_main}'))}  ΔGini={_fmt(b.get(f'gini@{k_main}'))}"
        )
    return "\n".join(lines)
