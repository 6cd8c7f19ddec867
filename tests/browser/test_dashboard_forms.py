"""The dashboard drives the work, in headless Chromium against a live API on a real Redis.

Each form sends what the API expects, read back through the API or the registry (no
worker runs: a job is checked as submitted), and shows the API's errors beside itself,
naming the field and the reason: upload, teacher, distill and tuning jobs, publish past
the gate with force, rollback and the history, the A/B experiment started and stopped,
and the live exposure charts, whose bars are the numbers GET /v1/serving/exposure returns.
Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.core import keys
from service.core.bundle_format import build_bundle
from service.core.config import Settings
from service.core.records import headline_metrics
from service.core.registry import PublishEntry, Registry
from tests.browser.conftest import ARTIFACTS
from tests.reliability.conftest import seed_dataset, seed_model
from tests.report_samples import register_family, sample_report
from tests.support.config import make_test_settings
from tests.support.live_api import LiveAPI
from training.config import DistillConfig, TeacherConfig
from training.dataset import Dataset
from training.manifest import REPORT, QualityReport

pytestmark = pytest.mark.browser

ADMIN, WRITER, READER = "ops-admin-key-0123", "ci-write-key-0123", "dash-read-key-0123"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
EXPERIMENT, EXPOSURE = "/v1/serving/experiment", "/v1/serving/exposure"


@pytest.fixture()
def live_settings(redis_url: str, tmp_path: Path) -> Settings:
    """conftest's settings with three keys, one per role: ops (admin), ci (write), dash (read)."""
    keys = [f"ops:admin:{ADMIN}", f"ci:write:{WRITER}", f"dash:read:{READER}"]
    return make_test_settings(
        "browser",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        api_keys=keys,
        upload_max_bytes=64 * 1024,
        reload_poll_s=0.2,
    )


@pytest.fixture()
def registry(live_settings: Settings) -> Registry:
    return Registry.from_url(live_settings.redis_url or "")


# -- driving the page ------------------------------------------------------------------------


def open_dashboard(browser: Any, server: LiveAPI, key: str | None = ADMIN) -> None:
    browser.navigate(f"{server.url}/?poll_ms=250&exposure_ms=300")
    browser.wait_for("Number(document.body.dataset.polls) > 0")
    if key is not None:
        set_key(browser, key)
    browser.events.clear()


def set_key(browser: Any, key: str) -> None:
    browser.evaluate(f"""(() => {{ const input = document.getElementById('api-key');
        input.value = {json.dumps(key)}; input.dispatchEvent(new Event('input')); }})()""")


def fill(browser: Any, form: str, values: dict[str, str]) -> None:
    """Type `values` into the form's inputs by name, as a user would (input + change events)."""
    browser.evaluate(f"""(() => {{ const form = document.getElementById({json.dumps(form)});
        for (const [name, value] of Object.entries({json.dumps(values)})) {{
            const input = form.elements.namedItem(name);
            if (!input) throw new Error('no input ' + name);
            input.value = value;
            for (const type of ['input', 'change']) input.dispatchEvent(new Event(type, {{bubbles: true}}));
        }} }})()""")


def outcome(browser: Any, box: str) -> dict[str, Any]:
    """Wait for the message box `box` (a CSS selector) to show an outcome; its status
    ("ok" or the HTTP status), text, and the inputs marked invalid."""
    status = browser.wait_for(f"document.querySelector({json.dumps(box)}).dataset.status")
    text = browser.evaluate(f"document.querySelector({json.dumps(box)}).textContent")
    assert "null" not in text and "undefined" not in text, text
    return {
        "status": status,
        "text": text,
        "fields": browser.evaluate(
            f"[...document.querySelector({json.dumps(box)}).querySelectorAll('li')]"
            ".map(li => li.dataset.field)"
        ),
        "invalid": browser.evaluate(
            "[...document.querySelectorAll('.invalid')].map(n => n.name || n.id)"
        ),
    }


def click(browser: Any, selector: str, box: str) -> dict[str, Any]:
    """Click `selector` and return the outcome shown in `box`."""
    browser.evaluate(f"""(() => {{ delete document.querySelector({json.dumps(box)}).dataset.status;
        document.querySelector({json.dumps(selector)}).click(); }})()""")
    return outcome(browser, box)


def submit(browser: Any, form: str) -> dict[str, Any]:
    return click(browser, f"#{form} button[type=submit]", f"#{form} .msg")


def set_file(browser: Any, selector: str, path: Path) -> None:
    """Choose `path` in a file input, as the browser's file dialog does (CDP)."""
    root = browser.send("DOM.getDocument")["root"]["nodeId"]
    node = browser.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
    browser.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)


def other_errors(browser: Any) -> list[str]:
    """The browser's errors other than failed loads (it logs every 4xx answer to a fetch)."""
    return [e for e in browser.errors() if "Failed to load resource" not in e]


def provoked(browser: Any) -> set[int]:
    """The HTTP statuses of the failed loads the browser logged: the errors a test provoked."""
    errors = [e for e in browser.errors() if "Failed to load resource" in e]
    return {int(e.split("status of ")[1][:3]) for e in errors}


def job_id_in(browser: Any, form: str) -> str:
    return str(browser.evaluate(f"document.querySelector('#{form} .msg code.job-id').textContent"))


def wait_option(browser: Any, select: str, value: str) -> None:
    browser.wait_for(
        f"[...document.querySelectorAll({json.dumps(select + ' option')})]"
        f".some(o => o.value === {json.dumps(value)})"
    )


def api(server: LiveAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, server.url + path, timeout=10, **kwargs)


def served_world(settings: Settings, registry: Registry) -> tuple[Dataset, list[str]]:
    """Two models of random embeddings published one after the other, as the worker's
    publish step records them (bundle, pointer, history): student-b is served, student-a
    was before it."""
    dataset = seed_dataset(settings, registry, n_users=60, n_items=40)
    ids = ["student-a", "student-b"]
    for seed_no, model_id in enumerate(ids, 1):
        seed_model(settings, registry, dataset, model_id, seed=seed_no)
        # an offline quality report (made-up figures), for the exposure's offline column;
        # its head share is group 0's share of the slots, as in a real report
        figures = sample_report(seed_no)
        figures["metrics"]["head_share@20"] = figures["groups"][0]["exposure_share@20"]
        report = QualityReport.model_validate(figures)
        record = registry.get_model(model_id)
        (Path(record.path) / REPORT).write_text(report.model_dump_json())
        registry.add_model(record.model_copy(update={"metrics": headline_metrics(report)}))
        out = settings.bundles_dir.resolve() / f"{model_id}-test"
        build_bundle(settings.models_dir.resolve() / model_id, dataset, out, model_id=model_id)
        registry.record_publish(PublishEntry(model_id=model_id, bundle_dir=str(out)))
    return dataset, ids


def wait_served(browser: Any, server: LiveAPI, model_id: str) -> None:
    """Until the API serves `model_id` and the page's header says so."""
    browser.wait_for(
        f"document.getElementById('serving').textContent.startsWith('Serving: {model_id} ·')",
        timeout_s=20,
    )
    assert api(server, "GET", "/v1/serving").json()["model_id"] == model_id


def test_the_page_modules_are_served_and_put_text_only(live_server: LiveAPI) -> None:
    from service.api.routes.reports import DASHBOARD_JS

    page = api(live_server, "GET", "/").text
    assert '<script type="module" src="static/dashboard.js">' in page
    for name in DASHBOARD_JS:
        r = api(live_server, "GET", f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        for sink in (".innerHTML", ".outerHTML", ".insertAdjacentHTML", "document.write(", "eval("):
            assert sink not in r.text, f"{name} uses {sink}: values from the API go in as text"
        assert "https://" not in r.text and "http://" not in r.text.replace(
            "http://www.w3.org/2000/svg", ""
        )


# -- the forms that start work ----------------------------------------------------------------


def test_upload_form_registers_the_dataset_and_names_what_is_wrong(
    browser: Any, live_server: LiveAPI, tmp_path: Path
) -> None:
    good = tmp_path / "clicks.csv"
    good.write_text(
        "user,item,rating\n"
        + "".join(f"u{u},i{(u * 7 + k * 3) % 25},1\n" for u in range(30) for k in range(6))
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating\nu1,i1,1\nu2,i2,not-a-number\n")
    open_dashboard(browser, live_server, key=None)

    set_file(browser, "#upload-form input[name=file]", good)
    result = submit(browser, "upload-form")  # no key
    assert result["status"] == "401" and "needs an API key" in result["text"]
    assert "Authorization: missing bearer token" in result["text"] and result["invalid"] == [
        "api-key"
    ]
    set_key(browser, READER)
    result = submit(browser, "upload-form")
    assert (
        result["status"] == "403"
        and "needs a key with role write; key 'dash' has role read" in result["text"]
    )

    set_key(browser, WRITER)
    set_file(browser, "#upload-form input[name=file]", bad)
    result = submit(browser, "upload-form")
    assert (
        result["status"] == "422" and result["fields"] == ["file"] and result["invalid"] == ["file"]
    )
    assert "bad.csv" in result["text"] and "rating" in result["text"]
    fill(browser, "upload-form", {"seed": "-1"})
    result = submit(browser, "upload-form")
    assert (
        result["status"] == "422" and result["fields"] == ["seed"] and result["invalid"] == ["seed"]
    )
    assert "greater than or equal to 0" in result["text"]
    assert api(live_server, "GET", "/v1/datasets").json()["total"] == 0

    set_file(browser, "#upload-form input[name=file]", good)
    fill(browser, "upload-form", {"name": "clicks", "split": "random", "seed": "3"})
    result = submit(browser, "upload-form")
    assert result["status"] == "ok" and result["invalid"] == [], result
    listing = api(live_server, "GET", "/v1/datasets").json()
    assert listing["total"] == 1
    ds = listing["items"][0]
    assert ds["id"] in result["text"] and "30 users × 25 items, 180 interactions" in result["text"]
    assert (ds["name"], ds["source"], ds["options"]["split"], ds["options"]["seed"]) == (
        "clicks",
        "upload",
        "random",
        3,
    )
    assert ds["options"]["filename"] == "clicks.csv" and ds["options"]["format"] == "auto"
    browser.wait_for(f"!!document.querySelector('#datasets tr[data-dataset-id=\"{ds['id']}\"]')")
    wait_option(
        browser, "#teacher-form select[name=dataset_id]", ds["id"]
    )  # the teacher form offers it
    assert provoked(browser) == {401, 403, 422} and other_errors(browser) == []
    browser.screenshot(ARTIFACTS / "dashboard-upload.png")


def test_job_forms_submit_teacher_distill_and_tuning_jobs(
    browser: Any, live_server: LiveAPI, registry: Registry, tmp_path: Path
) -> None:
    register_family(registry, tmp_path / "models", "ds-1", name="synthetic long-tail")
    open_dashboard(browser, live_server, key=WRITER)
    wait_option(browser, "#teacher-form select[name=dataset_id]", "ds-1")
    wait_option(browser, "#distill-form select[name=teacher_id]", "teacher-1")
    students = browser.evaluate(
        "[...document.querySelectorAll('#distill-form select[name=teacher_id] option')].map(o => o.value)"
    )
    assert students == ["teacher-1"]  # only teachers can be distilled

    # A teacher: the body is exactly the fields filled in; the API's defaults fill the rest.
    fill(browser, "teacher-form", {"dataset_id": "ds-1", "model": "als", "dim": "0"})
    result = submit(browser, "teacher-form")
    assert (
        result["status"] == "422" and result["fields"] == ["dim"] and result["invalid"] == ["dim"]
    )
    assert "dim: Input should be greater than or equal to 1" in result["text"]
    assert registry.list_jobs()[1] == 0
    fill(browser, "teacher-form", {"dim": "16"})
    result = submit(browser, "teacher-form")
    assert result["status"] == "ok" and result["invalid"] == [] and "Teacher job" in result["text"]
    job = registry.get_job(job_id_in(browser, "teacher-form"))
    assert job.kind == "teacher" and job.status == "queued"
    assert job.params == {
        "dataset_id": "ds-1",
        "config": TeacherConfig(model="als", dim=16).model_dump(mode="json"),
    }
    browser.wait_for(f"!!document.querySelector('#jobs tr[data-job-id=\"{job.id}\"]')")

    # The same form with tune trials: a tuning job.
    fill(browser, "teacher-form", {"tune.trials": "3"})
    assert (
        browser.evaluate("document.querySelector('#teacher-form button[type=submit]').textContent")
        == "Start tuning job (3 trials)"
    )
    result = submit(browser, "teacher-form")
    job = registry.get_job(job_id_in(browser, "teacher-form"))
    assert result["status"] == "ok" and "Tuning job (teacher, 3 trials)" in result["text"]
    assert job.params["tune"] == {"trials": 3, "prune": True, "seed": 0}
    assert job.params["config"] == TeacherConfig(model="als", dim=16).model_dump(mode="json")

    # A student: teacher, method, dim, λ_KD.
    fill(
        browser,
        "distill-form",
        {"teacher_id": "teacher-1", "method": "rd", "dim": "12", "lambda_kd": "-1"},
    )
    result = submit(browser, "distill-form")
    assert (
        result["status"] == "422"
        and result["fields"] == ["lambda_kd"]
        and result["invalid"] == ["lambda_kd"]
    )
    assert "greater than or equal to 0" in result["text"]
    fill(browser, "distill-form", {"lambda_kd": "0.5"})
    result = submit(browser, "distill-form")
    assert result["status"] == "ok" and "Distill job" in result["text"], result
    job = registry.get_job(job_id_in(browser, "distill-form"))
    assert job.kind == "distill" and job.params == {
        "teacher_id": "teacher-1",
        "dataset_id": "ds-1",
        "publish": False,
        "config": DistillConfig(method="rd", dim=12, lambda_kd=0.5).model_dump(mode="json"),
    }

    # A tuning job: a distill job with {"tune": {"trials": N}}.
    fill(
        browser, "distill-form", {"method": "unkd", "dim": "", "lambda_kd": "", "tune.trials": "4"}
    )
    result = submit(browser, "distill-form")
    assert result["status"] == "ok" and "Tuning job (distill, 4 trials)" in result["text"]
    job = registry.get_job(job_id_in(browser, "distill-form"))
    assert job.params["tune"] == {"trials": 4, "prune": True, "seed": 0}
    assert job.params["config"] == DistillConfig(method="unkd").model_dump(mode="json")
    fill(browser, "distill-form", {"tune.trials": "500"})
    result = submit(browser, "distill-form")
    assert (
        result["status"] == "422"
        and result["fields"] == ["tune.trials"]
        and result["invalid"] == ["tune.trials"]
    )

    # A teacher that is gone by the time the form is sent: 404 naming teacher_id.
    browser.evaluate("""(() => { const s = document.querySelector('#distill-form select[name=teacher_id]');
        s.append(new Option('teacher-gone', 'teacher-gone')); s.value = 'teacher-gone'; })()""")
    fill(browser, "distill-form", {"tune.trials": ""})
    result = submit(browser, "distill-form")
    assert (
        result["status"] == "404" and "teacher_id='teacher-gone': no such model" in result["text"]
    )
    assert result["invalid"] == ["teacher_id"]

    _, total = registry.list_jobs()
    assert total == 4
    browser.wait_for("document.querySelectorAll('#jobs tbody tr').length === 4")
    assert provoked(browser) == {404, 422} and other_errors(browser) == []
    browser.screenshot(ARTIFACTS / "dashboard-forms.png")


# -- publishing and what is served ------------------------------------------------------------


def test_publish_shows_the_gate_refusal_and_publishes_with_force(
    browser: Any, live_server: LiveAPI, registry: Registry, tmp_path: Path
) -> None:
    register_family(registry, tmp_path / "models", "ds-1")
    for model_id, head_share in (("teacher-1", 0.30), ("student-unkd-1", 0.45)):
        record = registry.get_model(model_id)
        registry.add_model(
            record.model_copy(update={"metrics": {**record.metrics, "head_share@20": head_share}})
        )
    open_dashboard(browser, live_server, key=WRITER)
    publish = 'button.publish[data-model-id="student-unkd-1"]'
    browser.wait_for(f"!!document.querySelector('{publish}')")

    result = click(browser, publish, "#publish-msg")
    assert (
        result["status"] == "403"
        and "needs a key with role admin; key 'ci' has role write" in result["text"]
    )
    assert result["invalid"] == ["api-key"]
    set_key(browser, ADMIN)
    result = click(browser, publish, "#publish-msg")
    assert result["status"] == "409" and result["invalid"] == []
    assert (
        "publish gate refused it: head_share@20 of student-unkd-1 is 0.4500, above 1 x its teacher teacher-1's 0.3000"
        in result["text"]
    )
    assert (
        browser.evaluate("document.querySelector('#publish-msg button.force').textContent")
        == "publish anyway (force)"
    )
    assert registry.list_jobs(kind="publish")[1] == 0  # a refused publish queues nothing
    browser.screenshot(ARTIFACTS / "dashboard-gate.png")

    result = click(browser, "#publish-msg button.force", "#publish-msg")
    assert (
        result["status"] == "ok"
        and "forced past the gate" in result["text"]
        and "queued" in result["text"]
    )
    jobs, total = registry.list_jobs(kind="publish")
    assert total == 1 and jobs[0].id in result["text"]
    assert (jobs[0].params["model_id"], jobs[0].params["force"], jobs[0].params["key_name"]) == (
        "student-unkd-1",
        True,
        "ops",
    )
    assert provoked(browser) == {403, 409} and other_errors(browser) == []


def test_rollback_serves_the_previous_model_and_the_history_shows_it(
    browser: Any, live_server: LiveAPI, live_settings: Settings, registry: Registry
) -> None:
    open_dashboard(browser, live_server, key=ADMIN)
    assert browser.evaluate("document.getElementById('history-empty').hidden") is False
    result = click(browser, "#rollback", "#rollback-msg")
    assert (
        result["status"] == "409"
        and "rollback='nothing': nothing to roll back to: no model is served" in result["text"]
    )

    served_world(live_settings, registry)
    wait_served(browser, live_server, "student-b")
    rows = "[...document.querySelectorAll('#history tbody tr')].map(r => [r.dataset.action, r.dataset.modelId, r.cells[3].textContent])"
    browser.wait_for("document.querySelectorAll('#history tbody tr').length === 2")
    assert browser.evaluate(rows) == [
        ["publish", "student-b", "student-a"],
        ["publish", "student-a", "–"],
    ]

    set_key(browser, WRITER)
    result = click(browser, "#rollback", "#rollback-msg")
    assert (
        result["status"] == "403"
        and "POST /v1/serving/rollback needs a key with role admin" in result["text"]
    )
    set_key(browser, ADMIN)
    result = click(browser, "#rollback", "#rollback-msg")
    assert (
        result["status"] == "ok"
        and result["text"] == "Rolled back: serving student-a again (was student-b)."
    )
    history = api(live_server, "GET", "/v1/serving/history").json()
    assert history["total"] == 3
    newest = history["items"][0]
    assert (
        newest["action"],
        newest["model_id"],
        newest["previous_model_id"],
        newest["key_name"],
    ) == ("rollback", "student-a", "student-b", "ops")
    browser.wait_for("document.querySelectorAll('#history tbody tr').length === 3")
    assert browser.evaluate(rows)[0] == ["rollback", "student-a", "student-b"]
    assert (
        browser.evaluate("document.querySelector('#history tbody tr').cells[4].textContent")
        == "ops"
    )
    wait_served(browser, live_server, "student-a")
    assert provoked(browser) == {403, 409} and other_errors(browser) == []
    browser.screenshot(ARTIFACTS / "dashboard-history.png")


# -- the A/B experiment and live exposure (service/api/routes/experiment.py) ------------------


def test_experiment_is_started_and_stopped_from_the_page(
    browser: Any, live_server: LiveAPI, live_settings: Settings, registry: Registry
) -> None:
    served_world(live_settings, registry)
    open_dashboard(browser, live_server, key=WRITER)
    wait_served(browser, live_server, "student-b")
    wait_option(browser, "#arms .arm-row select", "student-a")
    assert (
        browser.evaluate("document.getElementById('experiment-state').dataset.running") == "false"
    )
    arms = {
        "arms.0.model_id": "student-a",
        "arms.0.weight": "0.7",
        "arms.1.model_id": "student-b",
        "arms.1.weight": "0.3",
    }

    fill(browser, "experiment-form", arms)
    result = submit(browser, "experiment-form")
    assert (
        result["status"] == "403"
        and "role admin" in result["text"]
        and result["invalid"] == ["api-key"]
    )
    set_key(browser, ADMIN)
    fill(browser, "experiment-form", {"arms.1.weight": "-1"})
    result = submit(browser, "experiment-form")
    assert (
        result["status"] == "422" and result["fields"] == ["arms.1.weight"] == result["invalid"]
    ), result
    assert "greater than 0" in result["text"]
    browser.evaluate("""(() => { const s = document.querySelector('#arms select[name="arms.0.model_id"]');
        s.append(new Option('m-nope', 'm-nope')); s.value = 'm-nope'; })()""")  # a model gone meanwhile
    fill(browser, "experiment-form", {"arms.1.weight": "0.3"})
    result = submit(browser, "experiment-form")
    assert (
        result["status"] == "404" and "arms[0].model_id='m-nope': no such model" in result["text"]
    )
    assert result["invalid"] == ["arms.0.model_id"]

    browser.evaluate(
        "document.getElementById('add-arm').click()"
    )  # a third arm: a model named twice
    fill(browser, "experiment-form", {**arms, "arms.0.weight": "0.4", "arms.2.weight": "0.3"})
    result = submit(browser, "experiment-form")
    assert (
        result["status"] == "422" and result["fields"] == ["arms"] and result["invalid"] == ["arms"]
    )
    assert "each arm must be a different model" in result["text"]
    browser.evaluate(
        "document.querySelectorAll('#arms .arm-row')[2].querySelector('button.remove-arm').click()"
    )
    assert browser.evaluate("document.querySelectorAll('#arms .arm-row').length") == 2
    assert api(live_server, "GET", EXPERIMENT).json()["running"] is False  # nothing started

    fill(browser, "experiment-form", {**arms, "salt": "spring"})
    result = submit(browser, "experiment-form")
    assert result["status"] == "ok" and result["invalid"] == [], result
    running = api(live_server, "GET", EXPERIMENT)
    assert running.status_code == 200, running.text
    body = running.json()
    assert [(a["model_id"], a["weight"]) for a in body["arms"]] == [
        ("student-a", 0.7),
        ("student-b", 0.3),
    ]
    assert body["salt"] == "spring" and body["started_by"] == "ops"
    browser.wait_for("document.getElementById('experiment-state').dataset.running === 'true'")
    state = browser.evaluate("document.getElementById('experiment-state').textContent")
    assert "student-a 70%" in state and "student-b 30%" in state and "spring" in state
    browser.wait_for(
        "document.querySelectorAll('.exposure-model[data-role=arm]').length === 2", timeout_s=10
    )
    browser.screenshot(ARTIFACTS / "dashboard-experiment.png")

    result = click(browser, "#stop-experiment", "#experiment-form .msg")
    assert result["status"] == "ok" and "Experiment stopped" in result["text"]
    assert api(live_server, "GET", EXPERIMENT).json()["running"] is False
    assert (
        browser.evaluate("document.getElementById('experiment-state').dataset.running") == "false"
    )
    result = click(browser, "#stop-experiment", "#experiment-form .msg")
    assert result["status"] == "404" and "no experiment is running" in result["text"]
    assert provoked(browser) == {403, 404, 422} and other_errors(browser) == []


def bars_by_series(browser: Any, chart: str) -> dict[str, list[float | None]]:
    bars = browser.evaluate(f"""[...document.querySelectorAll('svg[data-chart={json.dumps(chart)}] rect.bar')]
        .map(r => [r.dataset.series, r.dataset.value === '' ? null : Number(r.dataset.value),
                   r.getBoundingClientRect().width])""")
    assert all(width > 5 for _, _, width in bars)  # laid out, visible
    out: dict[str, list[float | None]] = {}
    for series, value, _ in bars:
        out.setdefault(series, []).append(value)
    return out


def drawn_figures(browser: Any, model_id: str) -> dict[tuple[str, str], float | None]:
    cells = browser.evaluate(f"""[...document.querySelectorAll(
        '.exposure-model[data-model-id={json.dumps(model_id)}] td[data-scope]')]
        .map(td => [td.dataset.scope, td.dataset.key, td.dataset.value === '' ? null : Number(td.dataset.value)])""")
    return {(scope, key): value for scope, key, value in cells}


def expected_drawing(model: dict[str, Any], window_s: int) -> dict[str, Any]:
    """What the page should draw for one model of GET /v1/serving/exposure."""
    span = f"last {window_s // 60} min" if window_s % 60 == 0 else f"last {window_s} s"
    win, since = model["window"], model["since_publish"]
    bars = {
        f"live · {span}": [g["share"] for g in win["groups"]],
        "live · since publish": [g["share"] for g in since["groups"]],
        "offline (test)": [g["offline_share"] for g in win["groups"]],
    }
    figures = {}
    for scope, block in (("window", win), ("since_publish", since)):
        for key in ("requests", "slots", "distinct_items", "head_share", "arp", "coverage", "gini"):
            figures[(scope, key)] = block[key]
        for p in ("p50", "p99"):
            figures[(scope, f"latency_ms.{p}")] = block["latency_ms"][p]
    return {"bars": bars, "figures": figures}


def check_outcomes_drawn(
    browser: Any, server: LiveAPI, settings: Settings, users: list[str], arms: list[str]
) -> None:
    """Clicks on answers (XADDed as POST /v1/events stores them), then the page's outcomes
    table shows each arm's click rate of GET /v1/serving/outcomes, and the test's verdict."""
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    for user in users:
        body = api(server, "GET", f"/v1/recommendations/{user}", params={"k": 10}).json()
        fields = {"event_id": f"b-{user}", "user_id": user, "item_id": body["items"][0]["item_id"]}
        fields |= {"type": "click", "ts": repr(time.time()), "rec_id": body["rec_id"]}
        client.xadd(keys.events_stream(), fields)
    client.close()
    answer: dict[str, Any] = {}

    def drawn() -> bool:
        answer.update(api(server, "GET", "/v1/serving/outcomes").json())
        models = {m["model_id"]: m for m in answer["models"]}
        if sorted(models) != sorted(arms) or sum(
            m["since_publish"]["clicks"] for m in models.values()
        ) != len(users):
            return False
        cells = browser.evaluate("""Object.fromEntries([...document.querySelectorAll(
            '#outcomes tr[data-model-id] td[data-key="since_publish.click_rate"]')]
            .map(td => [td.parentElement.dataset.modelId, td.dataset.value === '' ? null : Number(td.dataset.value)]))""")
        want = {m: models[m]["since_publish"]["click_rate"]["per_1000"] for m in arms}
        return bool(cells == want)

    for _ in range(100):
        if drawn():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the page never drew GET /v1/serving/outcomes: {json.dumps(answer)[:2000]}")
    text = browser.evaluate("document.getElementById('outcomes-verdict').textContent")
    assert "always-valid p =" in text and answer["test"]["arm_a"] in text


def test_exposure_charts_draw_the_numbers_of_the_exposure_api(
    browser: Any, live_server: LiveAPI, live_settings: Settings, registry: Registry
) -> None:
    dataset, ids = served_world(live_settings, registry)
    open_dashboard(browser, live_server, key=ADMIN)
    wait_served(browser, live_server, "student-b")
    users = [str(u) for u in dataset.user_ids[:40]]

    def check(models: list[str], requests: int) -> dict[str, Any]:
        """Traffic, then wait until the API has counted `requests` answers in its window (every
        process flushes its counts each second) and the page draws them, model by model."""
        for user in users:
            r = api(live_server, "GET", f"/v1/recommendations/{user}", params={"k": 10})
            assert r.status_code == 200, r.text
        answer: dict[str, Any] = {}

        def drawn_as_answered() -> bool:
            answer.update(api(live_server, "GET", EXPOSURE).json())
            if sorted(m["model_id"] for m in answer["models"]) != sorted(models):
                return False
            if sum(m["window"]["requests"] for m in answer["models"]) != requests:
                return False
            for model in answer["models"]:
                want = expected_drawing(model, answer["window_s"])
                if bars_by_series(browser, f"exposure:{model['model_id']}") != want["bars"]:
                    return False
                drawn = drawn_figures(browser, model["model_id"])
                if any(drawn.get(k) != v for k, v in want["figures"].items()):
                    return False
            return True

        for _ in range(100):  # ~10 s: the page redraws every 0.3 s
            if drawn_as_answered():
                return answer
            time.sleep(0.1)
        pytest.fail(f"the page never drew GET {EXPOSURE}: {json.dumps(answer)[:2000]}")

    answer = check(["student-b"], len(users))
    (model,) = answer["models"]
    assert model["role"] == "active" and model["window"]["requests"] == len(users)
    assert len(model["window"]["groups"]) >= 2
    drawn = drawn_figures(browser, "student-b")  # head share: live, and offline as the G0 bar
    assert drawn[("window", "head_share")] == model["window"]["head_share"]
    offline_head = model["window"]["groups"][0]["offline_share"]
    assert offline_head is not None and drawn[("offline", "head_share")] == offline_head
    report = api(live_server, "GET", "/v1/models/student-b/report").json()
    for key in ("arp", "coverage", "gini"):  # the rest of the offline column: the report's @20
        assert drawn[("offline", key)] == report["metrics"][f"{key}@20"]
    browser.screenshot(ARTIFACTS / "dashboard-exposure.png")

    # An experiment: both arms drawn, each with its own numbers.
    arms = [{"model_id": i, "weight": 0.5} for i in ids]
    r = api(live_server, "PUT", EXPERIMENT, headers=AS_ADMIN, json={"arms": arms})
    assert r.status_code == 200, r.text
    answer = check(ids, 2 * len(users))  # the active model is an arm: its counts run on
    assert {m["role"] for m in answer["models"]} == {"arm"}
    assert all(m["window"]["requests"] > 0 for m in answer["models"])
    browser.wait_for("document.getElementById('experiment-state').dataset.running === 'true'")
    check_outcomes_drawn(browser, live_server, live_settings, users[:12], ids)
    browser.screenshot(ARTIFACTS / "dashboard-exposure-arms.png")
    assert api(live_server, "DELETE", EXPERIMENT, headers=AS_ADMIN).status_code == 200
    browser.wait_for("document.querySelectorAll('.exposure-model').length === 1")
    assert browser.evaluate("document.querySelector('.exposure-model').dataset.role") == "active"
    assert other_errors(browser) == [] and provoked(browser) == set()
