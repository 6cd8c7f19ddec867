"""The publish history and rollback: GET /v1/serving/history, POST /v1/serving/rollback.

Every publish that makes a model the served one (a publish job, a distill job with
"publish": true, a rollback) is recorded in the registry, newest first. A rollback puts
back the newest model in that history other than the served one, through the same
registry call a publish job ends with (pointer, history entry and the serving event in one
MULTI), so every API process hot-swaps to it as after a publish. Its bundle is read and
verified first (checksums, shapes; fetched into the local cache first when it lives in the
artifact store); a bundle that is gone or broken answers 409 naming the model and changes
nothing.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query

from service.api.auth import AdminCaller
from service.api.deps import RegistryDep, SettingsDep
from service.api.schemas import MAX_OFFSET, PublishHistory
from service.core.artifacts import ArtifactError, ArtifactStore
from service.core.bundle_format import BundleError, read_bundle
from service.core.registry import ConflictError, PublishEntry

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/serving", tags=["serving"])


@router.get("/history")
def publish_history(
    registry: RegistryDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> PublishHistory:
    """Publishes and rollbacks that set the served model, newest first."""
    items, total = registry.publish_history(limit=limit, offset=offset)
    return PublishHistory(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/rollback", responses={409: {"description": "nothing to roll back to, or its bundle is gone"}}
)
def rollback(registry: RegistryDep, settings: SettingsDep, caller: AdminCaller) -> PublishEntry:
    """Serve again the model published before the current one (an admin key)."""
    found = registry.rollback_target()
    if found is None:
        active = registry.get_active()
        served = active.model_id if active is not None else "nothing"
        raise ConflictError(
            "rollback",
            served,
            (
                "nothing to roll back to: the publish history holds no model other than the served one"
                if active is not None
                else "nothing to roll back to: no model is served"
            ),
        )
    target, served = found
    try:  # resolved as the API processes resolve the pointer (a store URL: fetched, verified)
        bundle_dir = ArtifactStore.from_settings(settings).resolve(target.bundle_dir)
        read_bundle(bundle_dir, nprobe=settings.nprobe, ef_search=settings.hnsw_ef_search)
    except (BundleError, ArtifactError, OSError) as exc:
        raise ConflictError(
            "model_id",
            target.model_id,
            (
                f"cannot roll back to it: its serving bundle is gone or broken ({exc}); still serving "
                f"{served}. Publish it again with POST /v1/models/{target.model_id}/publish"
            ),
        ) from exc
    entry = registry.record_publish(
        PublishEntry(
            model_id=target.model_id,
            bundle_dir=target.bundle_dir,
            action="rollback",
            key_name=caller.name,
        ),
        expect_active=served,
    )
    logger.info(
        "rollback: serving %s again (was %s), asked by key %s",
        entry.model_id,
        served,
        caller.name or "-",
    )
    return entry
