"""Imports go one way: the API process never loads torch, training never loads the web
stack, and the worker never loads FastAPI. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(statement: str, modules: list[str]) -> dict[str, bool]:
    code = (
        f"import sys, json\n{statement}\n"
        f"print(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_api_imports_without_torch() -> None:
    loaded = loaded_after("import service.api.app; service.api.app.create_app", ["torch", "fastapi"])
    assert loaded == {"torch": False, "fastapi": True}


def test_cli_help_path_is_light() -> None:
    loaded = loaded_after("import service.cli; service.cli.build_parser()", ["torch", "fastapi"])
    assert loaded == {"torch": False, "fastapi": False}


def test_training_imports_no_web_stack() -> None:
    mods = ["fastapi", "celery", "redis", "starlette", "service", "worker"]
    loaded = loaded_after("import training, training.pipelines, training.prepare", mods)
    assert not any(loaded.values()), loaded


@pytest.mark.parametrize("module", ["worker.celery_app", "worker.tasks"])
def test_worker_imports_no_fastapi(module: str) -> None:
    loaded = loaded_after(f"import {module}", ["fastapi", "starlette", "uvicorn"])
    assert not any(loaded.values()), loaded


def test_celery_app_imports_no_torch_and_reads_no_env_at_import() -> None:
    loaded = loaded_after(
        "import os; os.environ['UNKD_REDIS_URL'] = 'not a url'; import worker.celery_app",
        ["torch"],
    )  # an invalid UNKD_REDIS_URL would raise if the module built its app at import
    assert loaded == {"torch": False}
