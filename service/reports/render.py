"""HTML pages of quality reports: one model's report and the comparison of several models.

Pure functions from ``service.reports.views.ModelView`` to one self-contained page: the CSS is
inlined, the charts are inline SVG, there is no script and nothing is fetched, so a
saved page opens anywhere. Every string that comes from a report, a manifest or a
request (model ids, dataset names, parameters) goes through ``html.escape``.
No web framework is imported here: the API and the offline ``unkd report`` share it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

from service.reports.charts import render_bar_chart, render_line_chart, render_scatter_chart
from service.reports.figures import (
    compare_exposure_chart,
    compare_group_recall_chart,
    comparison,
    exposure_chart,
    group_recall_chart,
    headline_rows,
    main_k,
    training_charts,
    tuning_front_chart,
)
from service.reports.views import ModelView
from training.manifest import QualityReport

STATIC = Path(__file__).resolve().parent / "static"
Linker = Callable[[str], str | None]  # model id -> href of its report page, None = no link
ARROWS = {"higher": "↑", "lower": "↓", "one": "→1", "": ""}


@lru_cache(maxsize=1)
def page_css() -> str:
    """The shared stylesheet, read once (service/reports/static/report.css, shipped as package data)."""
    return (STATIC / "report.css").read_text(encoding="utf-8")


def fmt_metric(key: str, value: float | None, *, signed: bool = False) -> str:
    """A table cell: ARP-like figures with one decimal, shares and rates with four."""
    if value is None:
        return "–"
    name = key.split("@")[0].split(".")[-1]
    decimals = 1 if name == "arp" and not key.startswith("bias_amplification") else 4
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _delta_class(direction: str, delta: float | None) -> str:
    """ "good" / "bad" for a student − teacher delta, by the metric's direction."""
    if delta is None or delta == 0 or direction not in ("higher", "lower"):
        return ""
    return "good" if (delta > 0) == (direction == "higher") else "bad"


def _when(when: datetime | None) -> str:
    if when is None:
        return "–"
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _link(text: str, href: str | None) -> str:
    return f'<a href="{escape(href, quote=True)}">{escape(text)}</a>' if href else escape(text)


def _page(title: str, head_html: str, body_html: str, footer_html: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{page_css()}</style></head>"
        f'<body><header class="page-head">{head_html}</header><main>{body_html}</main>'
        f"<footer>{footer_html}</footer></body></html>\n"
    )


def _crumbs(dashboard_href: str | None) -> str:
    inner = _link("← dashboard", dashboard_href) if dashboard_href else "unkd-serve"
    return f'<div class="crumbs">{inner}</div>'


def _protocol_note(report: QualityReport) -> str:
    p = report.protocol
    parts = [
        f"split {p.split}",
        f"{report.users_evaluated} users",
        f"{p.groups} popularity groups",
        f"excluded: {p.excluded}",
        f"IPS γ = {p.ips_gamma}",
    ]
    return escape(" · ".join(parts))


# -- one model ---------------------------------------------------------------------------


def _headline_table(view: ModelView) -> str:
    rows = headline_rows(view)
    student = view.has_teacher
    ci = view.report.ci
    head = '<tr><th>metric</th><th></th><th class="num">this model</th>'
    if student:
        head += '<th class="num">teacher</th><th class="num">Δ vs teacher</th>'
    out = [f'<table class="headline"><thead>{head}</tr></thead><tbody>']
    for r in rows:
        cell = fmt_metric(r.key, r.value)
        lo, hi = ci.get(r.key, (None, None))
        if lo is not None and hi is not None:
            cell += f'<span class="ci">[{lo:.4f}, {hi:.4f}]</span>'
        tr = (
            f'<tr data-metric="{escape(r.key, quote=True)}"><td>{escape(r.label)}</td>'
            f'<td class="dir" title="better: {r.better}">{ARROWS[r.better]}</td>'
            f'<td class="num">{cell}</td>'
        )
        if student:
            tr += (
                f'<td class="num">{fmt_metric(r.key, r.teacher)}</td>'
                f'<td class="num {_delta_class(r.better, r.delta)}">'
                f"{fmt_metric(r.key, r.delta, signed=True)}</td>"
            )
        out.append(tr + "</tr>")
    out.append("</tbody></table>")
    note = "↑ higher is better, ↓ lower is better. Brackets: 95% bootstrap CI over users."
    if student:
        note += " Δ is green where the student does better than its teacher."
    return "".join(out) + f'<p class="note">{note}</p>'


def _bias_note(view: ModelView, k: int) -> str:
    bias = view.report.bias_amplification or {}
    if not bias:
        return ""
    parts = []
    for key, label in (
        (f"arp@{k}", "ΔARP (ratio − 1)"),
        (f"head_share@{k}", "Δ head share"),
        (f"gini@{k}", "ΔGini"),
    ):
        value = bias.get(key)
        if value is not None:
            parts.append(f"{label} {value:+.4f}")
    return (
        f'<p class="note">Bias amplification vs teacher @{k}: {escape(", ".join(parts))}</p>'
        if parts
        else ""
    )


def _flat_params(params: dict[str, Any], method: str | None) -> list[tuple[str, str]]:
    """Parameters as (name, value); other methods' sub-configs are left out as noise."""
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        if isinstance(value, dict):
            if method is not None and key != method:
                continue
            out += [(f"{key}.{k}", str(v)) for k, v in value.items()]
        else:
            out.append((key, str(value)))
    return out


def _kv(pairs: list[tuple[str, str]], *, raw_values: bool = False) -> str:
    cells = "".join(
        f"<dt>{escape(k)}</dt><dd>{v if raw_values else escape(v)}</dd>" for k, v in pairs
    )
    return f'<dl class="kv">{cells}</dl>'


def _lineage(view: ModelView, link: Linker | None) -> str:
    t = view.training
    teacher = "–"
    if view.teacher_id:
        teacher = _link(view.teacher_id, link(view.teacher_id) if link else None)
    dataset = escape(view.dataset_name or "–")
    if view.dataset_id:
        dataset += f' <span class="muted mono">{escape(view.dataset_id)}</span>'
    pairs = [
        ("kind", escape(view.kind or "–")),
        ("method", escape(view.method or ("– (a teacher)" if view.kind == "teacher" else "–"))),
        ("model", escape(f"{view.model or '–'} · dim {view.dim if view.dim is not None else '–'}")),
        ("dataset", dataset),
        ("fingerprint", f'<span class="mono">{escape(view.dataset_fingerprint or "–")}</span>'),
        ("teacher", teacher),
        ("built", escape(_when(view.created_at))),
    ]
    if t is not None:
        pairs += [
            ("training time", escape(f"{t.seconds} s on {view.device or '?'}")),
            ("epochs", escape(f"{t.epochs_run} run, best {t.best_epoch}")),
        ]
    if view.head_share_cap is not None:  # never silent: a missed cap is said where users look
        cls = "ok" if view.head_share_cap.met else "bad"
        text = escape(view.head_share_cap.summary())
        pairs.append(("head-share cap", f'<span class="{cls}" id="head-share-cap">{text}</span>'))
    return _kv(pairs, raw_values=True)


def _all_metrics(view: ModelView) -> str:
    metrics = view.report.metrics
    ks = sorted({int(k.split("@")[1]) for k in metrics if "@" in k})
    names = list(dict.fromkeys(k.split("@")[0] for k in metrics if "@" in k))
    head = "".join(f'<th class="num">@{k}</th>' for k in ks)
    rows = "".join(
        f"<tr><td>{escape(n)}</td>"
        + "".join(
            f'<td class="num">{fmt_metric(f"{n}@{k}", metrics.get(f"{n}@{k}"))}</td>' for k in ks
        )
        + "</tr>"
        for n in names
    )
    groups = [g.model_dump() for g in view.report.groups]
    gkeys = [k for k in (groups[0] if groups else {}) if k != "group"]
    ghead = "".join(f'<th class="num">{escape(k)}</th>' for k in gkeys)
    grows = "".join(
        f"<tr><td>G{escape(str(g['group']))}</td>"
        + "".join(f'<td class="num">{_cell(g.get(k))}</td>' for k in gkeys)
        + "</tr>"
        for g in groups
    )
    return (
        f"<details><summary>All metrics and popularity groups</summary>"
        f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
        f'<div style="overflow-x:auto;margin-top:12px"><table><thead><tr><th>group</th>{ghead}'
        f"</tr></thead><tbody>{grows}</tbody></table></div></details>"
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return escape("–" if value is None else str(value))


def _short(value: Any) -> str:
    """A parameter or a duration: three significant digits (a decay of 1e-05 stays visible)."""
    return f"{value:.3g}" if isinstance(value, float) else _cell(value)


def _tuning(view: ModelView) -> str:
    """The trials that chose this model (report.tuning): the front chart and the table."""
    tuning, chart = view.report.tuning, tuning_front_chart(view)
    if tuning is None or chart is None:
        return ""
    names = list(dict.fromkeys(k for t in tuning.trials for k in t.params))
    head = "".join(f'<th class="num">{escape(n)}</th>' for n in names)
    rows = []
    for t in tuning.trials:
        kept = t.number == tuning.best_trial
        cells = "".join(f'<td class="num">{_short(t.params.get(n))}</td>' for n in names)
        rows.append(
            f'<tr data-trial="{t.number}" data-state="{escape(t.state, quote=True)}"'
            f"{' class=best' if kept else ''}><td>{t.number}{' ★' if kept else ''}</td>"
            f"<td>{escape(t.state)}</td>{cells}<td class=num>{_cell(t.valid_ndcg)}</td>"
            f"<td class=num>{_cell(t.valid_head_share)}</td><td class=num>{_cell(t.epochs)}</td>"
            f"<td class=num>{_short(t.seconds)}</td><td>{escape(t.note or '')}</td></tr>"
        )
    how = f"{len(tuning.trials)} trials, {tuning.sampler}, pruner {tuning.pruner or 'none'}; objective {tuning.objective}"
    if tuning.constraint:
        how += f"; constraint {tuning.constraint}"
    if not tuning.best_feasible:
        how += ". No trial met the constraint: the least violating one was kept"
    return (
        f'<section class="card"><h2>Tuning</h2>{render_scatter_chart(chart)}'
        f'<p class="note">{escape(how)}. Chosen on the validation split only; the line is '
        "the front of trials no other beats on both axes.</p>"
        '<details><summary>All trials</summary><div style="overflow-x:auto"><table class="trials">'
        f"<thead><tr><th>trial</th><th>state</th>{head}<th class=num>valid NDCG@20</th>"
        "<th class=num>valid head share@20</th><th class=num>epochs</th><th class=num>s</th>"
        f"<th>note</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div></details></section>"
    )


def render_report_page(
    view: ModelView, *, link: Linker | None = None, dashboard_href: str | None = None
) -> str:
    """One model's quality report as a self-contained HTML page.

    Args:
        view: the model (report, manifest fields, registry fields).
        link: model id -> href of its report page (the teacher link); None: no links.
        dashboard_href: where "← dashboard" points; None: no link.
    """
    k = main_k(view.report)
    badges = f'<span class="badge">{escape(view.title)}</span>'
    if view.active:
        badges += '<span class="badge live">serving</span>'
    head = (
        f"{_crumbs(dashboard_href)}<h1>{escape(view.id)} {badges}</h1>"
        f'<p class="sub">Quality report on dataset <b>{escape(view.dataset_name or "–")}</b>'
        f" · built {escape(_when(view.created_at))} · {_protocol_note(view.report)}</p>"
    )
    charts = training_charts(view)
    training = (
        '<div class="grid2">'
        + "".join(f"<div>{render_line_chart(c)}</div>" for c in charts)
        + "</div>"
        if charts
        else '<p class="note">No training history recorded for this model.</p>'
    )
    recall_note = (
        "Grey: the teacher. A student that keeps the teacher's knowledge inside each "
        "popularity group holds its tail bars."
        if view.has_teacher
        else "Recall restricted to each group's test positives (METRICS.md B)."
    )
    body = (
        f'<section class="card"><h2>Headline figures</h2>{_headline_table(view)}'
        f"{_bias_note(view, k)}</section>"
        '<div class="grid2">'
        f'<section class="card">{render_bar_chart(group_recall_chart(view, k))}'
        f'<p class="note">{escape(recall_note)}</p></section>'
        f'<section class="card">{render_bar_chart(exposure_chart(view, k))}'
        '<p class="note">A popularity-debiased model\'s bars follow the share of test positives; '
        "a biased one over-fills the head group.</p></section></div>"
        f'<section class="card"><h2>Training curve</h2>{training}</section>'
        f"{_tuning(view)}"
        '<div class="grid2">'
        f'<section class="card"><h2>Parameters</h2>{_kv(_flat_params(view.parameters, view.method)) if view.parameters else "<p class=note>none recorded</p>"}</section>'
        f'<section class="card"><h2>Lineage and build</h2>{_lineage(view, link)}</section></div>'
        f'<section class="card">{_all_metrics(view)}</section>'
    )
    footer = (
        f"unkd-serve quality report · {_protocol_note(view.report)} · definitions in METRICS.md"
    )
    return _page(f"Quality report · {view.id}", head, body, footer)


# -- several models ----------------------------------------------------------------------


def _model_row(v: ModelView, link: Linker | None) -> str:
    live = ' <span class="badge live">serving</span>' if v.active else ""
    shape = f"{v.model or '–'} · dim {v.dim}" if v.dim is not None else (v.model or "–")
    return (
        f"<tr><td>{_link(v.id, link(v.id) if link else None)}{live}</td>"
        f"<td>{escape(v.kind or '–')}</td><td>{escape(v.method or '–')}</td>"
        f"<td>{escape(shape)}</td><td>{escape(v.teacher_id or '–')}</td>"
        f"<td>{escape(_when(v.created_at))}</td></tr>"
    )


def render_compare_page(
    views: list[ModelView], *, link: Linker | None = None, dashboard_href: str | None = None
) -> str:
    """Several models of one dataset side by side, the best value of each row marked.

    Raises:
        MixedDatasetsError: the models were trained on different datasets.
    """
    data = comparison(views)
    k = data["k"]
    ds = data["dataset"]
    ds_name = ds["name"] or ds["id"] or "–"
    head = (
        f"{_crumbs(dashboard_href)}<h1>Comparison · {escape(str(ds_name))}</h1>"
        f'<p class="sub">{len(views)} models · K = {k} · '
        f"{_protocol_note(views[0].report) if views else ''}</p>"
    )
    by_id = {v.id: v for v in views}
    models = "".join(_model_row(v, link) for v in views)
    cols = "".join(f'<th class="num">{escape(v.id)}</th>' for v in views)
    rows = []
    for row in data["rows"]:
        cells = "".join(
            f'<td class="num{" best" if m in row["best"] else ""}" data-model="{escape(m, quote=True)}">'
            f"{fmt_metric(row['key'], row['values'][m])}</td>"
            for m in by_id
        )
        rows.append(
            f'<tr data-metric="{escape(row["key"], quote=True)}"><td>{escape(row["label"])}</td>'
            f'<td class="dir" title="better: {row["better"]}">{ARROWS[row["better"]]}</td>{cells}</tr>'
        )
    body = (
        '<section class="card"><h2>Models</h2><table><thead><tr><th>model</th><th>kind</th>'
        "<th>method</th><th>model · dim</th><th>teacher</th><th>built</th></tr></thead>"
        f"<tbody>{models}</tbody></table></section>"
        f'<section class="card"><h2>Figures side by side</h2><div style="overflow-x:auto">'
        f'<table class="compare"><thead><tr><th>metric</th><th></th>{cols}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="note">★ best value of the row (↑ higher is better, ↓ lower is better, '
        "→1 closest to 1). Rows “vs teacher” exist for students only.</p></section>"
        '<div class="grid2">'
        f'<section class="card">{render_bar_chart(compare_group_recall_chart(views, k))}</section>'
        f'<section class="card">{render_bar_chart(compare_exposure_chart(views, k))}'
        '<p class="note">Bars that follow the dark “test positives” bars mean a model '
        "recommends each popularity group as often as users actually consume it.</p></section></div>"
    )
    footer = "unkd-serve model comparison · definitions in METRICS.md"
    return _page(f"Comparison · {ds_name}", head, body, footer)
