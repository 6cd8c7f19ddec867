// What is served and how it is changed: publish (from the models table, with the gate's
// "publish anyway (force)"), the publish history and rollback, the A/B experiment
// (PUT/DELETE /v1/serving/experiment) and the live exposure of each served model
// (GET /v1/serving/exposure) drawn beside its offline figures, with the outcomes of its
// answers (GET /v1/serving/outcomes: click rates per arm and the arms' always-valid test).
//
// The experiment's state is read from GET /v1/serving/experiment on every exposure refresh
// (200 with "running": false when none runs).

import { barChart, GREY, PALETTE } from "./dashboard-chart.js";
import {
  call, clearMarks, el, getJSON, isNum, num, pct, reportHref, setOptions, showError, showFailure,
  showOk, submitWith, when,
} from "./dashboard-lib.js";

const state = { models: [], servedModels: [], exposure: "", outcomes: "" };

// -- publish ---------------------------------------------------------------------------

export async function publish(modelId, button, { force = false } = {}) {
  const box = document.getElementById("publish-msg");
  button.disabled = true;
  clearMarks(null);
  delete box.dataset.status;
  try {
    const result = await call("POST", `v1/models/${encodeURIComponent(modelId)}/publish`,
      force ? { json: { force: true } } : {});
    if (result.status === 202) {
      showOk(box, `Publishing ${modelId}${force ? " (forced past the gate)" : ""}: job ${result.data.id} queued.`);
      return;
    }
    const gated = result.status === 409 && String(result.data.detail || "").includes("publish gate refused");
    const forceButton = gated
      ? el("button", { class: "force", "data-model-id": modelId, text: "publish anyway (force)",
        onclick: (ev) => publish(modelId, ev.target, { force: true }) })
      : null;
    showError(box, null, result.status, result.data, { extra: forceButton });
  } catch (err) {
    showFailure(box, err);
  } finally {
    button.disabled = false;
  }
}

// -- publish history and rollback --------------------------------------------------------

export function drawHistory(history) {
  const rows = history.items.map((e) => {
    const gate = (e.gate || []).map((c) => `${c.rule} ${c.passed === null ? "not checked" : c.passed ? "passed" : "failed"}`);
    return el("tr", { "data-action": e.action, "data-model-id": e.model_id },
      el("td", { text: when(e.published_at) }),
      el("td", {}, el("span", { class: `badge a-${e.action}`, text: e.action }), e.forced ? el("span", { class: "badge forced", text: "forced" }) : null),
      el("td", {}, el("a", { href: reportHref(e.model_id), text: e.model_id })),
      el("td", { text: e.previous_model_id || "–" }),
      el("td", { text: e.key_name || "–" }),
      el("td", { class: "muted", text: gate.join(" · ") || "–" }));
  });
  document.querySelector("#history tbody").replaceChildren(...rows);
  document.getElementById("history-empty").hidden = rows.length > 0;
  document.getElementById("history-total").textContent = history.total > rows.length ? `latest ${rows.length} of ${history.total}` : "";
}

function setupRollback(onChange) {
  const button = document.getElementById("rollback");
  const box = document.getElementById("rollback-msg");
  button.addEventListener("click", async () => {
    button.disabled = true;
    clearMarks(null);
    delete box.dataset.status;
    try {
      const result = await call("POST", "v1/serving/rollback");
      if (result.ok) {
        const e = result.data;
        showOk(box, `Rolled back: serving ${e.model_id} again (was ${e.previous_model_id || "nothing"}).`);
        onChange();
      } else {
        showError(box, null, result.status, result.data);
      }
    } catch (err) {
      showFailure(box, err);
    } finally {
      button.disabled = false;
    }
  });
}

// -- the A/B experiment -------------------------------------------------------------------

const servable = () => state.models.filter((m) => m.model !== "ease");

function armRow(index) {
  const select = el("select", { name: `arms.${index}.model_id`, "aria-label": `arm ${index + 1} model` });
  const weight = el("input", { type: "number", name: `arms.${index}.weight`, min: 0, max: 1, step: 0.05,
    value: 0.5, "aria-label": `arm ${index + 1} weight`, class: "weight" });
  const row = el("div", { class: "arm-row" }, el("span", { class: "muted", text: `arm ${index + 1}` }), select, "weight", weight,
    el("button", { type: "button", class: "remove-arm", text: "remove", onclick: () => { row.remove(); renumberArms(); } }));
  fillArmChoices(select, index);
  return row;
}

function fillArmChoices(select, index) {
  const options = servable().map((m) => [m.id, `${m.id}${m.active ? " (served)" : ""}`]);
  const fresh = !select.value;
  setOptions(select, options, "no model to serve yet");
  if (fresh && options.length) select.value = options[Math.min(index, options.length - 1)][0];
}

function renumberArms() {
  document.querySelectorAll("#arms .arm-row").forEach((row, i) => {
    row.querySelector("span").textContent = `arm ${i + 1}`;
    row.querySelector("select").name = `arms.${i}.model_id`;
    row.querySelector("input").name = `arms.${i}.weight`;
  });
}

function experimentBody(form) {
  const arms = [...form.querySelectorAll("#arms .arm-row")].map((row) => {
    const weight = row.querySelector("input").value.trim();
    return { model_id: row.querySelector("select").value, ...(weight === "" ? {} : { weight: Number(weight) }) };
  });
  const salt = form.elements.namedItem("salt").value.trim();
  return salt ? { arms, salt } : { arms };
}

function drawExperiment(experiment) {
  const line = document.getElementById("experiment-state");
  line.dataset.running = experiment ? "true" : "false";
  if (!experiment) {
    line.replaceChildren("No experiment running: the active model answers every request.");
    return;
  }
  const arms = experiment.arms.map((a) => `${a.model_id} ${pct(a.weight, 0)}`).join(" · ");
  line.replaceChildren(el("span", { class: "badge live", text: "experiment running" }),
    ` ${arms} · since ${when(experiment.started_at)}${experiment.started_by ? ` by ${experiment.started_by}` : ""} · salt `,
    el("code", { text: experiment.salt }));
}

function setupExperiment(onChange) {
  const form = document.getElementById("experiment-form");
  const arms = document.getElementById("arms");
  arms.append(armRow(0), armRow(1));
  document.getElementById("add-arm").addEventListener("click", () => arms.append(armRow(arms.querySelectorAll(".arm-row").length)));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitWith(form, () => call("PUT", "v1/serving/experiment", { json: experimentBody(form) }), (exp) => {
      drawExperiment(exp);
      onChange();
      return `Experiment started: ${exp.arms.map((a) => `${a.model_id} ${pct(a.weight, 0)}`).join(", ")}.`;
    });
  });
  const stop = document.getElementById("stop-experiment");
  stop.addEventListener("click", () => {
    submitWith(form, () => call("DELETE", "v1/serving/experiment"), (exp) => {
      drawExperiment(null);
      onChange();
      return `Experiment stopped (it ran since ${when(exp.started_at)}).`;
    });
  });
}

// -- live exposure -------------------------------------------------------------------------

function windowLabel(seconds) {
  if (!isNum(seconds)) return "window";
  return seconds % 60 === 0 ? `last ${seconds / 60} min` : `last ${seconds} s`;
}

function groupLabels(groups) {
  return groups.map((g, i) => `G${g}${groups.length > 1 && i === 0 ? " · head" : groups.length > 1 && i === groups.length - 1 ? " · tail" : ""}`);
}

function exposureChart(model, span) {
  const win = model.window || {}, since = model.since_publish || {};
  const byGroup = (block, key) => new Map((block.groups || []).map((g) => [g.group, g[key]]));
  const groups = [...new Set([...(win.groups || []), ...(since.groups || [])].map((g) => g.group))].sort((a, b) => a - b);
  const offline = byGroup(win, "offline_share");
  const offlineSince = byGroup(since, "offline_share");
  const pick = (map, g) => (map.has(g) ? map.get(g) : null);
  return barChart({
    id: `exposure:${model.model_id}`,
    title: `${model.model_id}: share of served slots per popularity group`,
    categories: groupLabels(groups),
    series: [
      { name: `live · ${span}`, color: PALETTE[0], values: groups.map((g) => pick(byGroup(win, "share"), g)) },
      { name: "live · since publish", color: PALETTE[4], values: groups.map((g) => pick(byGroup(since, "share"), g)) },
      { name: "offline (test)", color: GREY, values: groups.map((g) => (offline.has(g) ? offline.get(g) : pick(offlineSince, g))) },
    ],
    yLabel: "share of slots",
    percent: true,
  });
}

const FIGURES = [  // [key, label, format, offline metric of the model record]
  ["requests", "requests", (x) => (isNum(x) ? String(x) : "–"), null],
  ["slots", "slots served", (x) => (isNum(x) ? String(x) : "–"), null],
  ["distinct_items", "distinct items", (x) => (isNum(x) ? String(x) : "–"), null],
  ["head_share", "head share", pct, "head_share@20"],
  ["arp", "ARP", (x) => num(x, 1), "arp@20"],
  ["coverage", "coverage", pct, "coverage@20"],
  ["gini", "Gini", (x) => num(x, 3), "gini@20"],
  ["latency_ms.p50", "latency p50", (x) => (isNum(x) ? `${x.toFixed(1)} ms` : "–"), null],
  ["latency_ms.p99", "latency p99", (x) => (isNum(x) ? `${x.toFixed(1)} ms` : "–"), null],
];

function figure(block, key) {
  const value = key.split(".").reduce((node, part) => (node ? node[part] : undefined), block);
  return isNum(value) ? value : null;
}

function figuresTable(model, span) {
  const record = state.models.find((m) => m.id === model.model_id) || {};
  // Offline: the report's @20 figures; the head share as the chart's offline bar of G0.
  const head = ((model.window || {}).groups || []).find((g) => g.group === 0);
  const offline = { ...(record.metrics || {}), ...(head && isNum(head.offline_share) ? { "head_share@20": head.offline_share } : {}) };
  const cell = (scope, key, value, format) => el("td", { class: "num", "data-scope": scope, "data-key": key,
    "data-value": value === null ? "" : String(value), text: format(value) });
  const rows = FIGURES.map(([key, label, format, metric]) => {
    const off = metric && isNum(offline[metric]) ? offline[metric] : null;
    return el("tr", { class: key === "head_share" ? "key" : null },
      el("th", { scope: "row", text: label }),
      cell("window", key, figure(model.window, key), format),
      cell("since_publish", key, figure(model.since_publish, key), format),
      metric ? cell("offline", key, off, format) : el("td", { class: "num muted", text: "" }));
  });
  return el("table", { class: "exposure-figures" },
    el("thead", {}, el("tr", {}, el("th"), el("th", { class: "num", text: span }),
      el("th", { class: "num", text: "since publish" }), el("th", { class: "num", text: "offline @20" }))),
    el("tbody", {}, ...rows));
}

function drawExposure(exposure) {
  const signature = JSON.stringify([exposure, state.models]);
  if (signature === state.exposure) return;  // unchanged: keep the drawing (and its tooltips)
  state.exposure = signature;
  const span = windowLabel(exposure.window_s);
  const panels = exposure.models.map((m) => {
    const role = m.role === "arm" ? `arm · weight ${pct(m.weight, 0)}` : m.role;
    return el("div", { class: "exposure-model", "data-model-id": m.model_id, "data-role": m.role },
      el("h3", {}, el("a", { href: reportHref(m.model_id), text: m.model_id }), " ",
        el("span", { class: `badge ${m.role === "active" ? "live" : "arm"}`, text: role }),
        el("span", { class: "muted since", text: m.since ? ` counted since ${when(m.since)}` : "" })),
      el("div", { class: "exposure-row" }, exposureChart(m, span), figuresTable(m, span)));
  });
  document.getElementById("exposure").replaceChildren(...panels);
  const note = document.getElementById("exposure-note");
  note.textContent = !panels.length ? "No served model has exposure figures yet."
    : `Live figures over the ${span} and since each model was published (or its experiment started); `
      + "offline: the model's test report at K = 20."
      + (exposure.counting === false ? " This API process does not count its answers (UNKD_EXPOSURE_COUNTING=0)." : "");
}

// -- outcomes: clicks per 1,000 exposures per served model and arm, the arms' test --------

const per1000 = (rate) => (rate && isNum(rate.per_1000)
  ? `${rate.per_1000.toFixed(2)} [${rate.low.toFixed(2)}, ${rate.high.toFixed(2)}]` : "–");

function outcomesTable(report) {
  const span = windowLabel(report.window_s);
  const head = el("tr", {}, el("th", { text: "model" }), el("th", { text: "role" }),
    el("th", { class: "num", text: `clicks / 1,000 · ${span}` }),
    el("th", { class: "num", text: "clicks / 1,000 · since publish" }),
    el("th", { class: "num", text: "tail share of clicks" }),
    el("th", { class: "num", text: "purchases / 1,000" }),
    el("th", { class: "num", text: "exposures" }));
  const rows = report.models.map((m) => {
    const since = m.since_publish || {};
    return el("tr", { "data-model-id": m.model_id, "data-role": m.role },
      el("th", { scope: "row", text: m.model_id }),
      el("td", { text: m.role === "arm" ? `arm · ${pct(m.weight, 0)}` : m.role }),
      el("td", { class: "num", "data-key": "window.click_rate", text: per1000((m.window || {}).click_rate) }),
      el("td", { class: "num", "data-key": "since_publish.click_rate",
        "data-value": since.click_rate && isNum(since.click_rate.per_1000) ? String(since.click_rate.per_1000) : "",
        text: per1000(since.click_rate) }),
      el("td", { class: "num", text: pct(since.tail_click_share) }),
      el("td", { class: "num", text: per1000(since.purchase_rate) }),
      el("td", { class: "num", text: isNum(since.exposures) ? String(since.exposures) : "–" }));
  });
  return el("table", { class: "exposure-figures outcomes" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function verdict(test) {
  if (!test) return "The arms' test appears with an experiment of two arms.";
  const diff = isNum(test.difference_per_1000) ? test.difference_per_1000.toFixed(2) : "–";
  const ci = test.interval_per_1000
    ? ` (always-valid 95% interval ${test.interval_per_1000[0].toFixed(2)} to ${test.interval_per_1000[1].toFixed(2)})` : "";
  const head = test.decided
    ? `Decided: ${test.better} has the higher click rate`
    : "Not decided yet: the arms' click rates are not shown to differ";
  return `${head}. ${test.arm_b} − ${test.arm_a}: ${diff} clicks per 1,000 exposures${ci}; `
    + `always-valid p = ${num(test.p_value, 4)} (alpha ${test.alpha}; ${test.method}, mixing variance ${test.mixing_variance}), `
    + "valid however often this page is looked at.";
}

function drawOutcomes(report) {
  const signature = JSON.stringify(report);
  if (signature === state.outcomes) return;
  state.outcomes = signature;
  const box = document.getElementById("outcomes");
  const lost = Object.entries((report.unattributed || {}).total || {}).map(([r, n]) => `${r} ${n}`).join(", ");
  box.replaceChildren(
    report.models.length ? outcomesTable(report) : el("p", { class: "note", text: "No served model yet." }),
    el("p", { id: "outcomes-verdict", "data-decided": String(Boolean(report.test && report.test.decided)),
      text: verdict(report.test) }),
    el("p", { class: "note", text: "Rates: events citing an answer's rec_id per 1,000 items shown, "
      + `with Wilson 95% intervals.${lost ? ` Unattributed events: ${lost}.` : ""}` }));
}

// One exposure refresh: nothing while nothing is served; the experiment's state with it.
export async function refreshExposure() {
  const note = document.getElementById("exposure-note");
  if (!state.servedModels.length) {
    state.exposure = "";
    document.getElementById("exposure").replaceChildren();
    state.outcomes = "";
    document.getElementById("outcomes").replaceChildren();
    note.textContent = "Live exposure appears once a model is served.";
    drawExperiment(null);
    return;
  }
  let exposure;
  try {
    exposure = await getJSON("v1/serving/exposure");
  } catch (err) {
    note.textContent = `Live exposure unavailable (${err.message}).`;
    return;
  }
  drawExposure(exposure);
  const outcomes = await getJSON("v1/serving/outcomes").catch(() => null);
  if (outcomes) drawOutcomes(outcomes);
  const experiment = await getJSON("v1/serving/experiment").catch(() => null);
  drawExperiment(experiment && experiment.running ? experiment : null);
}

// Called on every poll with the listings.
export function updateServing({ models }) {
  state.models = models;
  state.servedModels = models.filter((m) => m.active).map((m) => m.id);
  document.querySelectorAll("#arms .arm-row select").forEach((s, i) => fillArmChoices(s, i));
}

export function setupServing(onChange) {
  setupRollback(onChange);
  setupExperiment(onChange);
}
