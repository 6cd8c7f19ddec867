"""A/B experiments: PUT, GET and DELETE /v1/serving/experiment.

PUT (an admin key) checks every arm before anything changes: the model is registered (404
naming `arms[i].model_id` otherwise) and has a serving bundle, the one it is served from
when it is the active model, else the one of its newest publish in the history (409 when
it was never published). The bundles are then loaded into this process's IndexStore, which
verifies them (checksums, shapes; a broken one is a 409 naming the arm, and nothing
changes), the experiment is written to keys.EXPERIMENT with a hint on
keys.EXPERIMENT_EVENTS, and the arms are swapped in; every other API process's watcher
loads them within `reload_poll_s`. Arms are not gated by the publish gate: an experiment is
how a model that the gate would refuse can be tried on a share of users.

GET answers 200 with `"running": false` when none runs. DELETE (admin) removes the key: the
active model serves everyone again (404 when none runs). The user's arm,
what each route serves and what `?model=` means: service/serving/experiment.py.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import APIRouter, HTTPException

from service.api.auth import AdminCaller
from service.api.deps import IndexStoreDep, RegistryDep
from service.core import keys
from service.core.registry import ConflictError, NotFoundError, Registry, utcnow
from service.serving.index_store import ArmLoadError
from service.serving.schemas import (
    EndedExperiment,
    Experiment,
    ExperimentArm,
    ExperimentRequest,
    ExperimentState,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/serving", tags=["serving"])

NO_EXPERIMENT = "arms: no experiment is running (PUT /v1/serving/experiment starts one)"
NOT_RUNNING: dict[int | str, dict[str, Any]] = {404: {"description": NO_EXPERIMENT}}


def newest_bundle(registry: Registry, model_id: str) -> str | None:
    """The bundle `model_id` is served from: the active pointer's when it is the active
    model, else its staged bundle (a publish with "activate": false), else its newest
    publish's in the history; None when it was never published."""
    active = registry.get_active()
    if active is not None and active.model_id == model_id:
        return active.bundle_dir
    staged = registry.staged_bundle(model_id)
    if staged is not None:
        return staged.bundle_dir
    entries, _ = registry.publish_history(limit=keys.PUBLISH_HISTORY_MAX)
    return next((e.bundle_dir for e in entries if e.model_id == model_id), None)


@router.get("/experiment", summary="The running A/B experiment, or running: false")
def get_experiment(registry: RegistryDep) -> ExperimentState:
    """Arms, weights, salt, and who started it when; `running` false (and the other fields
    null) when none runs: a 200, since a page polls this and no experiment is a state."""
    raw = registry.redis.get(keys.EXPERIMENT)
    if raw is None:
        return ExperimentState(running=False)
    return ExperimentState(running=True, **Experiment.model_validate_json(raw).model_dump())


@router.put(
    "/experiment",
    responses={
        404: {"description": "an arm names a model that is not registered"},
        409: {
            "description": "an arm's model has no serving bundle, or its bundle is broken; nothing changed"
        },
        422: {
            "description": "fewer than 2 arms, a model named twice, a weight <= 0, weights not summing to 1"
        },
    },
    summary="Start (or replace) an A/B experiment: each user served by one arm",
)
def start_experiment(
    req: ExperimentRequest, registry: RegistryDep, store: IndexStoreDep, caller: AdminCaller
) -> Experiment:
    """Serve each user from one arm, sticky per user (an admin key); replaces a running
    experiment. Every arm's bundle is loaded and verified first."""
    for i, arm in enumerate(req.arms):
        if not registry.has_model(arm.model_id):
            raise NotFoundError(f"arms[{i}].model_id", arm.model_id, "model")
    arms = []
    for i, arm in enumerate(req.arms):
        bundle_dir = newest_bundle(registry, arm.model_id)
        if bundle_dir is None:
            raise ConflictError(
                f"arms[{i}].model_id",
                arm.model_id,
                (
                    "this arm has no serving bundle: the model was never published "
                    f'(POST /v1/models/{arm.model_id}/publish with {{"activate": false}} builds one '
                    "without serving it); nothing changed"
                ),
            )
        arms.append(ExperimentArm(model_id=arm.model_id, weight=arm.weight, bundle_dir=bundle_dir))
    spec = Experiment(
        arms=arms,
        salt=req.salt or secrets.token_hex(8),
        started_at=utcnow(),
        started_by=caller.name,
    )

    def commit(raw: str | None) -> None:
        assert raw is not None
        pipe = registry.redis.pipeline()
        pipe.set(keys.EXPERIMENT, raw)
        pipe.publish(keys.EXPERIMENT_EVENTS, raw)
        pipe.execute()

    try:
        store.apply_experiment(spec, commit=commit)
    except ArmLoadError as exc:
        raise ConflictError(
            f"arms[{exc.index}].model_id",
            exc.model_id,
            (
                f"this arm cannot be served: its serving bundle {exc.bundle_dir} is gone or broken ({exc.reason}); "
                f"nothing changed. Publish it again with POST /v1/models/{exc.model_id}/publish"
            ),
        ) from exc
    logger.info(
        "experiment started by key %s: %s",
        caller.name or "-",
        ", ".join(f"{a.model_id} {a.weight:g}" for a in spec.arms),
    )
    return spec


@router.delete("/experiment", responses=NOT_RUNNING, summary="End the A/B experiment")
def end_experiment(
    registry: RegistryDep, store: IndexStoreDep, caller: AdminCaller
) -> EndedExperiment:
    """Stop the experiment (an admin key): the active model serves everyone again."""
    raw = registry.redis.getdel(keys.EXPERIMENT)
    if raw is None:
        raise HTTPException(404, NO_EXPERIMENT)
    registry.redis.publish(keys.EXPERIMENT_EVENTS, "")
    store.apply_experiment(None)
    ended = EndedExperiment(
        **Experiment.model_validate_json(raw).model_dump(), ended_at=utcnow(), ended_by=caller.name
    )
    logger.info("experiment ended by key %s", caller.name or "-")
    return ended
