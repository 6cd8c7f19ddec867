"""Headless Chromium against a running API: the report and comparison pages draw their
charts from the report's numbers, and the dashboard follows a job's progress, publishes
with the API key and opens a comparison. Screenshots land in test-artifacts/."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.core.config import Settings
from service.core.registry import JobProgress, JobRecord, Registry
from tests.browser.conftest import API_KEY, ARTIFACTS
from tests.report_samples import register_family
from tests.support.live_api import LiveAPI

pytestmark = pytest.mark.browser

BARS_JS = """[...document.querySelectorAll('svg[data-chart="%s"] rect.bar')].map(r => {
  const box = r.getBoundingClientRect();
  return {series: r.dataset.series, category: r.dataset.category,
          value: r.dataset.value === "" ? null : Number(r.dataset.value), width: box.width};
})"""


def drawn_bars(browser: Any, chart: str) -> list[dict[str, Any]]:
    return list(browser.evaluate(BARS_JS % chart))


def series_values(bars: list[dict[str, Any]], series: str) -> list[float | None]:
    return [b["value"] for b in bars if b["series"] == series]


@pytest.fixture()
def registry(live_settings: Settings) -> Registry:
    return Registry.from_url(live_settings.redis_url or "")


def test_report_and_comparison_pages_render(
    browser: Any, live_server: LiveAPI, registry: Registry, tmp_path: Path
) -> None:
    ids = register_family(registry, tmp_path / "models", "ds-1", name="synthetic long-tail")
    report = json.loads((tmp_path / "models" / "student-unkd-1" / "report.json").read_text())
    browser.events.clear()

    browser.navigate(f"{live_server.url}/v1/models/student-unkd-1/report.html")
    recall = drawn_bars(browser, "group-recall")
    assert len(recall) == 4 * 2 and all(b["width"] > 5 for b in recall)  # laid out, visible
    assert series_values(recall, "student-unkd-1") == [g["recall@20"] for g in report["groups"]]
    assert series_values(recall, "teacher-1") == [
        g["recall@20"] for g in report["teacher"]["groups"]
    ]
    exposure = drawn_bars(browser, "exposure")
    assert len(exposure) == 4 * 3
    assert series_values(exposure, "share of test positives") == [
        g["test_share"] for g in report["groups"]
    ]
    points = browser.evaluate(
        "document.querySelectorAll('svg[data-chart=\"training-valid\"] circle.point').length"
    )
    assert points == 2 * 6  # NDCG@20 and Recall@20 over 6 epochs
    assert browser.evaluate("document.querySelectorAll('table.headline tbody tr').length") >= 14
    assert browser.errors() == []
    browser.screenshot(ARTIFACTS / "report.png")

    browser.navigate(f"{live_server.url}/v1/compare.html?models={','.join(ids)}")
    assert len(drawn_bars(browser, "group-recall")) == 4 * len(ids)
    assert len(drawn_bars(browser, "exposure")) == 4 * (len(ids) + 1)
    assert browser.evaluate("document.querySelectorAll('td.best').length") > 10
    assert browser.errors() == []
    browser.screenshot(ARTIFACTS / "compare.png")


def _running_job(registry: Registry, epoch: int) -> str:
    job_id = uuid.uuid4().hex
    registry.create_job(
        JobRecord(
            id=job_id,
            kind="distill",
            params={"teacher_id": "teacher-1", "dataset_id": "ds-1", "config": {"method": "unkd"}},
        )
    )
    registry.start_job(job_id)
    registry.update_progress(
        job_id,
        JobProgress(stage="train", epoch=epoch, epochs=10),
        {"loss": 0.69, "valid_ndcg@20": 0.05},
    )
    return job_id


def test_dashboard_follows_progress_publishes_and_compares(
    browser: Any, live_server: LiveAPI, registry: Registry, tmp_path: Path
) -> None:
    ids = register_family(registry, tmp_path / "models", "ds-1", name="synthetic long-tail")
    done = _running_job(registry, 10)
    registry.finish_job(done, "succeeded", model_id="student-unkd-1")
    job_id = _running_job(registry, 2)
    row = f"document.querySelector('tr[data-job-id=\"{job_id}\"]')"
    browser.events.clear()

    browser.navigate(f"{live_server.url}/?poll_ms=250")
    browser.wait_for(f"!!{row}")
    assert "epoch 2/10 · train" in browser.evaluate(f"{row}.textContent")
    assert browser.evaluate(f"{row}.querySelector('[data-progress]').dataset.progress") == "0.2000"
    polls = int(browser.evaluate("document.body.dataset.polls"))
    registry.update_progress(job_id, JobProgress(stage="train", epoch=7, epochs=10), {"loss": 0.61})
    browser.wait_for(f"{row}.textContent.includes('epoch 7/10')", timeout_s=10)
    assert browser.evaluate(f"{row}.querySelector('[data-progress]').dataset.progress") == "0.7000"
    assert browser.evaluate(f"{row}.querySelector('.progress > span').style.width") == "70%"
    assert int(browser.evaluate("document.body.dataset.polls")) > polls
    links = browser.evaluate(
        "[...document.querySelectorAll('#models tbody tr td:nth-child(2) a')].map(a => a.getAttribute('href'))"
    )
    assert sorted(links) == sorted(f"v1/models/{m}/report.html" for m in ids)
    assert "compare 4" in browser.evaluate("document.querySelector('#datasets tbody').textContent")
    assert (
        browser.evaluate("document.getElementById('serving').textContent")
        == "Serving: nothing published yet."
    )
    assert browser.errors() == []

    # Publish: refused without a key (the browser logs the 401), accepted with one.
    publish = "document.querySelector('button.publish[data-model-id=\"student-rd-1\"]').click()"
    browser.evaluate(publish)
    browser.wait_for(
        "document.getElementById('publish-msg').textContent.includes('needs an API key')"
    )
    browser.evaluate(f"""(() => {{ const input = document.getElementById('api-key');
        input.value = {json.dumps(API_KEY)}; input.dispatchEvent(new Event('input')); }})()""")
    assert browser.evaluate("sessionStorage.getItem('unkd.apiKey')") == API_KEY
    browser.evaluate(publish)
    message = browser.wait_for(
        "(t => t.includes('queued') && t)(document.getElementById('publish-msg').textContent)"
    )
    jobs, total = registry.list_jobs(kind="publish")
    assert total == 1 and jobs[0].id in message
    params = jobs[0].params  # the gate's policy and the publishing key's name travel with the job
    assert (params["model_id"], params["force"], params["key_name"]) == (
        "student-rd-1",
        False,
        "key1",
    )
    unexpected = [e for e in browser.errors() if "401" not in e or "/publish" not in e]
    assert unexpected == [] and len(browser.errors()) == 1
    browser.wait_for(f"!!document.querySelector('tr[data-job-id=\"{jobs[0].id}\"]')")
    browser.screenshot(ARTIFACTS / "dashboard.png")

    # Compare: tick two models, press the button, land on the comparison page.
    browser.events.clear()
    for mid in ("teacher-1", "student-unkd-1"):
        browser.evaluate(
            f"document.querySelector('tr[data-model-id=\"{mid}\"] input[type=checkbox]').click()"
        )
    assert (
        browser.evaluate("document.getElementById('compare').textContent") == "Compare selected (2)"
    )
    mark = len(browser.events)
    browser.evaluate("document.getElementById('compare').click()")
    browser.wait_event("Page.loadEventFired", mark)
    assert browser.evaluate("location.pathname") == "/v1/compare.html"
    assert len(drawn_bars(browser, "group-recall")) == 4 * 2
    assert browser.errors() == []
