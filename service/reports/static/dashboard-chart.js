// Grouped bar charts as inline SVG, drawn the way service/reports/charts.py draws the
// report pages' (same layout, palette and markup): each bar a <rect class="bar"> with
// data-series, data-category and data-value, so a browser test can read what was drawn.

import { svg, isNum } from "./dashboard-lib.js";

export const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"];
export const GREY = "#a3acb9";
const INK = "#1f2933", MUTED = "#616e7c", GRID = "#e4e7eb";
const WIDTH = 560, FONT = 12, CHAR_W = 7.0;

function fmtValue(v, percent) {
  if (!isNum(v)) return "–";
  if (percent) return `${(100 * v).toFixed(1)}%`;
  if (Math.abs(v) >= 100) return v.toFixed(0);
  return Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(3);
}

// Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of ten.
function niceTicks(lo, hi, target = 5) {
  if (hi <= lo) hi = lo + (Math.abs(lo) || 1);
  const raw = (hi - lo) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const start = Math.floor(lo / step + 1e-9) * step;
  const ticks = [start];
  while (ticks[ticks.length - 1] < hi - 1e-9 * step) ticks.push(start + ticks.length * step);
  return ticks.map((t) => Math.round(t * 1e12) / 1e12);
}

function tickLabel(value, step, percent) {
  const scale = percent ? 100 : 1;
  const decimals = Math.min(4, Math.max(0, -Math.floor(Math.log10(step * scale) + 1e-9)));
  return percent ? `${(100 * value).toFixed(decimals)}%` : value.toFixed(decimals);
}

function legend(series, top, left, right) {
  const items = [];
  let x = left, y = top;
  for (const s of series) {
    const w = 16 + CHAR_W * s.name.length + 18;
    if (x + w > right && x > left) { x = left; y += 18; }
    items.push(svg("g", { class: "legend-item", "data-series": s.name },
      svg("rect", { x: x.toFixed(1), y: (y - 9).toFixed(1), width: 11, height: 11, rx: 2, fill: s.color }),
      svg("text", { x: (x + 16).toFixed(1), y: (y + 1).toFixed(1), fill: INK, text: s.name })));
    x += w;
  }
  return { items, height: series.length ? y - top + 18 : 0 };
}

// chart: {id, title, categories: ["G0 · head", ...], series: [{name, values, color}],
// yLabel, percent}. Returns the <svg> element (responsive through its viewBox).
export function barChart(chart) {
  const left = 64, right = WIDTH - 8;
  const { items, height: legendH } = legend(chart.series, 40, left, right);
  const top = 40 + legendH + 8, plotH = 190, bottom = top + plotH, height = bottom + 30;
  const values = chart.series.flatMap((s) => s.values.filter(isNum));
  const vmax = Math.max(0, ...values);
  const ticks = niceTicks(0, vmax > 0 ? vmax : 1);
  const yMax = ticks[ticks.length - 1];
  const yOf = (v) => bottom - plotH * (v / yMax);
  const step = ticks.length > 1 ? ticks[1] - ticks[0] : 1;

  const body = [...items];
  for (const t of ticks) {
    body.push(svg("line", { x1: left, x2: right, y1: yOf(t).toFixed(1), y2: yOf(t).toFixed(1), stroke: GRID }),
      svg("text", { x: left - 6, y: (yOf(t) + 4).toFixed(1), "text-anchor": "end", fill: MUTED, text: tickLabel(t, step, chart.percent) }));
  }
  const mid = ((top + bottom) / 2).toFixed(1);
  body.push(svg("text", { x: 12, y: mid, transform: `rotate(-90 12 ${mid})`, "text-anchor": "middle", fill: MUTED, text: chart.yLabel }));

  const nCat = Math.max(1, chart.categories.length), nSer = Math.max(1, chart.series.length);
  const slot = (right - left) / nCat;
  const barW = Math.min(46, (slot * 0.8) / nSer);
  chart.categories.forEach((category, c) => {
    const x0 = left + c * slot + (slot - barW * nSer) / 2;
    chart.series.forEach((s, i) => {
      const v = s.values[c];
      const ok = isNum(v);
      const y = ok ? yOf(Math.max(0, v)) : bottom;
      const x = x0 + i * barW;
      body.push(svg("rect", {
        class: ok ? "bar" : "bar missing", "data-series": s.name, "data-category": category,
        "data-value": ok ? String(v) : "", x: (x + 1).toFixed(1), y: y.toFixed(1),
        width: (barW - 2).toFixed(1), height: (bottom - y).toFixed(1), fill: s.color,
      }, svg("title", { text: `${s.name} · ${category}: ${fmtValue(v, chart.percent)}` })));
      if (barW >= 30) {
        body.push(svg("text", { class: "bar-label", x: (x + barW / 2).toFixed(1), y: (y - 4).toFixed(1),
          "text-anchor": "middle", "font-size": 10, fill: MUTED, text: fmtValue(v, chart.percent) }));
      }
    });
    body.push(svg("text", { x: (left + c * slot + slot / 2).toFixed(1), y: (bottom + 16).toFixed(1),
      "text-anchor": "middle", fill: INK, text: category }));
  });
  body.push(svg("line", { x1: left, x2: right, y1: bottom, y2: bottom, stroke: MUTED }));

  const titleId = `${chart.id}-title`;
  return svg("svg", {
    class: "chart chart-bars", "data-chart": chart.id, role: "img", "aria-labelledby": titleId,
    viewBox: `0 0 ${WIDTH} ${height.toFixed(0)}`, "font-family": "inherit", "font-size": FONT,
  }, svg("title", { id: titleId, text: chart.title }),
  svg("text", { class: "chart-title", x: 0, y: 16, "font-size": 14, "font-weight": 600, fill: INK, text: chart.title }),
  ...body);
}
