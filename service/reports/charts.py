"""Inline SVG charts for the report pages: grouped bars and line charts, no JavaScript.

A chart is a frozen dataclass that holds exactly the numbers it plots (tests compare them
with the quality report) and a pure function turns it into an ``<svg>`` string. Every
text that reaches the markup goes through ``html.escape``: series and category names
come from model ids and dataset names, which are user input.

Each bar is a ``<rect class="bar">`` and each line point a ``<circle class="point">``,
with ``data-series``, ``data-category`` / ``data-x`` and ``data-value`` attributes and a
``<title>`` tooltip, so a browser test can count what was drawn and read its value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

# Tableau 10: distinguishable, prints well, readable for most colour-vision deficiencies.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
GREY = "#a3acb9"
INK = "#1f2933"
MUTED = "#616e7c"
GRID = "#e4e7eb"

WIDTH = 560
FONT = 12
CHAR_W = 7.0  # generous average glyph width at FONT px, for the legend layout


@dataclass(frozen=True)
class Series:
    """One named sequence of values, drawn in one colour; None = no value (nothing drawn)."""

    name: str
    values: tuple[float | None, ...]
    color: str


@dataclass(frozen=True)
class BarChart:
    """Grouped bars: one group per category, one bar per series inside each group."""

    chart_id: str
    title: str
    categories: tuple[str, ...]  # "\n" splits a label over two lines
    series: tuple[Series, ...]
    y_label: str
    percent: bool = False

    @property
    def bar_count(self) -> int:
        return len(self.categories) * len(self.series)


@dataclass(frozen=True)
class LineChart:
    """Lines over a numeric x axis (epochs), with an optional marked x (the best epoch)."""

    chart_id: str
    title: str
    x: tuple[float, ...]
    series: tuple[Series, ...]
    x_label: str
    y_label: str
    marker_x: float | None = None
    marker_label: str = ""


def fmt_value(value: float | None, percent: bool = False) -> str:
    """A short human form of a plotted number ("–" when undefined)."""
    if value is None or not math.isfinite(value):
        return "–"
    if percent:
        return f"{100 * value:.1f}%"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of ten."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks = [start]
    while ticks[-1] < hi - 1e-9 * step:
        ticks.append(start + len(ticks) * step)
    return [round(t, 12) for t in ticks]


def _tick_label(value: float, step: float, percent: bool) -> str:
    if percent:
        decimals = max(0, -math.floor(math.log10(step * 100) + 1e-9)) if step else 0
        return f"{100 * value:.{decimals}f}%"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step else 0
    return f"{value:.{min(decimals, 4)}f}"


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _data_value(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _legend(series: tuple[Series, ...], top: float, left: float, right: float) -> tuple[str, float]:
    """Legend swatches laid out in rows; returns the markup and the height it takes."""
    parts, x, y = [], left, top
    for s in series:
        w = 16 + CHAR_W * len(s.name) + 18
        if x + w > right and x > left:
            x, y = left, y + 18
        parts.append(
            f'<g class="legend-item" data-series="{_attr(s.name)}">'
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="11" height="11" rx="2" fill="{_attr(s.color)}"/>'
            f'<text x="{x + 16:.1f}" y="{y + 1:.1f}" fill="{INK}">{escape(s.name)}</text></g>'
        )
        x += w
    return "".join(parts), (y - top) + 18 if series else 0.0


def _frame(chart_id: str, kind: str, title: str, height: float, body: str) -> str:
    tid = f"{chart_id}-title"
    return (
        f'<svg class="chart chart-{kind}" data-chart="{_attr(chart_id)}" role="img" '
        f'aria-labelledby="{_attr(tid)}" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="inherit" font-size="{FONT}">'
        f'<title id="{_attr(tid)}">{escape(title)}</title>'
        f'<text class="chart-title" x="0" y="16" font-size="14" font-weight="600" fill="{INK}">'
        f"{escape(title)}</text>{body}</svg>"
    )


def _y_axis(
    ticks: list[float],
    y_of: Callable[[float], float],
    left: float,
    right: float,
    percent: bool,
    label: str,
    top: float,
    bottom: float,
) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    parts = []
    for t in ticks:
        y = y_of(t)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{MUTED}">'
            f"{_tick_label(t, step, percent)}</text>"
        )
    mid = (top + bottom) / 2
    parts.append(
        f'<text x="12" y="{mid:.1f}" transform="rotate(-90 12 {mid:.1f})" text-anchor="middle" '
        f'fill="{MUTED}">{escape(label)}</text>'
    )
    return "".join(parts)


def render_bar_chart(chart: BarChart) -> str:
    """The grouped bar chart as one ``<svg>`` element (responsive through its viewBox)."""
    left, right = 64.0, WIDTH - 8.0
    legend, legend_h = _legend(chart.series, 40, left, right)
    top = 40 + legend_h + 8
    plot_h = 190.0
    bottom = top + plot_h
    two_lines = any("\n" in c for c in chart.categories)
    height = bottom + (44 if two_lines else 30)

    values = [v for s in chart.series for v in s.values if v is not None and math.isfinite(v)]
    vmax = max(values, default=0.0)
    ticks = nice_ticks(0.0, vmax if vmax > 0 else 1.0)
    y_max = ticks[-1]

    def y_of(v: float) -> float:
        return bottom - plot_h * (v / y_max)

    body = [legend, _y_axis(ticks, y_of, left, right, chart.percent, chart.y_label, top, bottom)]
    n_cat, n_ser = max(1, len(chart.categories)), max(1, len(chart.series))
    slot = (right - left) / n_cat
    bar_w = min(46.0, slot * 0.8 / n_ser)
    show_labels = bar_w >= 30  # value labels only where they fit above their bar
    for c, category in enumerate(chart.categories):
        x0 = left + c * slot + (slot - bar_w * n_ser) / 2
        for s_idx, s in enumerate(chart.series):
            v = s.values[c] if c < len(s.values) else None
            ok = v is not None and math.isfinite(v)
            y = y_of(max(0.0, v)) if v is not None and ok else bottom
            x = x0 + s_idx * bar_w
            tip = f"{s.name} · {category.replace(chr(10), ' ')}: {fmt_value(v, chart.percent)}"
            body.append(
                f'<rect class="bar{"" if ok else " missing"}" data-series="{_attr(s.name)}" '
                f'data-category="{_attr(category.split(chr(10))[0])}" data-value="{_data_value(v)}" '
                f'x="{x + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{bottom - y:.1f}" '
                f'fill="{_attr(s.color)}"><title>{escape(tip)}</title></rect>'
            )
            if show_labels:
                body.append(
                    f'<text class="bar-label" x="{x + bar_w / 2:.1f}" y="{y - 4:.1f}" '
                    f'text-anchor="middle" font-size="10" fill="{MUTED}">'
                    f"{fmt_value(v, chart.percent)}</text>"
                )
        cx = left + c * slot + slot / 2
        for line_no, text in enumerate(category.split("\n")[:2]):
            body.append(
                f'<text x="{cx:.1f}" y="{bottom + 16 + 14 * line_no:.1f}" text-anchor="middle" '
                f'fill="{INK if line_no == 0 else MUTED}">{escape(text)}</text>'
            )
    body.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="{MUTED}"/>')
    return _frame(chart.chart_id, "bars", chart.title, height, "".join(body))


def render_line_chart(chart: LineChart) -> str:
    """The line chart as one ``<svg>`` element; None values break a line into segments."""
    left, right = 64.0, WIDTH - 12.0
    legend, legend_h = _legend(chart.series, 40, left, right)
    top = 40 + legend_h + 8
    plot_h = 170.0
    bottom = top + plot_h
    height = bottom + 40

    values = [v for s in chart.series for v in s.values if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.5
    ticks = nice_ticks(lo - pad, hi + pad)
    y_lo, y_hi = ticks[0], ticks[-1]
    xs = list(chart.x) or [0.0]
    x_lo, x_hi = min(xs), max(xs)
    x_span = (x_hi - x_lo) or 1.0

    def x_of(x: float) -> float:
        return left + (right - left) * ((x - x_lo) / x_span if x_hi > x_lo else 0.5)

    def y_of(v: float) -> float:
        return bottom - plot_h * (v - y_lo) / ((y_hi - y_lo) or 1.0)

    body = [legend, _y_axis(ticks, y_of, left, right, False, chart.y_label, top, bottom)]
    x_ticks = [t for t in nice_ticks(x_lo, x_hi, target=8) if x_lo - 1e-9 <= t <= x_hi + 1e-9]
    for t in x_ticks or xs[:1]:
        body.append(
            f'<text x="{x_of(t):.1f}" y="{bottom + 16:.1f}" text-anchor="middle" fill="{MUTED}">'
            f"{t:g}</text>"
        )
    body.append(
        f'<text x="{(left + right) / 2:.1f}" y="{bottom + 34:.1f}" text-anchor="middle" '
        f'fill="{MUTED}">{escape(chart.x_label)}</text>'
    )
    if chart.marker_x is not None:
        mx = x_of(chart.marker_x)
        flip = mx > right - 90  # near the right edge the label goes on the left of the line
        body.append(
            f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{bottom}" '
            f'stroke="{MUTED}" stroke-dasharray="4 3"/>'
            f'<text x="{mx - 4 if flip else mx + 4:.1f}" y="{top + 12:.1f}" font-size="11" '
            f'fill="{MUTED}" text-anchor="{"end" if flip else "start"}">'
            f"{escape(chart.marker_label)}</text>"
        )
    for s in chart.series:
        segments: list[list[str]] = [[]]
        points = []
        for x, v in zip(xs, s.values, strict=False):
            if v is None or not math.isfinite(v):
                segments.append([])
                continue
            px, py = x_of(x), y_of(v)
            segments[-1].append(f"{px:.1f},{py:.1f}")
            points.append(
                f'<circle class="point" data-series="{_attr(s.name)}" data-x="{x:g}" '
                f'data-value="{_data_value(v)}" cx="{px:.1f}" cy="{py:.1f}" r="2.6" '
                f'fill="{_attr(s.color)}"><title>{escape(s.name)} · {escape(chart.x_label)} {x:g}: '
                f"{fmt_value(v)}</title></circle>"
            )
        for seg in segments:
            if len(seg) > 1:
                body.append(
                    f'<polyline class="line" data-series="{_attr(s.name)}" fill="none" '
                    f'stroke="{_attr(s.color)}" stroke-width="2" points="{" ".join(seg)}"/>'
                )
        body.extend(points)
    body.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="{MUTED}"/>')
    return _frame(chart.chart_id, "lines", chart.title, height, "".join(body))


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str  # the tooltip's name of the point ("trial 3")


@dataclass(frozen=True)
class PointSeries:
    name: str
    points: tuple[Point, ...]
    color: str
    radius: float = 3.5


@dataclass(frozen=True)
class ScatterChart:
    """Points over two numeric axes, with an optional front (a step line through the
    points no other beats on both axes) and a marked x (a bound)."""

    chart_id: str
    title: str
    series: tuple[PointSeries, ...]
    x_label: str
    y_label: str
    front: tuple[tuple[float, float], ...] = ()
    marker_x: float | None = None
    marker_label: str = ""
    x_percent: bool = False

    @property
    def point_count(self) -> int:
        return sum(len(s.points) for s in self.series)


def render_scatter_chart(chart: ScatterChart) -> str:
    """The scatter chart as one ``<svg>`` element: each point a ``<circle class="point">``
    with data-series, data-x and data-value (its y), the front a ``<polyline class="front">``."""
    left, right = 64.0, WIDTH - 12.0
    legend_series = tuple(Series(s.name, (), s.color) for s in chart.series)
    legend, legend_h = _legend(legend_series, 40, left, right)
    top = 40 + legend_h + 8
    plot_h = 190.0
    bottom = top + plot_h
    height = bottom + 40
    pts = [p for s in chart.series for p in s.points if math.isfinite(p.x) and math.isfinite(p.y)]
    xs = [p.x for p in pts] + ([chart.marker_x] if chart.marker_x is not None else [])
    ys = [p.y for p in pts]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    x_ticks = nice_ticks(
        x_lo - ((x_hi - x_lo) * 0.08 or 0.01), x_hi + ((x_hi - x_lo) * 0.08 or 0.01)
    )
    y_ticks = nice_ticks(
        y_lo - ((y_hi - y_lo) * 0.08 or 0.01), y_hi + ((y_hi - y_lo) * 0.08 or 0.01)
    )

    def x_of(x: float) -> float:
        return left + (right - left) * (x - x_ticks[0]) / ((x_ticks[-1] - x_ticks[0]) or 1.0)

    def y_of(v: float) -> float:
        return bottom - plot_h * (v - y_ticks[0]) / ((y_ticks[-1] - y_ticks[0]) or 1.0)

    body = [legend, _y_axis(y_ticks, y_of, left, right, False, chart.y_label, top, bottom)]
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for t in x_ticks:
        body.append(
            f'<text x="{x_of(t):.1f}" y="{bottom + 16:.1f}" text-anchor="middle" '
            f'fill="{MUTED}">{_tick_label(t, x_step, chart.x_percent)}</text>'
        )
    body.append(
        f'<text x="{(left + right) / 2:.1f}" y="{bottom + 34:.1f}" text-anchor="middle" '
        f'fill="{MUTED}">{escape(chart.x_label)}</text>'
    )
    if chart.marker_x is not None:
        mx = x_of(chart.marker_x)
        flip = mx > right - 120
        body.append(
            f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{bottom}" '
            f'stroke="{MUTED}" stroke-dasharray="4 3"/>'
            f'<text x="{mx - 4 if flip else mx + 4:.1f}" y="{top + 12:.1f}" font-size="11" '
            f'fill="{MUTED}" text-anchor="{"end" if flip else "start"}">{escape(chart.marker_label)}</text>'
        )
    if len(chart.front) > 1:
        steps = []
        for i, (fx, fy) in enumerate(chart.front):
            if i:
                steps.append(f"{x_of(fx):.1f},{y_of(chart.front[i - 1][1]):.1f}")
            steps.append(f"{x_of(fx):.1f},{y_of(fy):.1f}")
        body.append(
            f'<polyline class="front" fill="none" stroke="{MUTED}" stroke-width="1.5" '
            f'points="{" ".join(steps)}"/>'
        )
    for s in chart.series:
        for p in s.points:
            if not (math.isfinite(p.x) and math.isfinite(p.y)):
                continue
            tip = f"{p.label}: {chart.y_label} {fmt_value(p.y)}, {chart.x_label} {fmt_value(p.x, chart.x_percent)}"
            body.append(
                f'<circle class="point" data-series="{_attr(s.name)}" data-x="{p.x!r}" '
                f'data-value="{p.y!r}" cx="{x_of(p.x):.1f}" cy="{y_of(p.y):.1f}" r="{s.radius}" '
                f'fill="{_attr(s.color)}" fill-opacity="0.85"><title>{escape(tip)}</title></circle>'
            )
    body.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="{MUTED}"/>')
    return _frame(chart.chart_id, "scatter", chart.title, height, "".join(body))
