"""Recommendations from the published model, and what is being served.

The hot path is: dict lookup of the user, one faiss search, seen-item filtering in numpy,
and a JSON body assembled from strings precomputed when the bundle was loaded. Routes
return that body as a Response (FastAPI passes it through untouched) because encoding a
pydantic model with jsonable_encoder costs more CPU than the search itself; the declared
response_model still documents the shape in OpenAPI.

The single-user GET is `async def`: it hands the user to the bundle's search thread
(service/serving/coalescer.py) and awaits the result, so the event loop never waits on faiss, no
threadpool hop is paid, and requests that arrive together share one search. It uses
ScalarQueryRoute (service/serving/lean_route.py) to skip FastAPI's per-request parameter
introspection. The other routes are plain `def` and run in the threadpool.

User ids are any text, "/" included: the ASGI server decodes `%2F` before routing, so the
single-user route takes the whole rest of the path (`{user_id:ext_id}`, never empty, so
`/v1/recommendations/` still falls through to the batch route's trailing-slash redirect).
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.convertors import PathConvertor, register_url_convertor

from service.core.config import Settings
from service.serving.bundle import ServingBundle
from service.serving.index_store import IndexStore
from service.serving.lean_route import ScalarQueryRoute
from service.serving.schemas import (
    Recommendations,
    RecommendationsBatch,
    RecommendationsBatchRequest,
    ServingStatus,
)

router = APIRouter(tags=["recommendations"])


class ExternalIdConvertor(PathConvertor):
    """The rest of the path, "/" included, at least one character: an external id."""

    regex = r"[\s\S]+"  # any character, a newline (%0A) included: ids are opaque strings


register_url_convertor("ext_id", ExternalIdConvertor())

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown user id"},
    409: {"description": "`model` names a model that is not the one being served"},
    422: {"description": "k or the batch size out of range"},
    503: {"description": "no model has been published yet"},
}


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _serving_bundle(request: Request, model: str | None) -> ServingBundle:
    store: IndexStore = request.app.state.index_store
    bundle = store.current  # read once: the whole request uses this bundle, even across a swap
    if bundle is None:
        raise HTTPException(
            503, "no model is being served yet: publish one with POST /v1/models/{id}/publish"
        )
    if model is not None and model != bundle.model_id:
        raise HTTPException(
            409, f"model {model!r} is not the served model (serving {bundle.model_id!r}); publish it first"
        )
    return bundle


def _check_k(k: int, max_k: int, loc: list[str]) -> None:
    # The bound comes from Settings at run time, so it can't live in a static Query(le=...);
    # the detail keeps FastAPI's validation-error shape so clients parse one format.
    if not 1 <= k <= max_k:
        raise HTTPException(
            422,
            [{"type": "value_error", "loc": loc, "msg": f"k must be between 1 and {max_k}", "input": k}],
        )


def _body(bundle: ServingBundle, user_id: str, scores: np.ndarray, items: np.ndarray) -> str:
    """One `Recommendations` object as JSON text. scores, items: (k,) rows of recommend()."""
    return (
        f'{{"user_id":{encode_basestring_ascii(user_id)},'
        f'"model_id":{encode_basestring_ascii(bundle.model_id)},'
        f'"items":{bundle.items_json(scores, items)}}}'
    )


async def recommend_user(
    request: Request,
    user_id: str,
    k: int = Query(20, description="items to return, 1 .. settings.max_k"),
    exclude_seen: bool = Query(True, description="leave out the user's training items"),
    model: str | None = Query(None, description="answer only if this model is being served"),
) -> Response:
    """Top-k items for one user from the published model."""
    _check_k(k, _settings(request).max_k, ["query", "k"])
    bundle = _serving_bundle(request, model)
    idx = bundle.user_index(user_id)
    if idx is None:
        raise HTTPException(404, f"unknown user_id {user_id!r} (model {bundle.model_id})")
    scores, items = await bundle.recommend_one_async(idx, k, exclude_seen)
    return Response(_body(bundle, user_id, scores, items), media_type="application/json")


# The hot path: ScalarQueryRoute parses k / exclude_seen / model without FastAPI's
# per-request dependency solving; OpenAPI and error bodies stay as FastAPI makes them.
router.add_api_route(
    "/v1/recommendations/{user_id:ext_id}",
    recommend_user,
    methods=["GET"],
    response_model=Recommendations,
    responses=_ERRORS,
    summary="Top-k items for one user",
    route_class_override=ScalarQueryRoute,
)


@router.post(
    "/v1/recommendations",
    response_model=RecommendationsBatch,
    responses=_ERRORS,
    summary="Top-k items for a batch of users",
)
def recommend_batch(request: Request, req: RecommendationsBatchRequest) -> Response:
    """Top-k items for each user of a batch, with one index search for the whole batch."""
    settings = _settings(request)
    _check_k(req.k, settings.max_k, ["body", "k"])
    if len(req.user_ids) > settings.max_batch_users:
        raise HTTPException(
            422,
            [
                {
                    "type": "value_error",
                    "loc": ["body", "user_ids"],
                    "msg": f"user_ids holds {len(req.user_ids)} users; at most {settings.max_batch_users} per request",
                    "input": len(req.user_ids),
                }
            ],
        )
    bundle = _serving_bundle(request, req.model)
    idx = [bundle.user_index(u) for u in req.user_ids]
    unknown = [u for u, i in zip(req.user_ids, idx, strict=True) if i is None]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" …" if len(unknown) > 10 else "")
        raise HTTPException(404, f"unknown user_ids ({len(unknown)}): {shown} (model {bundle.model_id})")
    scores, items = bundle.recommend(np.array(idx, dtype=np.int64), req.k, req.exclude_seen)
    results = ",".join(
        _body(bundle, u, scores[row], items[row]) for row, u in enumerate(req.user_ids)
    )
    body = f'{{"model_id":{encode_basestring_ascii(bundle.model_id)},"results":[{results}]}}'
    return Response(body, media_type="application/json")


@router.get("/v1/serving", response_model=ServingStatus, summary="The model being served")
def serving_status(request: Request) -> ServingStatus:
    """Active model, index type, catalogue size and when this process loaded it."""
    store: IndexStore = request.app.state.index_store
    state = store.snapshot()
    if state is None:
        return ServingStatus(ready=False)
    bundle, meta = state.bundle, state.bundle.meta
    return ServingStatus(
        ready=True,
        model_id=bundle.model_id,
        index_type=str(meta.get("factory")),
        exact=bundle.exact,
        metric=str(meta.get("metric")),
        dim=int(meta["d"]),
        n_items=bundle.n_items,
        n_users=bundle.n_users,
        published_at=str(state.pointer.get("published_at")),
        loaded_at=state.loaded_at,
        bundle_created_at=str(meta.get("created_at")),
    )
