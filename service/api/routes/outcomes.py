"""Outcomes of the served models: GET /v1/serving/outcomes.

The counters are read from Redis, where every API process's consumer adds the events it
attributed (service/serving/outcomes/ explains the design); any process answers for all.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import IndexStoreDep
from service.serving.outcomes.reader import OutcomeReader
from service.serving.outcomes.schemas import OutcomesReport

router = APIRouter(prefix="/v1/serving", tags=["serving"])


@router.get(
    "/outcomes",
    responses={503: {"description": "Redis unreachable"}},
    summary="Clicks and purchases per 1,000 exposures of the served models and arms, per "
    "popularity group, with intervals and the arms' always-valid test",
)
def outcomes(request: Request, store: IndexStoreDep) -> OutcomesReport:
    """Per served model (the active one, an experiment's arms), in the last 10 minutes and
    since it began serving: exposures, click and purchase rates per 1,000 exposures overall and
    per popularity group with Wilson 95 % intervals, the tail's share of clicks, clicks by
    position; between an experiment's two arms, the mSPRT's always-valid p-value and verdict."""
    reader: OutcomeReader = request.app.state.outcome_reader
    state = store.snapshot()
    if state is None:
        return reader.report([], None)
    return reader.report(state.models(), state.experiment)
