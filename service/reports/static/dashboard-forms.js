// The forms that start work: upload a dataset (multipart POST /v1/datasets), train a
// teacher and distil a student (JSON POST /v1/jobs; a "tune trials" value makes either
// a tuning job, {"tune": {"trials": N}}). Each shows the API's answer beside itself.

import { call, el, formBody, setOptions, submitWith } from "./dashboard-lib.js";

const TEACHER_FIELDS = ["dataset_id", "model", "dim", "epochs", "tune.trials"];
const DISTILL_FIELDS = ["teacher_id", "method", "dim", "lambda_kd", "epochs", "tune.trials"];
const UPLOAD_FIELDS = ["name", "format", "split", "seed"];

function jobQueued(title, job) {
  return [`${title} `, el("code", { class: "job-id", text: job.id }), ` ${job.status}.`];
}

function setupUpload(form, onChange) {
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitWith(form, () => {
      const data = new FormData();
      const file = form.elements.namedItem("file").files[0];
      if (file) data.append("file", file);  // none: the API answers 422 naming `file`
      for (const name of UPLOAD_FIELDS) {
        const value = form.elements.namedItem(name).value.trim();
        if (value && value !== "auto") data.append(name, value);
      }
      return call("POST", "v1/datasets", { form: data });
    }, (ds) => {
      onChange();
      const stats = ds.statistics || {};
      return [`Dataset ${ds.name} registered as `, el("code", { class: "dataset-id", text: ds.id }),
        ` (${stats.users ?? "?"} users × ${stats.items ?? "?"} items, ${stats.interactions ?? "?"} interactions).`];
    });
  });
}

function setupJobForm(form, kind, fields, what, onChange) {
  const trials = form.elements.namedItem("tune.trials");
  const button = form.querySelector("button[type=submit]");
  const label = () => {
    const n = Number(trials.value);
    button.textContent = trials.value.trim() && n > 0 ? `Start tuning job (${n} trials)` : `Start ${what} job`;
  };
  trials.addEventListener("input", label);
  label();
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { kind, ...formBody(form, fields) };
    submitWith(form, () => call("POST", "v1/jobs", { json: body }), (job) => {
      onChange();
      return jobQueued(body.tune ? `Tuning job (${what}, ${body.tune.trials} trials)` : `${what[0].toUpperCase()}${what.slice(1)} job`, job);
    }, kind);
  });
}

// Called on every poll with the listings: the dataset and teacher choices follow them.
export function updateChoices({ datasets, models }) {
  setOptions(document.querySelector("#teacher-form select[name=dataset_id]"),
    datasets.map((d) => [d.id, `${d.name} · ${d.id}`]), "no dataset yet: upload one");
  setOptions(document.querySelector("#distill-form select[name=teacher_id]"),
    models.filter((m) => m.kind === "teacher").map((m) => [m.id, `${m.id} · ${m.model} · dim ${m.dim}`]),
    "no teacher yet: train one");
}

export function setupForms(onChange) {
  setupUpload(document.getElementById("upload-form"), onChange);
  setupJobForm(document.getElementById("teacher-form"), "teacher", TEACHER_FIELDS, "teacher", onChange);
  setupJobForm(document.getElementById("distill-form"), "distill", DISTILL_FIELDS, "distill", onChange);
}
