"""Live exposure of the served models: GET /v1/serving/exposure.

The figures are read from Redis, where every API process adds the counts of the answers it
served (service/serving/exposure.py explains the design); any process answers for all of
them. The offline figure next to each group's live share is the group's exposure_share@20
in the model's quality report (report.json in its model directory), read once per model.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from service.api.deps import IndexStoreDep, SettingsDep
from service.core.artifacts import ArtifactError, ArtifactStore
from service.core.records import HEADLINE_K
from service.core.registry import NotFoundError, Registry
from service.serving.exposure import ExposureReader
from service.serving.schemas import ExposureReport
from training.errors import DataError
from training.manifest import read_report

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/serving", tags=["serving"])


def offline_group_shares(
    registry: Registry, store: ArtifactStore, model_id: str
) -> list[float | None] | None:
    """Per popularity group, exposure_share@20 of the model's quality report (its directory
    resolved through the artifact store: fetched into this host's cache for a store URL);
    None when the model is not registered or has no readable report."""
    try:
        record = registry.get_model(model_id)
        report = read_report(store.resolve(record.path))
    except (NotFoundError, FileNotFoundError, DataError, ArtifactError) as exc:
        logger.info("exposure: no offline report for model %s (%s)", model_id, exc)
        return None
    return [row.value(f"exposure_share@{HEADLINE_K}") for row in report.groups]


@router.get(
    "/exposure",
    responses={503: {"description": "Redis unreachable"}},
    summary="Live exposure of the served models: shares per popularity group, ARP, coverage, Gini, latency",
)
def exposure(request: Request, store: IndexStoreDep, settings: SettingsDep) -> ExposureReport:
    """What each served model (the active one, an experiment's arms) showed in the last 10
    minutes and since it began serving, summed over every API process, next to its offline
    report."""
    reader: ExposureReader = request.app.state.exposure_reader
    state = store.snapshot()
    return reader.report(
        state.models() if state is not None else [], counting=settings.exposure_counting
    )
