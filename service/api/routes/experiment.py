"""A/B experiments: PUT, GET and DELETE /v1/serving/experiment.

PUT (an admin key) checks every arm before anything changes: the model is registered (404
naming `arms[i].model_id` otherwise) and has a serving bundle, the one it is served from
when it is the active model, else the one of its newest publish in the history (409 when
it was never published). The bundles are then loaded into this process's IndexStore, which
verifies them (checksums, shapes; a broken one is a 409 naming the arm, and nothing
changes), the experiment is stored in the registry (Registry.start_experiment, with a hint
to every API process), and the arms are swapped in; every other API process's watcher
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

from fastapi import APIRouter

from service.api.auth import AdminCaller
from service.api.deps import IndexStoreDep, RegistryDep
from service.core.records import Experiment, ExperimentArm
from service.core.registry import ConflictError, NotFoundError, utcnow
from service.serving.index_store import ArmLoadError
from service.serving.schemas import EndedExperiment, ExperimentRequest, ExperimentState

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/serving", tags=["serving"])

NO_EXPERIMENT = "arms: no experiment is running (PUT /v1/serving/experiment starts one)"
NOT_RUNNING: dict[int | str, dict[str, Any]] = {404: {"description": NO_EXPERIMENT}}


@router.get("/experiment", summary="The running A/B experiment, or running: false")
def get_experiment(registry: RegistryDep) -> ExperimentState:
    """Arms, weights, salt, and who started it when; `running` false (and the other fields
    null) when none runs: a 200, since a page polls this and no experiment is a state."""
    running = registry.get_experiment()
    if running is None:
        return ExperimentState(running=False)
    return ExperimentState(running=True, **running.model_dump())


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
        bundle_dir = registry.newest_bundle(arm.model_id)
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
    try:
        store.apply_experiment(spec, commit=lambda: registry.start_experiment(spec))
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
    running = registry.end_experiment()
    if running is None:
        raise NotFoundError("arms", "", "experiment", message=NO_EXPERIMENT)
    store.apply_experiment(None)
    ended = EndedExperiment(**running.model_dump(), ended_at=utcnow(), ended_by=caller.name)
    logger.info("experiment ended by key %s", caller.name or "-")
    return ended
