"""Imports go one way: the API process never loads torch, training never loads the web
stack, the worker never loads FastAPI, and service.core (what the API and the workers
share) loads neither. Each check runs in a fresh interpreter; the static direction
between our own packages is import-linter's (pyproject.toml [tool.importlinter])."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def loaded_after(statement: str, modules: list[str]) -> dict[str, bool]:
    code = (
        f"import sys, json\n{statement}\n"
        f"print(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


REPO = Path(__file__).resolve().parents[2]
WEB_STACK = ["fastapi", "starlette", "uvicorn"]
# Shared state and the queue's client side: settings, Redis keys, records, registry, queue.
CORE_STATE = [
    "service.core.config",
    "service.core.keys",
    "service.core.records",
    "service.core.registry",
    "service.core.queue",
]


def test_api_imports_without_torch() -> None:
    loaded = loaded_after(
        "import service.api.app; service.api.app.create_app", ["torch", "fastapi"]
    )
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


@pytest.mark.parametrize("module", [*CORE_STATE, "service.core.bundle_format"])
def test_core_imports_no_web_stack_and_no_torch(module: str) -> None:
    loaded = loaded_after(f"import {module}", [*WEB_STACK, "torch"])
    assert not any(loaded.values()), loaded


def test_core_state_loads_no_faiss() -> None:
    # Only the bundle format (build, validate, write, read an index) needs faiss.
    loaded = loaded_after(f"import {', '.join(CORE_STATE)}", ["faiss"])
    assert loaded == {"faiss": False}


def test_service_package_init_stays_empty() -> None:
    # Anything in service/__init__.py runs for every `import service.core...` in the worker.
    assert (REPO / "service" / "__init__.py").read_text().strip() == ""
