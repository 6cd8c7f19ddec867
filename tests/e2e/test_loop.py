"""bench/loop.py end to end, small: one UnKD world of 200 users over two rounds on its own
`unkd up` stack (LocalStack: Redis, one worker, the API), so the round trip serve -> clicks
-> events -> retrain -> serve again runs over HTTP as the bench runs it at full size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.api.app import create_app
from service.core.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _expected_mode() -> str:
    """The retrain bench/loop.py's "auto" picks on this service: the pipeline route, else the
    versions route (issue 19), else a fresh upload of the grown data (always there)."""
    paths = create_app(Settings()).openapi()["paths"]  # the routes live in included routers
    if "/v1/pipelines/{name}/run" in paths:
        return "pipeline"
    return "versions" if "/v1/datasets/{dataset_id}/versions" in paths else "upload"


def test_loop_bench_runs_two_rounds_and_writes_its_files(tmp_path: Path) -> None:
    from bench.loop import main

    out, report = tmp_path / "loop.svg", tmp_path / "loop.json"
    argv = ["--rounds", "2", "--seeds", "1", "--users", "200", "--arms", "unkd"]
    code = main([*argv, "--out", str(out), "--json", str(report)])

    assert code == 0
    assert out.read_text().startswith("<svg")
    page = out.with_suffix(".html").read_text()
    assert "<svg" in page and "head share of exposure" in page
    doc = json.loads(report.read_text())
    (world,) = doc["worlds"]
    assert world["error"] is None and world["arm"] == "unkd"
    assert world["mode"] == _expected_mode()
    first, second = world["rounds"]
    # every user got a full list each round
    assert first["exposures"] == second["exposures"] == 200 * 10
    # the retrain after round 1 ran to an end the bench accepts, and a published model is
    # the one that served round 2
    run = first["run"]
    assert run["status"] in ("published", "refused", "skipped")
    if run["status"] == "published":
        assert second["model_id"] == run["model_id"] != first["model_id"]
    else:
        assert second["model_id"] == first["model_id"]
    assert second["run"] is None  # no retrain after the last round
    assert 0.0 <= first["head_exposure"] <= 1.0 and 0.0 < first["true_ndcg"] <= 1.0
