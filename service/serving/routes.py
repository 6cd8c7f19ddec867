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
introspection. Filters (exclude, include, groups: service/serving/filters.py) travel with
the request into the same batched search. POST by-history is `async def` on the same
search thread (the fold-in runs there too); the batch POST and the status are plain `def`
and run in the threadpool. With exclude_seen, a user's recent positive events (this process's
map, service/serving/fresh.py) are left out beside their training items; a user the model does
not know but who has such events is answered by folding them in ("source": "history"), else
404 unless `fallback` asks for a popularity list (service/serving/fallback.py).

Every answer is finished by service/serving/answers.py (`answer`, `batch_answer`): it gets a
rec_id and is counted for live exposure and outcomes under the model that produced it
(`Tally.add`: one deque append; service/serving/exposure/counter.py), with the handler's
latency. During an A/B
experiment each user is answered by their arm (service/serving/experiment.py), by-history
by the active model; `model` names any served model.

User ids are any text, "/" included: the single-user route takes the whole rest of the path
(service/serving/paths.py).
"""

from __future__ import annotations

from time import perf_counter
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response

from service.core.records import NotFoundError
from service.serving.answers import (
    ERRORS,
    ExcludeQuery,
    GroupsQuery,
    IncludeQuery,
    answer,
    batch_answer,
    check_k,
    fresh_indices,
    fresh_items,
    invalid,
    named_model,
    request_filters,
    served_for_user,
    served_model,
    serving_state,
    settings_of,
)
from service.serving.filters import Filters, RowQuery, sorted_unique
from service.serving.index_store import IndexStore
from service.serving.lean_route import JsonBodyRoute, ScalarQueryRoute
from service.serving.paths import ext_id
from service.serving.schemas import (
    MODEL_DOC,
    Fallback,
    HistoryRequest,
    Recommendations,
    RecommendationsBatch,
    RecommendationsBatchRequest,
    ServingStatus,
    Source,
)
from service.serving.served_model import ServedModel

router = APIRouter(tags=["recommendations"])


FALLBACK_DOC = (
    "for a user the model does not know, answer 200 with this list instead of 404: `popular` "
    "(the most popular training items) or `debiased` (k slots shared by every popularity group "
    "in proportion to its share of training interactions, most popular first within a group)"
)


async def recommend_user(
    request: Request,
    user_id: str,
    k: int = Query(20, description="items to return, 1 .. settings.max_k"),
    exclude_seen: bool = Query(
        True,
        description="leave out the user's training items and the items of their recent "
        "positive events (POST /v1/events)",
    ),
    model: str | None = Query(None, description=MODEL_DOC),
    exclude: ExcludeQuery = None,
    include: IncludeQuery = None,
    groups: GroupsQuery = None,
    fallback: Annotated[
        Fallback | None, Query(description=FALLBACK_DOC, examples=["debiased"])
    ] = None,
) -> Response:
    """Top-k items for one user from the published model (or the user's experiment arm), with
    optional filters; a user the model does not know is answered from their recent positive
    events ("source": "history"), else by a fallback list if asked, else 404."""
    t0 = perf_counter()
    check_k(k, settings_of(request).max_k, ["query", "k"])
    served = served_for_user(request, user_id, model)
    bundle = served.bundle
    idx = bundle.user_index(user_id)
    recent = fresh_items(request).items(user_id)  # this process's map: no Redis round trip
    if (
        idx is not None
        and exclude is None
        and include is None
        and groups is None
        and not (recent and exclude_seen)
    ):  # the hot path
        scores, items = await bundle.recommend_one_async(idx, k, exclude_seen)
        return answer(served, user_id, scores, items, t0)
    filters = request_filters(bundle, "query", exclude, include, groups)
    fresh = fresh_indices(bundle, recent)
    source: Source = "model"
    if idx is not None:
        ban = fresh if exclude_seen and len(fresh) else None
        if filters.active:
            query: RowQuery | None = filters.query(also_banned=ban)
        else:  # recent items only: the row rides the plain rows' search (ServingBundle.recommend)
            query = RowQuery(ban) if ban is not None else None
        scores, items = await bundle.recommend_one_async(idx, k, exclude_seen, query)
    elif len(fresh):  # unknown to the model, known by their events: fold them in
        source = "history"
        query = filters.query(history=fresh, also_banned=fresh if exclude_seen else None)
        scores, items = await bundle.recommend_one_async(-1, k, False, query)
    elif fallback is not None:
        source = "fallback"
        scores, items = bundle.fallback(fallback, k, filters.banned, filters.allowed)
    else:
        raise NotFoundError("user_id", user_id, f"user in model {bundle.model_id}")
    return answer(
        served,
        user_id,
        scores,
        items,
        t0,
        fallback=fallback if source == "fallback" else None,
        unknown=filters.unknown,
        source=source,
    )


# The hot path: ScalarQueryRoute parses the query parameters without FastAPI's per-request
# dependency solving; OpenAPI and error bodies stay as FastAPI makes them.
router.add_api_route(
    f"/v1/recommendations/{ext_id('user_id')}",
    recommend_user,
    methods=["GET"],
    response_model=Recommendations,
    responses=ERRORS,
    summary="Top-k items for one user",
    route_class_override=ScalarQueryRoute,
)


async def recommend_history(request: Request, req: HistoryRequest) -> Response:
    """Fold the history into a user vector with the served item embeddings (closed-form
    ridge, service.serving.foldin) and answer as for a known user, with `user_id` null.
    During an experiment the active model answers (a visitor has no id to be sticky on)."""
    t0 = perf_counter()
    check_k(req.k, settings_of(request).max_k, ["body", "k"])
    served = served_model(request, req.model)
    bundle = served.bundle
    filters = request_filters(bundle, "body", req.exclude, req.include, req.groups)
    history, missing = bundle.item_indices(req.items)
    if len(history) == 0:
        shown = ", ".join(repr(i) for i in missing[:10]) + (" …" if len(missing) > 10 else "")
        raise invalid(
            ["body", "items"],
            f"none of the history's item ids is in the served catalogue: {shown}",
            req.items,
        )
    history = sorted_unique(history)
    query = filters.query(history=history, also_banned=history if req.exclude_seen else None)
    scores, items = await bundle.recommend_one_async(-1, req.k, False, query)
    unknown = {**filters.unknown, **({"items": missing} if missing else {})}
    return answer(served, None, scores, items, t0, unknown=unknown, source="history")


# JsonBodyRoute parses the body in one pydantic pass (service/serving/lean_route.py); OpenAPI
# and error bodies stay as FastAPI makes them.
router.add_api_route(
    "/v1/recommendations/by-history",
    recommend_history,
    methods=["POST"],
    response_model=Recommendations,
    responses={code: doc for code, doc in ERRORS.items() if code != 404},  # unknown items: reported
    summary="Top-k items for a visitor the model has not seen, from their history",
    route_class_override=JsonBodyRoute,
)


def _batch_queries(
    filters: Filters,
    idx: list[int | None],
    recent: list[np.ndarray],
    exclude_seen: bool,
) -> list[RowQuery | None] | None:
    """One query per row: the filters, plus a user's recent positive items when exclude_seen;
    a user the model does not know (idx None) folds those items in, as the GET does. None
    when no row needs one (the plain batched search).

    Args:
        idx: per row, the user's index in the bundle, or None (then `recent` is not empty).
        recent: per row, (m,) sorted int64 indices of the user's recent positive items.
    """
    if not filters.active and all(i is not None for i in idx) and not any(map(len, recent)):
        return None
    queries: list[RowQuery | None] = []
    for i, r in zip(idx, recent, strict=True):
        if i is None:
            queries.append(filters.query(history=r, also_banned=r if exclude_seen else None))
        elif filters.active or (exclude_seen and len(r)):
            queries.append(filters.query(also_banned=r if exclude_seen and len(r) else None))
        else:
            queries.append(None)
    return queries


@router.post(
    "/v1/recommendations",
    response_model=RecommendationsBatch,
    responses=ERRORS,
    summary="Top-k items for a batch of users",
)
def recommend_batch(request: Request, req: RecommendationsBatchRequest) -> Response:
    """Top-k items for each user of a batch, with one index search per served model (during
    an experiment each user is answered by their arm); the filters apply to every user. A
    user the model does not know is answered from their recent positive events ("source":
    "history", the GET's fold-in), else the batch is 404."""
    t0 = perf_counter()
    settings = settings_of(request)
    check_k(req.k, settings.max_k, ["body", "k"])
    if len(req.user_ids) > settings.max_batch_users:
        raise invalid(
            ["body", "user_ids"],
            f"user_ids holds {len(req.user_ids)} users; at most {settings.max_batch_users} per request",
            len(req.user_ids),
        )
    state = serving_state(request)
    fresh = fresh_items(request)
    if req.model is not None or state.experiment is None:
        only = named_model(state, req.model) if req.model is not None else state.active
        by_model: dict[str, tuple[ServedModel, list[int]]] = {
            only.model_id: (only, list(range(len(req.user_ids))))
        }
    else:
        by_model = {}
        for row, u in enumerate(req.user_ids):
            arm = state.experiment.arm_for(u)
            by_model.setdefault(arm.model_id, (arm, []))[1].append(row)
    parts: list[tuple[ServedModel, list[int], np.ndarray, np.ndarray]] = []
    unknown_items: dict[str, list[str]] = {}
    unknown_users: list[tuple[str, str]] = []
    sources: list[Source] = ["model"] * len(req.user_ids)
    for served, rows in by_model.values():
        bundle = served.bundle
        filters = request_filters(bundle, "body", req.exclude, req.include, req.groups)
        for name, ids in filters.unknown.items():  # arms may know different items: each id once
            listed = unknown_items.setdefault(name, [])
            listed += [i for i in ids if i not in listed]
        idx = [bundle.user_index(req.user_ids[row]) for row in rows]
        # Recent items are read for every row: a known user's are left out (exclude_seen), an
        # unknown user's are their history.
        recent = [fresh_indices(bundle, fresh.items(req.user_ids[row])) for row in rows]
        unknown_users += [
            (req.user_ids[row], bundle.model_id)
            for row, i, r in zip(rows, idx, recent, strict=True)
            if i is None and not len(r)
        ]
        if unknown_users:
            continue
        for row, i in zip(rows, idx, strict=True):
            if i is None:
                sources[row] = "history"
        queries = _batch_queries(filters, idx, recent, req.exclude_seen)
        users = np.array([-1 if i is None else i for i in idx], dtype=np.int64)
        scores, items = bundle.recommend(users, req.k, req.exclude_seen, queries)
        parts.append((served, rows, scores, items))
    if unknown_users:
        shown = ", ".join(repr(u) for u, _ in unknown_users[:10]) + (
            " …" if len(unknown_users) > 10 else ""
        )
        models = ", ".join(sorted({m for _, m in unknown_users}))
        raise NotFoundError(
            "user_ids",
            unknown_users[0][0],
            "user",
            message=f"user_ids: {len(unknown_users)} unknown to model {models}: {shown}",
        )
    return batch_answer(req.user_ids, parts, unknown_items, t0, sources)


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
