"""The numbers behind the report pages: which figures a page shows and the series each
chart plots, taken straight from a model's typed QualityReport and training history.

Pure functions over `service.reports.views.ModelView`, with no HTML here and no web
framework, so the unit tests can check that every plotted number equals the report's.
``service.reports.render`` turns these into pages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from service.reports.charts import (
    GREY,
    PALETTE,
    BarChart,
    LineChart,
    Point,
    PointSeries,
    ScatterChart,
    Series,
)
from service.reports.views import ModelView, check_same_dataset
from training.manifest import GroupRow, QualityReport, TrialRecord

TEST_SHARE_COLOR = "#52606d"
MODEL_COLOR = PALETTE[0]

# Direction of "better" by metric name (the part before "@"): the comparison page marks
# the best value per row with it. "one": closest to 1 is fair (DTR); "": no direction.
LOWER_IS_BETTER = frozenset(
    {"arp", "narp", "head_share", "gini", "pop_rsp", "pop_reo", "popularity_bias"}
)
CLOSEST_TO_ONE = frozenset({"dtr"})
NO_DIRECTION = frozenset({"overlap"})


@dataclass(frozen=True)
class MetricSpec:
    key: str  # e.g. "recall@20"
    label: str


def headline_specs(k: int) -> tuple[MetricSpec, ...]:
    """The headline table of a report page (METRICS.md A–D), main K = k."""
    return (
        *(MetricSpec(f"recall@{kk}", f"Recall@{kk}") for kk in (10, 20, 50)),
        *(MetricSpec(f"ndcg@{kk}", f"NDCG@{kk}") for kk in (10, 20, 50)),
        MetricSpec(f"ips_recall@{k}", f"IPS Recall@{k}"),
        MetricSpec(f"ips_ndcg@{k}", f"IPS NDCG@{k}"),
        MetricSpec(f"mrecall@{k}", f"Group-mean Recall@{k}"),
        # The UnKD paper's view (Chen et al., WSDM 2023): popular items against the rest, @10.
        MetricSpec("recall_popular@10", "Recall@10, popular items (head group)"),
        MetricSpec("ndcg_popular@10", "NDCG@10, popular items (head group)"),
        MetricSpec("recall_unpopular@10", "Recall@10, unpopular items (other groups)"),
        MetricSpec("ndcg_unpopular@10", "NDCG@10, unpopular items (other groups)"),
        MetricSpec(f"arp@{k}", f"ARP@{k} (mean item popularity)"),
        MetricSpec(f"head_share@{k}", f"Head-group share@{k}"),
        MetricSpec(f"coverage@{k}", f"Item coverage@{k}"),
        MetricSpec(f"gini@{k}", f"Gini@{k}"),
        MetricSpec(f"pop_rsp@{k}", f"PopRSP@{k}"),
        MetricSpec(f"pop_reo@{k}", f"PopREO@{k}"),
    )


def better(key: str) -> str:
    """ "higher", "lower", "one" (closest to 1) or "" for a metric key such as "gini@20"."""
    name = key.split("@")[0].split(".")[-1]
    if name in LOWER_IS_BETTER:
        return "lower"
    if name in CLOSEST_TO_ONE:
        return "one"
    if name in NO_DIRECTION:
        return ""
    return "higher"


def main_k(report: QualityReport) -> int:
    """The K the charts use: 20 when the report has it, else its largest K."""
    return report.main_k


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# -- figures of one report ---------------------------------------------------------------


@dataclass(frozen=True)
class HeadlineRow:
    key: str
    label: str
    better: str
    value: float | None
    teacher: float | None = None
    delta: float | None = None


def headline_rows(view: ModelView) -> list[HeadlineRow]:
    """Rows of the headline table present in the report, with teacher figures and deltas."""
    metrics = view.report.metrics
    teacher = view.report.teacher.metrics if view.report.teacher is not None else None
    deltas = view.report.deltas or {}
    rows = []
    for spec in headline_specs(main_k(view.report)):
        if spec.key not in metrics and (teacher is None or spec.key not in teacher):
            continue
        rows.append(
            HeadlineRow(
                spec.key,
                spec.label,
                better(spec.key),
                _num(metrics.get(spec.key)),
                None if teacher is None else _num(teacher.get(spec.key)),
                None if teacher is None else _num(deltas.get(spec.key)),
            )
        )
    return rows


def group_labels(groups: list[GroupRow]) -> tuple[str, ...]:
    """ "G0 · head\\n24 items" … "G3 · tail\\n163 items" (two-line category labels)."""
    labels = []
    for i, g in enumerate(groups):
        name = f"G{g.group}"
        if len(groups) > 1 and i == 0:
            name += " · head"
        elif len(groups) > 1 and i == len(groups) - 1:
            name += " · tail"
        labels.append(f"{name}\n{g.items} items")
    return tuple(labels)


def _column(groups: list[GroupRow], key: str) -> tuple[float | None, ...]:
    return tuple(_num(g.value(key)) for g in groups)


def teacher_label(view: ModelView) -> str:
    """The teacher's series name: its id when that says "teacher", else "teacher <id>"."""
    tid = view.teacher_id or ""
    return tid if "teacher" in tid.lower() else f"teacher {tid}".strip()


def group_recall_chart(view: ModelView, k: int | None = None) -> BarChart:
    """Per-popularity-group Recall@K: the teacher's bars (students) beside this model's."""
    k = k or main_k(view.report)
    groups = view.report.groups
    series = []
    if view.report.teacher is not None and view.has_teacher:
        t_groups = view.report.teacher.groups
        series.append(Series(teacher_label(view), _column(t_groups, f"recall@{k}"), GREY))
    series.append(Series(view.id, _column(groups, f"recall@{k}"), MODEL_COLOR))
    return BarChart(
        "group-recall",
        f"Recall@{k} per popularity group",
        group_labels(groups),
        tuple(series),
        f"Recall@{k}",
    )


def exposure_chart(view: ModelView, k: int | None = None) -> BarChart:
    """Each group's share of recommended slots (exposure@K) against its share of test positives."""
    k = k or main_k(view.report)
    groups = view.report.groups
    series = [Series("share of test positives", _column(groups, "test_share"), TEST_SHARE_COLOR)]
    if view.report.teacher is not None and view.has_teacher:
        t_groups = view.report.teacher.groups
        series.append(Series("teacher's slots", _column(t_groups, f"exposure_share@{k}"), GREY))
    series.append(Series(f"{view.id}'s slots", _column(groups, f"exposure_share@{k}"), MODEL_COLOR))
    return BarChart(
        "exposure",
        f"Share of top-{k} slots vs share of test positives",
        group_labels(groups),
        tuple(series),
        "share",
        percent=True,
    )


def training_charts(view: ModelView) -> list[LineChart]:
    """Training loss per epoch, and validation NDCG@20 (and Recall@20) per epoch."""
    history = view.training.history if view.training is not None else []
    if not history:
        return []
    epochs = tuple(float(row.epoch) for row in history)
    best = view.training.best_epoch if view.training is not None else 0
    marker = float(best) if best else None
    label = f"best epoch {best}" if marker is not None else ""
    loss = LineChart(
        "training-loss",
        "Training loss",
        epochs,
        (Series("loss", tuple(_num(r.loss) for r in history), PALETTE[1]),),
        "epoch",
        "loss",
        marker,
        label,
    )
    valid_series = []
    for key, color in (("valid_ndcg@20", PALETTE[0]), ("valid_recall@20", PALETTE[2])):
        if any(key in r.figures for r in history):
            name = key.replace("valid_", "").replace("ndcg", "NDCG").replace("recall", "Recall")
            valid_series.append(Series(name, tuple(_num(r.value(key)) for r in history), color))
    charts = [loss]
    if valid_series:
        charts.append(
            LineChart(
                "training-valid",
                "Validation",
                epochs,
                tuple(valid_series),
                "epoch",
                "validation metric",
                marker,
                label,
            )
        )
    return charts


# -- a tuned model's trials ----------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """The (head share, NDCG) points no other point beats on both (lower share, higher
    NDCG), by increasing head share."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return tuple(front)


def tuning_front_chart(view: ModelView) -> ScatterChart | None:
    """Validation NDCG@20 against validation head share@20 of the completed trials: the
    accuracy-vs-popularity front, the kept trial, and a student's bound (its teacher's share)."""
    tuning = view.report.tuning
    if tuning is None:
        return None

    def point(t: TrialRecord) -> Point | None:
        if t.state != "complete" or t.valid_ndcg is None or t.valid_head_share is None:
            return None
        return Point(t.valid_head_share, t.valid_ndcg, f"trial {t.number}")

    kept: list[Point] = []
    within: list[Point] = []
    over: list[Point] = []
    for t in tuning.trials:
        if (p := point(t)) is None:
            continue
        (kept if t.number == tuning.best_trial else over if t.feasible is False else within).append(
            p
        )
    series = [PointSeries("trials", tuple(within), PALETTE[0])]
    if over:
        series.append(PointSeries("over the teacher's head share", tuple(over), PALETTE[3]))
    series.append(
        PointSeries(f"kept: trial {tuning.best_trial}", tuple(kept), PALETTE[2], radius=5.5)
    )
    bound = tuning.teacher_valid_head_share
    return ScatterChart(
        "tuning-front",
        "Trials: validation accuracy vs head-group share",
        tuple(series),
        "validation head share@20",
        "validation NDCG@20",
        front=pareto_front([(p.x, p.y) for p in kept + within + over]),
        marker_x=bound,
        marker_label="teacher" if bound is not None else "",
        x_percent=True,
    )


# -- several models on one dataset --------------------------------------------------------


def compare_specs(k: int) -> list[tuple[str, str]]:
    """(row key, label) of the comparison table; keys with a "." read nested report parts."""
    rows = [(s.key, s.label) for s in headline_specs(k)]
    rows += [
        (f"bias_amplification.arp@{k}", f"ARP@{k} vs teacher (ratio − 1)"),
        (f"retention.ndcg@{k}", f"NDCG@{k} retained from teacher"),
    ]
    return rows


def _row_value(report: QualityReport, key: str) -> float | None:
    """A row's value: "recall@20" (metrics), "group1.recall@20", "bias_amplification.arp@20"
    or "retention.ndcg@20" (None where the report has no such part, e.g. a teacher's)."""
    if key.startswith("group"):
        g, _, metric = key[len("group") :].partition(".")
        return _num(report.groups[int(g)].value(metric)) if int(g) < len(report.groups) else None
    part, _, metric = key.rpartition(".")
    tables: dict[str, dict[str, float | None]] = {
        "": report.metrics,
        "bias_amplification": report.bias_amplification or {},
        "retention": report.retention.figures if report.retention is not None else {},
    }
    return _num(tables.get(part, {}).get(metric))


_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def _stamp(when: datetime | None) -> str | None:
    """A time as the API writes it in JSON ("2026-01-02T03:04:05Z")."""
    return None if when is None else str(_DATETIME.dump_python(when, mode="json"))


def _best(values: dict[str, float | None], direction: str) -> list[str]:
    present = {m: v for m, v in values.items() if v is not None}
    if len(present) < 2 or not direction:
        return []
    score = {
        "higher": lambda v: -v,
        "lower": lambda v: v,
        "one": lambda v: abs(v - 1.0),
    }[direction]
    top = min(score(v) for v in present.values())
    return [m for m, v in present.items() if abs(score(v) - top) <= 1e-12 * max(1.0, abs(top))]


def comparison(views: list[ModelView]) -> dict[str, Any]:
    """The side-by-side figures of several models (GET /v1/compare), best per row marked.

    Returns {"k", "dataset": {id, name, fingerprint}, "models": [{id, kind, method, model,
    dim, teacher_id, created_at}], "rows": [{"key", "label", "better", "values": {id: v},
    "best": [ids]}]}; per-group rows have keys "group<g>.recall@K".
    """
    check_same_dataset(views)
    k = main_k(views[0].report) if views else 20
    first = views[0] if views else None
    specs = compare_specs(k)
    n_groups = max((len(v.report.groups) for v in views), default=0)
    labels = group_labels(first.report.groups if first else [])
    for g in range(n_groups):
        name = labels[g].split("\n")[0] if g < len(labels) else f"G{g}"
        specs.append((f"group{g}.recall@{k}", f"Recall@{k} · {name}"))
    rows = []
    for key, label in specs:
        values = {v.id: _row_value(v.report, key) for v in views}
        if all(x is None for x in values.values()):
            continue
        direction = better(key)
        rows.append(
            {
                "key": key,
                "label": label,
                "better": direction,
                "values": values,
                "best": _best(values, direction),
            }
        )
    return {
        "k": k,
        "dataset": {
            "id": first.dataset_id if first else None,
            "name": first.dataset_name if first else None,
            "fingerprint": first.dataset_fingerprint if first else None,
        },
        "models": [
            {
                "id": v.id,
                "kind": v.kind,
                "method": v.method,
                "model": v.model,
                "dim": v.dim,
                "teacher_id": v.teacher_id,
                "created_at": _stamp(v.created_at),
            }
            for v in views
        ],
        "rows": rows,
    }


def compare_group_recall_chart(views: list[ModelView], k: int) -> BarChart:
    """Recall@K per popularity group, one series per model."""
    groups = views[0].report.groups if views else []
    series = tuple(
        Series(v.id, _column(v.report.groups, f"recall@{k}"), PALETTE[i % len(PALETTE)])
        for i, v in enumerate(views)
    )
    return BarChart(
        "group-recall",
        f"Recall@{k} per popularity group",
        group_labels(groups),
        series,
        f"Recall@{k}",
    )


def compare_exposure_chart(views: list[ModelView], k: int) -> BarChart:
    """Share of top-K slots per group for each model, beside the share of test positives."""
    groups = views[0].report.groups if views else []
    series = [Series("share of test positives", _column(groups, "test_share"), TEST_SHARE_COLOR)]
    series += [
        Series(v.id, _column(v.report.groups, f"exposure_share@{k}"), PALETTE[i % len(PALETTE)])
        for i, v in enumerate(views)
    ]
    return BarChart(
        "exposure",
        f"Share of top-{k} slots vs share of test positives",
        group_labels(groups),
        tuple(series),
        "share",
        percent=True,
    )
