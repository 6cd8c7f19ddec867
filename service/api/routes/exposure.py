"""Live exposure of the served models: GET /v1/serving/exposure.

The figures are read from Redis, where every API process adds the counts of the answers it
served (service/serving/exposure/ explains the design); any process answers for all of
them, next to each group's offline share in the model's quality report.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from service.api.deps import IndexStoreDep, SettingsDep
from service.serving.exposure.reader import ExposureReader
from service.serving.schemas import ExposureReport

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/serving", tags=["serving"])


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
