"""Report pages and the dashboard: HTML views over the registry and the model directories
(read through the artifact store: with a store URL, fetched and verified into this host's cache).

    GET /v1/models/{id}/report.html     one model's quality report (self-contained page)
    GET /v1/compare?models=a,b,c        the figures of several models side by side (JSON)
    GET /v1/compare.html?models=a,b,c   the same as a page, best value per row marked
    GET /                               the dashboard (service/reports/static/dashboard.html)
    GET /static/{name}                  the dashboard's script modules and the shared stylesheet

Links between pages are relative, so the pages also work behind a path prefix. Report
pages carry a Content-Security-Policy that allows no script and no fetch at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from service.api.deps import RegistryDep, SettingsDep
from service.api.schemas import Id
from service.core.artifacts import ArtifactNotFoundError, ArtifactStore
from service.core.config import Settings
from service.core.registry import NotFoundError, Registry
from service.reports.figures import comparison
from service.reports.render import STATIC, render_compare_page, render_report_page
from service.reports.views import (
    MixedDatasetsError,
    ModelView,
    check_same_dataset,
    view_from_record,
)
from training.errors import DataError
from training.manifest import (
    MANIFEST,
    REPORT,
    read_manifest,
    read_report,
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

router = APIRouter(tags=["reports"])

MAX_COMPARE = 12
_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
DASHBOARD_CSP = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
# The dashboard's script is a few ES modules (how they divide the page: top of dashboard.js).
DASHBOARD_JS = (
    "dashboard.js",
    "dashboard-lib.js",
    "dashboard-forms.js",
    "dashboard-serving.js",
    "dashboard-pipelines.js",
    "dashboard-chart.js",
)
STATIC_FILES = {**dict.fromkeys(DASHBOARD_JS, "text/javascript"), "report.css": "text/css"}
ModelsParam = Annotated[
    str, Query(description="comma-separated model ids, e.g. a,b,c", min_length=1)
]


class CompareRow(BaseModel):
    key: str
    label: str
    better: Literal["higher", "lower", "one", ""]
    values: dict[str, float | None]
    best: list[str]


class CompareModel(BaseModel):
    id: str
    kind: str | None
    method: str | None
    model: str | None
    dim: int | None
    teacher_id: str | None
    created_at: str | None


class CompareDataset(BaseModel):
    id: str | None
    name: str | None
    fingerprint: str | None


class Comparison(BaseModel):
    """Figures of several models of one dataset; `best` lists the best model(s) per row."""

    k: int
    dataset: CompareDataset
    models: list[CompareModel]
    rows: list[CompareRow]


def _read_optional(read: Callable[[Path], _T], model_dir: Path, name: str) -> _T | None:
    """A model file through its training.manifest reader; None when it is missing or cannot
    be read (logged): a page shows what it can rather than failing on a broken file."""
    try:
        return read(model_dir)
    except FileNotFoundError:
        return None
    except (OSError, DataError) as exc:
        logger.warning("unreadable %s: %s", model_dir / name, exc)
        return None


def load_view(
    registry: Registry, store: ArtifactStore, model_id: str, *, field: str, href: str | None = None
) -> ModelView:
    """A registered model with its report (404 without one), manifest and dataset name."""
    record = registry.get_model(model_id, field=field)
    try:  # a store URL: fetched and verified into this host's cache
        model_dir = store.resolve(record.path)
    except ArtifactNotFoundError as exc:  # gone from the store: as a deleted model directory
        logger.warning("model %s: %s", model_id, exc)
        raise NotFoundError(field, model_id, "quality report for this model") from exc
    report = _read_optional(read_report, model_dir, REPORT)
    if report is None:
        raise NotFoundError(field, model_id, "quality report for this model")
    dataset_id = record.lineage.dataset_id
    dataset_name = None
    if dataset_id:
        try:
            dataset_name = registry.get_dataset(dataset_id).name
        except NotFoundError:
            dataset_name = None
    active = registry.get_active()
    return view_from_record(
        record,
        report,
        manifest=_read_optional(read_manifest, model_dir, MANIFEST),
        active=active is not None and active.model_id == model_id,
        dataset_name=dataset_name,
        href=href,
    )


def _model_ids(models: str) -> list[str]:
    """Split ?models=a,b,c: ids in order, duplicates dropped, each checked like a path id."""
    ids = list(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
    if not ids:
        raise DataError("models: give at least one model id (models=a,b,c)")
    if len(ids) > MAX_COMPARE:
        raise DataError(f"models: at most {MAX_COMPARE} models, got {len(ids)}")
    for mid in ids:
        if not _ID.match(mid):
            raise DataError(f"models: {mid[:140]!r} is not a model id")
    return ids


def _compare_views(registry: Registry, settings: Settings, models: str) -> list[ModelView]:
    store = ArtifactStore.from_settings(settings)
    views = [load_view(registry, store, mid, field="models") for mid in _model_ids(models)]
    try:
        check_same_dataset(views)
    except MixedDatasetsError as exc:
        raise DataError(f"models: {exc}") from exc
    return views


def _html(page: str) -> HTMLResponse:
    return HTMLResponse(
        page, headers={"Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-cache"}
    )


@router.get(
    "/v1/models/{model_id}/report.html",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {}}},
        404: {"description": "no such model or report"},
    },
)
def report_page(model_id: Id, registry: RegistryDep, settings: SettingsDep) -> HTMLResponse:
    """The model's quality report as a page: headline table, bias charts, training curve."""
    view = load_view(registry, ArtifactStore.from_settings(settings), model_id, field="model_id")

    def link(mid: str) -> str | None:  # sibling: /v1/models/<mid>/report.html
        return f"../{quote(mid, safe='')}/report.html" if registry.has_model(mid) else None

    return _html(render_report_page(view, link=link, dashboard_href="../../../"))


@router.get(
    "/v1/compare",
    responses={
        404: {"description": "no such model"},
        422: {"description": "bad ids, or models of different datasets"},
    },
)
def compare(models: ModelsParam, registry: RegistryDep, settings: SettingsDep) -> Comparison:
    """Several models of one dataset side by side, with the best value of each row."""
    return Comparison.model_validate(comparison(_compare_views(registry, settings, models)))


@router.get(
    "/v1/compare.html",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {}}},
        404: {"description": "no such model"},
        422: {"description": "bad ids, or models of different datasets"},
    },
)
def compare_page(models: ModelsParam, registry: RegistryDep, settings: SettingsDep) -> HTMLResponse:
    """The comparison as a page: one table with the best value per row marked, two charts."""
    views = _compare_views(registry, settings, models)
    return _html(
        render_compare_page(
            views,
            link=lambda mid: f"models/{quote(mid, safe='')}/report.html",
            dashboard_href="../",
        )
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> FileResponse:
    """Datasets, jobs, models and the served model, with the forms that change them."""
    return FileResponse(
        STATIC / "dashboard.html",
        media_type="text/html",
        headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-cache"},
    )


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    """The dashboard's script modules and the shared stylesheet (a fixed list, nothing else)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise NotFoundError("name", name, "static file")
    return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "no-cache"})
