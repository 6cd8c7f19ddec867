"""Dataset versions: grow a dataset from the positive events since its latest version.

POST builds the next version of the lineage (service/core/versions.py: the segment of new
events in the artifact store, the version's dataset, its record last) during the request,
in the threadpool like an upload's preparation: numpy only, never torch. GET lists the
lineage, newest first, in the shape of GET /v1/datasets. The body's `split` picks the
version's split rule: "temporal" (each user's newest rows held out, the default) or "append"
(the parent's split kept, every new pair in train).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import WriteAccess
from service.api.deps import RegistryDep, SettingsDep
from service.api.schemas import MAX_OFFSET, DatasetList, DatasetOut, Id
from service.core.records import ConflictError
from service.core.versions import VersionSplit, build_version, lineage

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_VERSION_EXAMPLE: dict[str, Any] = {
    "id": "ds-5d1c0e9a7b21",
    "name": "synthetic v1",
    "source": "version",
    "fingerprint": "0c5e1f4a9d3b7e2c8f6a1b0d4e9c3a57",
    "options": {"split": "temporal", "holdout": 0.2, "seed": 0},
    "statistics": {"users": 2500, "items": 1500, "interactions": 60312, "train": 48501},
    "created_at": "2026-12-07T09:30:00Z",
    "root_id": "ds-9f2c4b1a0e77",
    "parent_id": "ds-9f2c4b1a0e77",
    "version": 1,
    "events_cursor": "1796635800000-3",
    "lineage": {
        "parent_id": "ds-9f2c4b1a0e77",
        "events_from": "1796632200000-0",
        "events_to": "1796635800000-3",
        "events": 412,
        "segment": "segments/ds-9f2c4b1a0e77/1796632200000-0_1796635800000-3",
        "split": "temporal",
        "new_users": 0,
        "new_items": 0,
        "new_pairs": 398,
    },
}


class VersionRequest(BaseModel):
    """Options of a version build (the body is optional)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"min_new_events": 100}, {"min_new_events": 1, "split": "append"}]
        },
    )

    min_new_events: int = Field(
        1,
        ge=1,
        description="build only when at least this many positive events arrived since the "
        "lineage's latest version; fewer: 409",
    )
    split: VersionSplit = Field(
        "temporal",
        description="temporal: every row split anew, each user's newest rows held out (judge "
        "on what came last); append: every parent row keeps the parent's split and every new "
        "pair goes to train (the held-out sets stay fixed along the lineage, every event is "
        "trained on at once: for feedback loops)",
    )


@router.post(
    "/{dataset_id}/versions",
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAccess],
    responses={
        201: {"content": {"application/json": {"example": _VERSION_EXAMPLE}}},
        404: {"description": "no such dataset"},
        409: {
            "description": "fewer new positive events than min_new_events, another build of "
            "the lineage running, or events after the lineage's cursor trimmed from the stream"
        },
    },
)
def create_version(
    dataset_id: Id,
    settings: SettingsDep,
    registry: RegistryDep,
    body: Annotated[VersionRequest | None, Body()] = None,
) -> DatasetOut:
    """Build the next version of the dataset's lineage from the positive events since its
    latest version (the parent), with lineage: parent_id, the events range and the split."""
    opts = body or VersionRequest()
    result = build_version(
        registry,
        settings,
        registry.redis,
        dataset_id,
        min_new_events=opts.min_new_events,
        split=opts.split,
    )
    if result.record is None:
        raise ConflictError("dataset_id", dataset_id, result.reason)
    return DatasetOut.of(result.record)


@router.get(
    "/{dataset_id}/versions",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"items": [_VERSION_EXAMPLE], "total": 2, "limit": 1, "offset": 0}
                }
            }
        },
        404: {"description": "no such dataset"},
    },
)
def list_versions(
    dataset_id: Id,
    registry: RegistryDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> DatasetList:
    """The dataset's lineage, its root and every version, newest first (any of its ids)."""
    records = lineage(registry, dataset_id)
    page = records[offset : offset + limit]
    return DatasetList(
        items=[DatasetOut.of(r) for r in page], total=len(records), limit=limit, offset=offset
    )
