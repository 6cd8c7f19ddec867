"""The numbers behind the report pages: which figures a page shows and the series each
chart plots, taken straight from quality reports and model manifests.

Pure functions over plain dicts (training.evaluation's report, training.checkpoint's
manifest, the registry's model record), with no HTML here and no web framework, so the
unit tests can check that every plotted number equals the report's. ``report_render``
turns these into pages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.reports.charts import GREY, PALETTE, BarChart, LineChart, Series

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
        MetricSpec(f"arp@{k}", f"ARP@{k} (mean item popularity)"),
        MetricSpec(f"head_share@{k}", f"Head-group share@{k}"),
        MetricSpec(f"coverage@{k}", f"Item coverage@{k}"),
        MetricSpec(f"gini@{k}", f"Gini@{k}"),
        MetricSpec(f"pop_rsp@{k}", f"PopRSP@{k}"),
        MetricSpec(f"pop_reo@{k}", f"PopREO@{k}"),
    )


def better(key: str) -> str:
    """"higher", "lower", "one" (closest to 1) or "" for a metric key such as "gini@20"."""
    name = key.split("@")[0].split(".")[-1]
    if name in LOWER_IS_BETTER:
        return "lower"
    if name in CLOSEST_TO_ONE:
        return "one"
    if name in NO_DIRECTION:
        return ""
    return "higher"


def main_k(report: dict[str, Any]) -> int:
    """The K the charts use: 20 when the report has it, else its largest K."""
    ks = (report.get("protocol") or {}).get("ks") or [20]
    return 20 if 20 in ks else int(max(ks))


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# -- one model, normalised from a manifest (offline) or a registry record (API) ------------


@dataclass(frozen=True)
class ModelView:
    """What the pages need to know about one model; every field is optional but the id."""

    id: str
    report: dict[str, Any]
    kind: str | None = None
    method: str | None = None
    model: str | None = None
    dim: int | None = None
    dataset_id: str | None = None
    dataset_name: str | None = None
    dataset_fingerprint: str | None = None
    teacher_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # manifest "training": history, …
    created_at: str | None = None
    device: str | None = None
    active: bool = False
    href: str | None = None  # where its report page lives, when pages link to each other

    @property
    def has_teacher(self) -> bool:
        return bool((self.report.get("teacher") or {}).get("groups"))

    @property
    def title(self) -> str:
        """"student · unkd · mf dim 10" style summary."""
        parts = [self.kind or "model"]
        if self.method:
            parts.append(self.method)
        if self.model:
            parts.append(f"{self.model} dim {self.dim}" if self.dim else self.model)
        return " · ".join(parts)


def view_from_manifest(manifest: dict[str, Any] | None, report: dict[str, Any], *,
                       model_id: str | None = None, href: str | None = None) -> ModelView:  # fmt: skip
    """A model directory's manifest.json and report.json (the offline `unkd report`)."""
    m = manifest or {}
    lineage = m.get("lineage") or {}
    teacher = lineage.get("teacher")
    dataset = m.get("dataset") or {}
    return ModelView(
        id=str(model_id or m.get("id") or "model"), report=report, kind=m.get("kind"),
        method=m.get("method"), model=m.get("model"), dim=m.get("dim"),
        dataset_name=dataset.get("name"), dataset_fingerprint=dataset.get("fingerprint"),
        teacher_id=teacher.get("id") if isinstance(teacher, dict) else teacher,
        parameters=m.get("config") or {}, training=m.get("training") or {},
        created_at=m.get("created_at"), device=m.get("device"), href=href,
    )  # fmt: skip


def view_from_record(record: dict[str, Any], report: dict[str, Any], *,
                     manifest: dict[str, Any] | None = None, dataset_name: str | None = None,
                     href: str | None = None) -> ModelView:  # fmt: skip
    """A registry model record (ModelRecord / ModelOut as JSON), its report and, when its
    directory still has one, its manifest (training history, dataset fingerprint)."""
    m = manifest or {}
    lineage = record.get("lineage") or {}
    created = record.get("created_at")
    return ModelView(
        id=str(record["id"]), report=report, kind=record.get("kind"), method=record.get("method"),
        model=record.get("model"), dim=record.get("dim"), dataset_id=lineage.get("dataset_id"),
        dataset_name=dataset_name or (m.get("dataset") or {}).get("name"),
        dataset_fingerprint=(m.get("dataset") or {}).get("fingerprint"),
        teacher_id=lineage.get("teacher_id"),
        parameters=record.get("parameters") or m.get("config") or {},
        training=m.get("training") or {},
        created_at=str(created) if created is not None else m.get("created_at"),
        device=m.get("device"), active=bool(record.get("active")), href=href,
    )  # fmt: skip


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_model_dir(path: Path) -> ModelView:
    """Read a model directory's report.json (required) and manifest.json (optional)."""
    path = Path(path)
    report_path = path / "report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{path}: no report.json (not a model directory, or not evaluated)")
    report = _read_object(report_path)
    manifest_path = path / "manifest.json"
    manifest = _read_object(manifest_path) if manifest_path.is_file() else None
    return view_from_manifest(manifest, report, model_id=None if manifest else path.name)


class MixedDatasetsError(ValueError):
    """Models to compare were trained on different datasets; names the first one at fault."""

    def __init__(self, model_id: str, dataset: str, expected: str, first_id: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"model {model_id!r} was trained on dataset {dataset!r}, not on {expected!r} "
            f"like {first_id!r}: compare models of one dataset"
        )


def check_same_dataset(views: list[ModelView]) -> None:
    """Refuse a comparison across datasets (by registry id, else by fingerprint)."""
    if not views:
        return
    first = views[0]
    for v in views[1:]:
        for attr in ("dataset_id", "dataset_fingerprint"):
            a, b = getattr(first, attr), getattr(v, attr)
            if a is not None and b is not None:
                if a != b:
                    raise MixedDatasetsError(v.id, str(b), str(a), first.id)
                break


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
    metrics = view.report.get("metrics") or {}
    teacher = (view.report.get("teacher") or {}).get("metrics")
    deltas = view.report.get("deltas") or {}
    rows = []
    for spec in headline_specs(main_k(view.report)):
        if spec.key not in metrics and (teacher is None or spec.key not in teacher):
            continue
        rows.append(HeadlineRow(
            spec.key, spec.label, better(spec.key), _num(metrics.get(spec.key)),
            None if teacher is None else _num(teacher.get(spec.key)),
            None if teacher is None else _num(deltas.get(spec.key)),
        ))  # fmt: skip
    return rows


def group_labels(groups: list[dict[str, Any]]) -> tuple[str, ...]:
    """"G0 · head\\n24 items" … "G3 · tail\\n163 items" (two-line category labels)."""
    labels = []
    for i, g in enumerate(groups):
        name = f"G{g.get('group', i)}"
        if len(groups) > 1 and i == 0:
            name += " · head"
        elif len(groups) > 1 and i == len(groups) - 1:
            name += " · tail"
        items = g.get("items")
        labels.append(f"{name}\n{items} items" if items is not None else name)
    return tuple(labels)


def _column(groups: list[dict[str, Any]], key: str) -> tuple[float | None, ...]:
    return tuple(_num(g.get(key)) for g in groups)


def teacher_label(view: ModelView) -> str:
    """The teacher's series name: its id when that says "teacher", else "teacher <id>"."""
    tid = view.teacher_id or ""
    return tid if "teacher" in tid.lower() else f"teacher {tid}".strip()


def group_recall_chart(view: ModelView, k: int | None = None) -> BarChart:
    """Per-popularity-group Recall@K: the teacher's bars (students) beside this model's."""
    k = k or main_k(view.report)
    groups = view.report.get("groups") or []
    series = []
    if view.has_teacher:
        t_groups = view.report["teacher"]["groups"]
        series.append(Series(teacher_label(view), _column(t_groups, f"recall@{k}"), GREY))
    series.append(Series(view.id, _column(groups, f"recall@{k}"), MODEL_COLOR))
    return BarChart("group-recall", f"Recall@{k} per popularity group", group_labels(groups),
                    tuple(series), f"Recall@{k}")  # fmt: skip


def exposure_chart(view: ModelView, k: int | None = None) -> BarChart:
    """Each group's share of recommended slots (exposure@K) against its share of test positives."""
    k = k or main_k(view.report)
    groups = view.report.get("groups") or []
    series = [Series("share of test positives", _column(groups, "test_share"), TEST_SHARE_COLOR)]
    if view.has_teacher:
        t_groups = view.report["teacher"]["groups"]
        series.append(Series("teacher's slots", _column(t_groups, f"exposure_share@{k}"), GREY))
    series.append(Series(f"{view.id}'s slots", _column(groups, f"exposure_share@{k}"), MODEL_COLOR))
    return BarChart("exposure", f"Share of top-{k} slots vs share of test positives",
                    group_labels(groups), tuple(series), "share", percent=True)  # fmt: skip


def training_charts(view: ModelView) -> list[LineChart]:
    """Training loss per epoch, and validation NDCG@20 (and Recall@20) per epoch."""
    history = view.training.get("history") or []
    if not history:
        return []
    epochs = tuple(float(row.get("epoch", i + 1)) for i, row in enumerate(history))
    best = view.training.get("best_epoch")
    marker = float(best) if isinstance(best, int | float) and best else None
    label = f"best epoch {best}" if marker is not None else ""
    loss = LineChart(
        "training-loss", "Training loss", epochs,
        (Series("loss", tuple(_num(r.get("loss")) for r in history), PALETTE[1]),),
        "epoch", "loss", marker, label,
    )  # fmt: skip
    valid_series = []
    for key, color in (("valid_ndcg@20", PALETTE[0]), ("valid_recall@20", PALETTE[2])):
        if any(key in r for r in history):
            name = key.replace("valid_", "").replace("ndcg", "NDCG").replace("recall", "Recall")
            valid_series.append(Series(name, tuple(_num(r.get(key)) for r in history), color))
    charts = [loss]
    if valid_series:
        charts.append(LineChart("training-valid", "Validation", epochs, tuple(valid_series),
                                "epoch", "validation metric", marker, label))  # fmt: skip
    return charts


# -- several models on one dataset --------------------------------------------------------


def compare_specs(k: int) -> list[tuple[str, str]]:
    """(row key, label) of the comparison table; keys with a "." read nested report parts."""
    rows = [(s.key, s.label) for s in headline_specs(k)]
    rows += [(f"bias_amplification.arp@{k}", f"ARP@{k} vs teacher (ratio − 1)"),
             (f"retention.ndcg@{k}", f"NDCG@{k} retained from teacher")]  # fmt: skip
    return rows


def _row_value(report: dict[str, Any], key: str) -> float | None:
    if key.startswith("group"):
        g, _, metric = key[len("group"):].partition(".")
        groups = report.get("groups") or []
        return _num(groups[int(g)].get(metric)) if int(g) < len(groups) else None
    part, _, metric = key.rpartition(".")
    return _num((report.get(part or "metrics") or {}).get(metric))


def _best(values: dict[str, float | None], direction: str) -> list[str]:
    present = {m: v for m, v in values.items() if v is not None}
    if len(present) < 2 or not direction:
        return []
    score = {
        "higher": lambda v: -v, "lower": lambda v: v, "one": lambda v: abs(v - 1.0),
    }[direction]  # fmt: skip
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
    n_groups = max((len(v.report.get("groups") or []) for v in views), default=0)
    labels = group_labels((first.report.get("groups") or []) if first else [])
    for g in range(n_groups):
        name = labels[g].split("\n")[0] if g < len(labels) else f"G{g}"
        specs.append((f"group{g}.recall@{k}", f"Recall@{k} · {name}"))
    rows = []
    for key, label in specs:
        values = {v.id: _row_value(v.report, key) for v in views}
        if all(x is None for x in values.values()):
            continue
        direction = better(key)
        rows.append({"key": key, "label": label, "better": direction, "values": values,
                     "best": _best(values, direction)})  # fmt: skip
    return {
        "k": k,
        "dataset": {
            "id": first.dataset_id if first else None,
            "name": first.dataset_name if first else None,
            "fingerprint": first.dataset_fingerprint if first else None,
        },
        "models": [
            {"id": v.id, "kind": v.kind, "method": v.method, "model": v.model, "dim": v.dim,
             "teacher_id": v.teacher_id, "created_at": v.created_at}
            for v in views
        ],  # fmt: skip
        "rows": rows,
    }


def compare_group_recall_chart(views: list[ModelView], k: int) -> BarChart:
    """Recall@K per popularity group, one series per model."""
    groups = (views[0].report.get("groups") or []) if views else []
    series = tuple(
        Series(v.id, _column(v.report.get("groups") or [], f"recall@{k}"), PALETTE[i % len(PALETTE)])
        for i, v in enumerate(views)
    )
    return BarChart("group-recall", f"Recall@{k} per popularity group", group_labels(groups),
                    series, f"Recall@{k}")  # fmt: skip


def compare_exposure_chart(views: list[ModelView], k: int) -> BarChart:
    """Share of top-K slots per group for each model, beside the share of test positives."""
    groups = (views[0].report.get("groups") or []) if views else []
    series = [Series("share of test positives", _column(groups, "test_share"), TEST_SHARE_COLOR)]
    series += [
        Series(v.id, _column(v.report.get("groups") or [], f"exposure_share@{k}"), PALETTE[i % len(PALETTE)])
        for i, v in enumerate(views)
    ]
    return BarChart("exposure", f"Share of top-{k} slots vs share of test positives",
                    group_labels(groups), tuple(series), "share", percent=True)  # fmt: skip
