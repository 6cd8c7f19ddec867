// "Pipelines": save a recipe (PUT /v1/pipelines/{name}, an admin key), run one now
// (POST .../run, a write key), and the runs of the chosen pipeline with their gate answers
// (GET .../runs, newest first). Polled with the rest of the page.

import { call, el, getJSON, num, reportHref, showError, showFailure, showOk, submitWith, when } from "./dashboard-lib.js";

const state = { chosen: null, onChange: () => {}, signatures: {} };

// Redraw only when the data changed, so a click in progress survives the poll.
function redraw(name, data, draw) {
  const signature = JSON.stringify([state.chosen, data]);
  if (state.signatures[name] === signature) return;
  state.signatures[name] = signature;
  draw(data);
}
const GATE_MARK = { true: "pass", false: "FAIL", null: "not checked" };
const scheduleText = (p) => p.schedule || (p.every_s ? `every ${p.every_s}s` : `${p.min_new_events} new events`);

function drawPipelines(items) {
  const rows = items.map((p) => el("tr", { "data-name": p.name, class: p.name === state.chosen ? "chosen" : null },
    el("td", {}, el("a", { href: "#pipeline-runs", class: "pipeline-name", text: p.name, onclick: () => choose(p.name) })),
    el("td", { text: p.dataset_id }),
    el("td", { text: `${p.teacher.model || "default"}${p.distill ? ` → ${p.distill.method}` : ""}` }),
    el("td", { text: p.on_pass + (p.share ? ` (${p.share})` : "") }),
    el("td", { text: scheduleText(p) }),
    el("td", {}, el("button", { type: "button", class: "run-now", text: "Run now", onclick: () => runNow(p.name) }))));
  document.querySelector("#pipelines tbody").replaceChildren(...rows);
  document.getElementById("pipelines-empty").hidden = rows.length > 0;
}

function gateCell(run) {
  if (!run.gate.length) return el("td", { text: "–" });
  return el("td", {}, el("ul", { class: "gate" }, ...run.gate.map((c) =>
    el("li", { "data-rule": c.rule, "data-passed": String(c.passed), title: c.detail, text: `${c.rule}: ${GATE_MARK[c.passed]}` }))));
}

function drawRuns(runs) {
  document.getElementById("runs-title").textContent = state.chosen ? `Runs of ${state.chosen}` : "Runs";
  const rows = (runs || []).map((r) => {
    const model = r.student_id || r.teacher_id;
    return el("tr", { "data-run": r.run_id, "data-status": r.status },
      el("td", {}, el("code", { text: r.run_id.slice(0, 12) })),
      el("td", { text: r.trigger }),
      el("td", { class: `status ${r.status}`, text: r.status }),
      el("td", { class: "reason", text: r.reason || "" }),
      el("td", { text: r.dataset_version || "–" }),
      el("td", { class: "num", text: r.new_events ?? "–" }),
      el("td", {}, model ? el("a", { href: reportHref(model), text: model }) : "–"),
      el("td", { class: "num", text: num((r.metrics || {})["student_ndcg@20"] ?? (r.metrics || {})["teacher_ndcg@20"]) }),
      gateCell(r),
      el("td", { text: r.published ? `${r.published.action} ${r.published.model_id}` : "–" }),
      el("td", { text: when(r.created_at) }));
  });
  document.querySelector("#pipeline-runs tbody").replaceChildren(...rows);
  document.getElementById("runs-empty").hidden = rows.length > 0;
}

function choose(name) {
  state.chosen = name;
  refreshPipelines().catch(() => {});
}

async function runNow(name) {
  const box = document.getElementById("pipeline-run-msg");
  delete box.dataset.status;
  state.chosen = name;
  try {
    const result = await call("POST", `v1/pipelines/${encodeURIComponent(name)}/run`);
    if (result.ok) showOk(box, `Run `, el("code", { class: "run-id", text: result.data.run_id }), ` of ${name} ${result.data.status}.`);
    else showError(box, null, result.status, result.data);
  } catch (err) {
    showFailure(box, err);
  }
  state.onChange();  // the run's jobs appear in the jobs table
}

export async function refreshPipelines() {
  const pipelines = await getJSON("v1/pipelines?limit=100");
  const names = pipelines.items.map((p) => p.name);
  if (!names.includes(state.chosen)) state.chosen = names[0] || null;
  redraw("pipelines", pipelines.items, drawPipelines);
  const runs = state.chosen ? await getJSON(`v1/pipelines/${encodeURIComponent(state.chosen)}/runs?limit=20`) : { items: [] };
  redraw("runs", runs.items, drawRuns);
}

export function setupPipelines(onChange) {
  state.onChange = onChange;
  const form = document.getElementById("pipeline-form");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = form.elements.namedItem("name").value.trim();
    submitWith(form, async () => {
      let recipe;
      try {
        recipe = JSON.parse(form.elements.namedItem("recipe").value);
      } catch (err) {
        return { ok: false, status: 400, data: { detail: `recipe: not JSON (${err.message})` } };
      }
      return call("PUT", `v1/pipelines/${encodeURIComponent(name)}`, { json: recipe });
    }, (p) => {
      state.chosen = p.name;
      state.onChange();
      return [`Pipeline `, el("code", { class: "pipeline-id", text: p.name }), ` saved: runs on ${scheduleText(p)}.`];
    });
  });
}
