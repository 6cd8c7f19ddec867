"""The dashboard's "Pipelines" part in headless Chromium against the API under uvicorn and a
real Redis: save a recipe (and see the field a bad one names), run it now, and the run's
record with its gate answers in the runs table. The run's task is executed by the worker's
app in this process (`apply`), as a worker would run it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from service.core.config import Settings
from service.core.queue import PIPELINE_RUN, make_celery
from tests.api.test_pipeline_routes import DISTILL, TEACHER, interactions
from tests.browser.conftest import API_KEY
from tests.browser.test_dashboard_forms import fill, open_dashboard, submit
from tests.support.live_api import LiveAPI

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def test_save_run_and_read_the_runs_with_their_gate(
    browser: Any, live_server: LiveAPI, live_settings: Settings
) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(
        f"{live_server.url}/v1/datasets",
        files={"file": ("p.csv", interactions())},
        headers=auth,
        timeout=60,
    )
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    open_dashboard(browser, live_server, key=API_KEY)

    bad = {"dataset_id": dataset_id, "teacher": {**TEACHER, "dim": 0}, "distill": DISTILL}
    fill(browser, "pipeline-form", {"name": "nightly", "recipe": json.dumps(bad)})
    shown = submit(browser, "pipeline-form")
    assert shown["status"] == "422" and "teacher.dim" in shown["fields"], shown

    recipe = {"dataset_id": dataset_id, "teacher": TEACHER, "distill": DISTILL, "every_s": 3600}
    fill(browser, "pipeline-form", {"recipe": json.dumps({**recipe, "min_new_events": 0})})
    shown = submit(browser, "pipeline-form")
    assert shown["status"] == "ok" and "nightly" in shown["text"], shown
    assert "every 3600s" in shown["text"]
    browser.wait_for("document.querySelector('#pipelines tr[data-name=nightly]') !== null")

    browser.evaluate("document.querySelector('#pipelines tr[data-name=nightly] .run-now').click()")
    status = browser.wait_for("document.getElementById('pipeline-run-msg').dataset.status")
    assert status == "ok", browser.evaluate(
        "document.getElementById('pipeline-run-msg').textContent"
    )
    run_id = browser.evaluate("document.querySelector('#pipeline-run-msg code.run-id').textContent")
    browser.wait_for(f"document.querySelector('#pipeline-runs tr[data-run=\"{run_id}\"]') !== null")
    assert (
        browser.evaluate(f"document.querySelector('tr[data-run=\"{run_id}\"]').dataset.status")
        == "queued"
    )

    app = make_celery(live_settings, set_as_current=False, include=["worker.tasks"])
    app.loader.import_default_modules()
    app.tasks[PIPELINE_RUN].apply(args=[run_id], task_id=run_id)
    run = httpx.get(f"{live_server.url}/v1/pipelines/nightly/runs/{run_id}", timeout=10).json()
    assert run["status"] == "succeeded", run

    row = f"document.querySelector('tr[data-run=\"{run_id}\"]')"
    browser.wait_for(f"{row}.dataset.status === 'succeeded'", timeout_s=20)
    gate = browser.evaluate(
        f"[...{row}.querySelectorAll('ul.gate li')].map(li => [li.dataset.rule, li.dataset.passed])"
    )
    assert gate == [[c["rule"], json.dumps(c["passed"])] for c in run["gate"]], gate
    text = browser.evaluate(f"{row}.textContent")
    assert run["student_id"] in text and "activate" in text
    time.sleep(0.5)
    assert not [e for e in browser.errors() if "Failed to load resource" not in e]
