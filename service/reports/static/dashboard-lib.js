// Shared by the dashboard's modules: DOM building (text only, never HTML), number and
// date formats, API calls with the tab's API key, and how an API error is shown beside
// the form that caused it (the field named by `detail`, and its reason).

export const KEY_STORE = "unkd.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, props, children) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.setAttribute("class", value);
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

// el("td", {class: "num", text: 3}): an element; every value goes in as text.
export const el = (tag, props, ...children) => build(document.createElement(tag), props, children);
export const svg = (tag, props, ...children) => build(document.createElementNS(SVG_NS, tag), props, children);

export const isNum = (x) => typeof x === "number" && isFinite(x);
export const num = (x, digits = 4) => (isNum(x) ? x.toFixed(digits) : "–");
export const pct = (x, digits = 1) => (isNum(x) ? `${(100 * x).toFixed(digits)}%` : "–");
export const reportHref = (id) => `v1/models/${encodeURIComponent(id)}/report.html`;

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

export const apiKey = () => window.sessionStorage.getItem(KEY_STORE);

// One API call with the tab's key: {ok, status, data}. `json` is sent as a JSON body,
// `form` (FormData) as multipart. A network failure throws.
export async function call(method, path, { json, form } = {}) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(path, { method, headers, body });
  const data = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, data };
}

const LOC_ROOTS = new Set(["body", "query", "path"]);

// The problems in an error answer, each {field, reason}. FastAPI's 422 has a list of
// {loc: ["body", "tune", "trials"], msg}, with the tag of a tagged union after "body"
// (["body", "teacher", "dim"] for a job): `tag` drops it. The service's own errors are one
// string that starts with the field ("teacher_id='x': no such model", "file: ...").
export function problems(status, data, tag) {
  const detail = data && data.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      let loc = d.loc || [];
      if (LOC_ROOTS.has(loc[0])) loc = loc.slice(1);
      if (tag !== undefined && loc[0] === tag) loc = loc.slice(1);
      return { field: loc.length ? loc.join(".") : null, reason: String(d.msg || "invalid"), located: true };
    });
  }
  if (typeof detail === "string") {  // "arms[1].model_id='x': ..." names the input arms.1.model_id
    const m = /^([A-Za-z_][\w.[\]]*)(?:=|: )/.exec(detail);
    return [{ field: m ? m[1].replace(/\[(\d+)\]/g, ".$1") : null, reason: detail, located: false }];
  }
  return [{ field: null, reason: `HTTP ${status}`, located: false }];
}

const HINTS = {
  401: "this needs an API key: enter it above",
  403: "this key may not do that",
};

// Show an outcome in a form's message box: ok (text), or an API error (status + problems,
// one line each), marking the inputs the problems name (form.elements[field]).
export function showError(box, form, status, data, { extra, tag } = {}) {
  const found = problems(status, data, tag);
  const lines = found.map((p) => el("li", { "data-field": p.field || "" },
    p.located && p.field ? el("strong", { text: `${p.field}: ` }) : null, p.reason));
  const hint = HINTS[status];
  box.className = "msg error";
  box.dataset.status = String(status);
  box.replaceChildren(el("span", { class: "status", text: `HTTP ${status}` }),
    ...(hint ? [` (${hint})`] : []), el("ul", {}, ...lines), ...(extra ? [extra] : []));
  for (const p of found) markField(form, p.field, status);
}

export function showOk(box, ...content) {
  box.className = "msg ok";
  box.dataset.status = "ok";
  box.replaceChildren(...content);
}

export function showFailure(box, err) {
  box.className = "msg error";
  box.dataset.status = "network";
  box.replaceChildren(`Could not reach the API: ${err.message}`);
}

function markField(form, field, status) {
  let target = null;
  if (status === 401 || status === 403 || field === "Authorization") target = document.getElementById("api-key");
  else if (form && field) {
    // "unkd.groups" may be an input itself, or the nearest named parent ("tune" for "tune.trials.x")
    const parts = field.split(".");
    while (parts.length && !target) {
      const named = form.elements.namedItem(parts.join("."));
      target = named instanceof Element ? named : null;
      parts.pop();
    }
  }
  if (target) {
    target.classList.add("invalid");
    target.setAttribute("aria-invalid", "true");
  }
}

export function clearMarks(form) {
  for (const node of [...(form ? form.querySelectorAll(".invalid") : []), document.getElementById("api-key")]) {
    node.classList.remove("invalid");
    node.removeAttribute("aria-invalid");
  }
}

// Submit handling shared by every form: disable the button while the request runs, clear
// old marks, then show the outcome. `send()` returns {ok, status, data}; `done(data)` the
// success content; `tag`: the body's union tag, left out of the field names.
export async function submitWith(form, send, done, tag) {
  const box = form.querySelector(".msg");
  const buttons = [...form.querySelectorAll("button")];
  buttons.forEach((b) => { b.disabled = true; });
  clearMarks(form);
  box.className = "msg";
  delete box.dataset.status;  // set again by the outcome: tests wait for it
  box.textContent = "sending…";
  try {
    const result = await send();
    if (result.ok) showOk(box, ...[].concat(done(result.data)));
    else showError(box, form, result.status, result.data, { tag });
    return result;
  } catch (err) {
    showFailure(box, err);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// The JSON body of a form: each named input with a value, under its dotted path
// ("tune.trials" -> {tune: {trials: 3}}); empty inputs are left out, so the API's
// defaults apply. Number inputs give numbers.
export function formBody(form, names) {
  const body = {};
  for (const name of names) {
    const input = form.elements.namedItem(name);
    if (!input || input.value.trim() === "") continue;
    const value = input.type === "number" ? Number(input.value) : input.value.trim();
    const path = name.split(".");
    let node = body;
    for (const part of path.slice(0, -1)) node = node[part] = node[part] || {};
    node[path[path.length - 1]] = value;
  }
  return body;
}

// Replace a <select>'s options, keeping the chosen value when it is still offered.
export function setOptions(select, options, placeholder) {
  const chosen = select.value;
  const nodes = options.map(([value, label]) => el("option", { value, text: label }));
  if (!nodes.length) nodes.push(el("option", { value: "", text: placeholder }));
  select.replaceChildren(...nodes);
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}
