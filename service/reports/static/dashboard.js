// unkd-serve dashboard: polls the JSON API and redraws jobs, models, datasets and the
// served model. Plain DOM, no build step. Every value from the API is put on the page
// with textContent (never innerHTML): model ids and dataset names are user input.
"use strict";
(() => {
  const params = new URLSearchParams(window.location.search);
  const POLL_MS = Math.min(60000, Math.max(200, Number(params.get("poll_ms")) || 2000));
  const KEY_STORE = "unkd.apiKey";
  const state = { selected: new Set(), signatures: {}, polls: 0 };

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = String(value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const num = (x, digits = 4) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");
  const reportHref = (id) => `v1/models/${encodeURIComponent(id)}/report.html`;
  const compareHref = (ids) => `v1/compare.html?models=${ids.map(encodeURIComponent).join(",")}`;

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // Redraw a table body only when its data changed, so clicks and selections survive polls.
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
    const [jobs, models, datasets, serving] = await Promise.all([
      getJSON("v1/jobs?limit=50"), getJSON("v1/models?limit=200"),
      getJSON("v1/datasets?limit=100"), getJSON("v1/serving"),
    ]);
    redraw("jobs", jobs.items, drawJobs);
    redraw("models", { models: models.items, datasets: datasets.items }, drawModels);
    redraw("datasets", { models: models.items, datasets: datasets.items }, drawDatasets);
    redraw("serving", { serving, models: models.items.filter((m) => m.active) }, drawServing);
    state.polls += 1;
    document.body.dataset.polls = String(state.polls);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000}s`;
  }

  function loop() {
    refresh()
      .catch((err) => { document.getElementById("updated").textContent = `API unreachable (${err.message}); retrying`; })
      .finally(() => window.setTimeout(loop, POLL_MS));
  }

  function message(text, ok) {
    const node = document.getElementById("publish-msg");
    node.className = `msg ${ok ? "ok" : "error"}`;
    node.textContent = text;
  }

  async function publish(modelId, button) {
    const key = window.sessionStorage.getItem(KEY_STORE);
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    button.disabled = true;
    try {
      const response = await fetch(`v1/models/${encodeURIComponent(modelId)}/publish`, { method: "POST", headers });
      const body = await response.json().catch(() => ({}));
      if (response.status === 202) message(`Publishing ${modelId}: job ${body.id} queued.`, true);
      else if (response.status === 401) message("Publishing needs an API key: enter it above.", false);
      else message(`Publish ${modelId}: ${body.detail || `HTTP ${response.status}`}`, false);
    } catch (err) {
      message(`Publish ${modelId}: ${err.message}`, false);
    } finally {
      button.disabled = false;
    }
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
      show();
    });
    show();
  }

  document.getElementById("compare").addEventListener("click", () => {
    if (state.selected.size) window.location.href = compareHref([...state.selected]);
  });
  setupKey();
  loop();
})();
