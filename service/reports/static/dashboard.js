// unkd-serve dashboard: the page that watches the service and drives it. Plain DOM, ES
// modules, no build step and no library. Every value from the API goes on the page as text
// (textContent, never innerHTML): model ids and dataset names are user input.
//
// How the page is organized (dashboard.html has one <section> per part):
//   dashboard.js          this file: the API key field, the poll loop (jobs, models,
//                         datasets, the served model, the publish history every
//                         ?poll_ms=, 2 s by default; live exposure every ?exposure_ms=, 5 s)
//                         and the jobs, models and datasets tables.
//   dashboard-forms.js    "Start work": upload a dataset, train a teacher, distil a student,
//                         either job tuned with "tune trials" (POST /v1/datasets, /v1/jobs).
//   dashboard-serving.js  "Serving": publish (+ force past the gate), the publish history
//                         and rollback, the A/B experiment, the live exposure charts.
//   dashboard-pipelines.js "Pipelines": save a recipe, run one now, the chosen pipeline's
//                         runs with their gate answers (polled with the rest).
//   dashboard-chart.js    the SVG bar chart (the report pages' markup: rect.bar + data-*).
//   dashboard-lib.js      DOM helpers, API calls with the key, and API errors shown beside
//                         their form: the field `detail` names (marked .invalid), the reason.
// Writes send the key from the field above as "Authorization: Bearer <key>" (kept in
// sessionStorage: this tab only); reads need none.

import { updateChoices, setupForms } from "./dashboard-forms.js";
import { KEY_STORE, el, getJSON, num, reportHref, when } from "./dashboard-lib.js";
import { refreshPipelines, setupPipelines } from "./dashboard-pipelines.js";
import { drawHistory, publish, refreshExposure, setupServing, updateServing } from "./dashboard-serving.js";

const params = new URLSearchParams(window.location.search);
const bounded = (value, fallback) => Math.min(60000, Math.max(200, Number(value) || fallback));
const POLL_MS = bounded(params.get("poll_ms"), 2000);
const EXPOSURE_MS = bounded(params.get("exposure_ms"), 5000);
const state = { selected: new Set(), signatures: {}, polls: 0 };

const compareHref = (ids) => `v1/compare.html?models=${ids.map(encodeURIComponent).join(",")}`;

// Redraw a part only when its data changed, so clicks, selections and half-filled forms
// survive polls.
function redraw(name, data, draw) {
  const signature = JSON.stringify(data);
  if (state.signatures[name] === signature) return;
  state.signatures[name] = signature;
  draw(data);
}

function fill(tableId, emptyId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
  document.getElementById(emptyId).hidden = rows.length > 0;
}

function progressCell(job) {
  const p = job.progress || {};
  // A tuning job counts finished trials; the epoch is that of the latest running trial.
  let fraction = p.trials ? p.trial / p.trials : p.epochs ? p.epoch / p.epochs : 0;
  if (job.status === "succeeded") fraction = 1;
  const bar = el("span");
  bar.style.width = `${Math.round(Math.min(1, Math.max(0, fraction)) * 100)}%`;
  let text = p.epochs ? `epoch ${p.epoch}/${p.epochs} · ${p.stage}` : p.stage || job.status;
  if (p.trials) text = `trial ${p.trial}/${p.trials}` + (p.epochs && job.status === "running" ? ` · epoch ${p.epoch}/${p.epochs}` : "") + ` · ${p.stage}`;
  return el("td", { "data-progress": fraction.toFixed(4) },
    el("div", { class: "progress", title: p.message || "" }, bar),
    el("div", { class: "progress-text", text }));
}

function drawJobs(jobs) {
  fill("jobs", "jobs-empty", jobs.map((job) => {
    const m = job.metrics || {};
    const metrics = [];
    if (typeof m.loss === "number") metrics.push(`loss ${num(m.loss)}`);
    if (typeof m["valid_ndcg@20"] === "number") metrics.push(`NDCG@20 ${num(m["valid_ndcg@20"])}`);
    if (typeof m["best_valid_ndcg@20"] === "number") metrics.push(`best NDCG@20 ${num(m["best_valid_ndcg@20"])}`);
    let result = "–";
    if (job.model_id) result = el("a", { href: reportHref(job.model_id), text: job.model_id });
    else if (job.error) result = el("span", { class: "err-text", text: job.error });
    const params = job.params || {};
    let what = "";
    if (job.kind === "publish" && params.model_id) what = ` ${params.model_id}`;
    else if ((params.config || {}).method) what = ` (${params.config.method})`;
    if (params.tune) what += ` · tuned, ${params.tune.trials} trials`;
    return el("tr", { "data-job-id": job.id, "data-status": job.status },
      el("td", { class: "mono", title: job.id, text: job.id.slice(0, 12) }),
      el("td", { text: job.kind + what }),
      el("td", {}, el("span", { class: `badge s-${job.status}`, text: job.status })),
      progressCell(job),
      el("td", { class: "mono", text: metrics.join(" · ") || "–" }),
      el("td", {}, result),
      el("td", { text: when((job.timings || {}).queued_at) }));
  }));
}

function updateCompareButton() {
  const button = document.getElementById("compare");
  button.disabled = state.selected.size === 0;
  button.textContent = state.selected.size ? `Compare selected (${state.selected.size})` : "Compare selected";
}

function drawModels({ models, datasets }) {
  const names = new Map(datasets.map((d) => [d.id, d.name]));
  const ids = new Set(models.map((m) => m.id));
  for (const id of [...state.selected]) if (!ids.has(id)) state.selected.delete(id);
  fill("models", "models-empty", models.map((m) => {
    const box = el("input", { type: "checkbox", "aria-label": `select ${m.id}`, onchange: (ev) => {
      if (ev.target.checked) state.selected.add(m.id); else state.selected.delete(m.id);
      updateCompareButton();
    } });
    box.checked = state.selected.has(m.id);
    const datasetId = (m.lineage || {}).dataset_id;
    // An EASE teacher has no embeddings to index (the API answers 409): distil it instead.
    const action = m.active
      ? el("span", { class: "badge live", text: "serving" })
      : m.model === "ease"
        ? el("span", { class: "muted", title: "EASE teachers have no embeddings to serve: distil a student", text: "distil to serve" })
        : el("button", { class: "publish", "data-model-id": m.id, text: "Publish", onclick: (ev) => publish(m.id, ev.target) });
    const metrics = m.metrics || {};
    return el("tr", { "data-model-id": m.id },
      el("td", {}, box),
      el("td", {}, el("a", { href: reportHref(m.id), text: m.id })),
      el("td", { text: m.kind }),
      el("td", { text: m.method || "–" }),
      el("td", { text: `${m.model} · ${m.dim}` }),
      el("td", { title: datasetId || "", text: names.get(datasetId) || datasetId || "–" }),
      el("td", { class: "num", text: num(metrics["recall@20"]) }),
      el("td", { class: "num", text: num(metrics["ndcg@20"]) }),
      el("td", { class: "num", text: num(metrics["head_share@20"]) }),
      el("td", { text: when(m.created_at) }),
      el("td", { class: "actions" }, action));
  }));
  updateCompareButton();
}

function drawDatasets({ models, datasets }) {
  fill("datasets", "datasets-empty", datasets.map((d) => {
    const stats = d.statistics || {};
    const own = models.filter((m) => (m.lineage || {}).dataset_id === d.id).map((m) => m.id);
    const link = own.length > 1
      ? el("a", { href: compareHref(own.slice(0, 12)), text: `compare ${Math.min(own.length, 12)}` })
      : null;
    return el("tr", { "data-dataset-id": d.id },
      el("td", { text: d.name }),
      el("td", { class: "mono", text: d.id }),
      el("td", { text: d.source }),
      el("td", { class: "num", text: stats.users ?? "–" }),
      el("td", { class: "num", text: stats.items ?? "–" }),
      el("td", { class: "num", text: stats.interactions ?? "–" }),
      el("td", {}, `${own.length} `, link),
      el("td", { text: when(d.created_at) }));
  }));
}

function drawServing({ serving, models }) {
  const line = document.getElementById("serving");
  const active = models.find((m) => m.active);
  if (serving.ready) {
    line.replaceChildren("Serving: ", el("a", { href: reportHref(serving.model_id), text: serving.model_id }),
      ` · ${serving.index_type} index · ${serving.n_items} items · ${serving.n_users} users · loaded ${when(serving.loaded_at)}`);
  } else if (active) {
    line.replaceChildren("Serving: ", el("a", { href: reportHref(active.id), text: active.id }),
      " is published; this API process is loading it…");
  } else {
    line.replaceChildren("Serving: nothing published yet.");
  }
}

async function refresh() {
  const [jobs, models, datasets, serving, history] = await Promise.all([
    getJSON("v1/jobs?limit=50"), getJSON("v1/models?limit=200"),
    getJSON("v1/datasets?limit=100"), getJSON("v1/serving"), getJSON("v1/serving/history?limit=20"),
  ]);
  const listings = { models: models.items, datasets: datasets.items };
  redraw("jobs", jobs.items, drawJobs);
  redraw("models", listings, drawModels);
  redraw("datasets", listings, drawDatasets);
  redraw("serving", { serving, models: models.items.filter((m) => m.active) }, drawServing);
  redraw("history", history, drawHistory);
  redraw("choices", listings, (data) => { updateChoices(data); updateServing(data); });
  state.polls += 1;
  document.body.dataset.polls = String(state.polls);
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000}s`;
  await refreshPipelines();  // after the count: the rest of the page is drawn by then
}

let refreshing = null;
function refreshNow() {  // one refresh at a time; a caller waits for the running one
  refreshing = refreshing || refresh().finally(() => { refreshing = null; });
  return refreshing;
}

function loop() {
  refreshNow()
    .catch((err) => { document.getElementById("updated").textContent = `API unreachable (${err.message}); retrying`; })
    .finally(() => window.setTimeout(loop, POLL_MS));
}

function exposureLoop() {
  refreshExposure().finally(() => window.setTimeout(exposureLoop, EXPOSURE_MS));
}

// After a change made from the page: the tables now, the exposure right after.
function changed() {
  refreshNow().then(refreshExposure).catch(() => {});
}

function setupKey() {
  const input = document.getElementById("api-key");
  const stateText = document.getElementById("key-state");
  const show = () => {
    stateText.textContent = window.sessionStorage.getItem(KEY_STORE) ? "key set for this tab" : "no key: read-only";
  };
  input.value = window.sessionStorage.getItem(KEY_STORE) || "";
  input.addEventListener("input", () => {
    const value = input.value.trim();
    if (value) window.sessionStorage.setItem(KEY_STORE, value);
    else window.sessionStorage.removeItem(KEY_STORE);
    input.classList.remove("invalid");
    show();
  });
  show();
}

document.getElementById("compare").addEventListener("click", () => {
  if (state.selected.size) window.location.href = compareHref([...state.selected]);
});
setupKey();
setupForms(changed);
setupServing(changed);
setupPipelines(changed);
loop();
refreshNow().finally(() => window.setTimeout(exposureLoop, 0));
