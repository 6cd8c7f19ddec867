"""`unkd pipelines` (service/client/pipelines.py) against a live API (uvicorn in its own
process) on a real Redis. The commands run in-process through `service.cli.main`, as the
`unkd` script runs them; a run's task is executed here by the worker's app (`apply`),
as a worker would run it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from service import cli
from service.core.config import Settings
from service.core.pipelines_store import PipelineStore
from service.core.queue import PIPELINE_RUN, make_celery
from service.core.registry import Registry
from tests.api.test_pipeline_routes import DISTILL, TEACHER, interactions
from tests.support.live_api import LiveAPI

ADMIN = "pipes-admin-key-0123"


def test_put_list_show_run_wait_and_runs(
    make_settings: Callable[..., Settings],
    live_api: Callable[..., LiveAPI],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    settings = make_settings(api_keys=[f"ops:admin:{ADMIN}"])
    api = live_api(settings)
    monkeypatch.setenv("UNKD_API_URL", api.url)
    monkeypatch.setenv("UNKD_API_KEY", ADMIN)

    def unkd(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    import httpx

    r = httpx.post(
        f"{api.url}/v1/datasets",
        files={"file": ("p.csv", interactions())},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        json.dumps({"dataset_id": dataset_id, "teacher": TEACHER, "distill": DISTILL})
    )

    code, out, err = unkd("pipelines", "put", "nightly", "--file", str(recipe))
    assert code == 0 and "pipeline nightly saved" in out and "1 new events" in out, err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset_id": dataset_id, "teacher": {**TEACHER, "dim": 0}}))
    code, _, err = unkd("pipelines", "put", "nightly", "--file", str(bad))
    assert code == 1 and "teacher" in err and "dim" in err and "422" in err
    code, out, _ = unkd("pipelines", "list")
    assert code == 0 and "nightly" in out and dataset_id in out
    code, out, _ = unkd("pipelines", "show", "nightly")
    assert code == 0 and json.loads(out)["teacher"]["dim"] == TEACHER["dim"]

    app: Celery = make_celery(settings, set_as_current=False, include=["worker.tasks"])
    app.loader.import_default_modules()
    registry = Registry.from_url(settings.redis_url or "")
    store = PipelineStore(registry.redis)

    def worker() -> None:  # takes the queued run as a worker would
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs, _ = store.list_runs("nightly", limit=1)
            if runs and runs[0].status == "queued":
                app.tasks[PIPELINE_RUN].apply(args=[runs[0].run_id], task_id=runs[0].run_id)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    code, out, err = unkd(
        "pipelines", "run", "nightly", "--wait", "--min-new-events", "0", "--interval", "0.1"
    )
    thread.join()
    assert code == 0, (out, err)
    assert "succeeded: published student-" in out and "gate head_share: pass" in out, out
    assert "student_ndcg@20" in out and "run " in err  # progress lines on stderr
    runs: list[dict[str, Any]] = json.loads(unkd("pipelines", "runs", "nightly", "--json")[1])[
        "items"
    ]
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"
    code, out, _ = unkd("pipelines", "runs", "nightly")
    assert code == 0 and runs[0]["run_id"][:12] in out and "head_share:ok" in out

    code, out, _ = unkd("pipelines", "run", "nightly")  # queued, nobody takes it
    assert code == 0 and "queued" in out
    code, _, err = unkd("pipelines", "run", "nightly")
    assert code == 1 and "409" in err and "one run at a time" in err
    code, out, _ = unkd("pipelines", "delete", "nightly")
    assert code == 0 and "deleted" in out
    code, _, err = unkd("pipelines", "show", "nightly")
    assert code == 1 and "404" in err
    registry.close()
