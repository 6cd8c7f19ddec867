"""What the serving routes share: the served model of a request (active, an experiment's arm
or the one named by `model`), bounds on k, filters from a request, and the JSON text of an
answer.

Errors are the domain errors that service/api/errors.py maps (NotServingError 503,
ConflictError 409, NotFoundError 404), and bad request values FastAPI's own
RequestValidationError (422 in the shape every validation error has).

Answers are JSON text assembled from per-item strings prepared when the bundle loaded
(ServingBundle.items_json): encoding a pydantic model costs more CPU than the search. The
routes declare the pydantic models of service.serving.schemas for OpenAPI only.

Every answer (single user, fallback list, by-history, batch) is finished here (`answer`,
`batch_answer`): it gets a fresh `rec_id` (12 random hex digits, no Redis on the
request path), and is counted on its model's Tally with that rec_id and the user of each list,
so that events citing the rec_id are attributed to the model, position and popularity group
that showed the item (service/serving/outcomes/). A batch has one rec_id, at its top and in
each result.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from json.encoder import encode_basestring_ascii
from random import getrandbits
from time import perf_counter
from typing import Annotated, Any

import numpy as np
from fastapi import Query, Request, Response
from fastapi.exceptions import RequestValidationError

from service.core.config import Settings
from service.core.records import ConflictError, NotServingError
from service.serving.bundle import ServingBundle
from service.serving.filters import NO_ITEMS, FilterError, Filters, resolve_filters
from service.serving.fresh import FreshItems
from service.serving.gc_policy import note_answer
from service.serving.index_store import IndexStore, LoadedBundle
from service.serving.schemas import EXCLUDE_DOC, GROUPS_DOC, INCLUDE_DOC, Source
from service.serving.served_model import ServedModel

# The filter parameters of the GET routes: repeated query parameters (?exclude=a&exclude=b).
ExcludeQuery = Annotated[
    list[str] | None,
    Query(description=EXCLUDE_DOC + "; repeat the parameter", examples=[["i3", "i8"]]),
]
IncludeQuery = Annotated[
    list[str] | None,
    Query(description=INCLUDE_DOC + "; repeat the parameter", examples=[["i1", "i2", "i5"]]),
]
GroupsQuery = Annotated[
    list[int] | None, Query(description=GROUPS_DOC + "; repeat the parameter", examples=[[2, 3]])
]

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown user id"},
    409: {
        "description": "`model` names a model that is not served (the active model or an experiment's arm)"
    },
    422: {
        "description": "k, the batch size, a filter (`include` with no known id, a group number "
        "outside 0 .. G-1) or `fallback` out of range; the detail names the field"
    },
    503: {"description": "no model has been published yet"},
}


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def serving_state(request: Request) -> LoadedBundle:
    """What this request is served from, read once: a swap never changes it midway."""
    store: IndexStore = request.app.state.index_store
    state = store.snapshot()
    if state is None:
        raise NotServingError(
            "model", "no model is being served yet: publish one with POST /v1/models/{id}/publish"
        )
    return state


def named_model(state: LoadedBundle, model: str) -> ServedModel:
    """The served model called `model` (the active one or an experiment's arm); 409 otherwise."""
    served = state.named(model)
    if served is None:
        arms = state.experiment.arms if state.experiment is not None else ()
        also = f"; experiment arms {', '.join(repr(a.model_id) for a in arms)}" if arms else ""
        raise ConflictError(
            "model",
            model,
            f"not the served model (serving {state.bundle.model_id!r}{also}); publish it first",
        )
    return served


def served_model(request: Request, model: str | None) -> ServedModel:
    """The model of a request that no user picks: `model` if given (any served model), else
    the active one (by-history, similar items)."""
    state = serving_state(request)
    return state.active if model is None else named_model(state, model)


def served_for_user(request: Request, user_id: str, model: str | None) -> ServedModel:
    """The model that answers `user_id`: `model` if given, else the user's experiment arm,
    else the active model. With no experiment this costs one attribute read more than the
    active model alone."""
    state = serving_state(request)
    if model is not None:
        return named_model(state, model)
    experiment = state.experiment
    return state.active if experiment is None else experiment.arm_for(user_id)


def serving_bundle(request: Request, model: str | None) -> ServingBundle:
    """The bundle of `served_model`."""
    return served_model(request, model).bundle


def invalid(loc: list[str | int], msg: str, value: object) -> RequestValidationError:
    """A 422 of a value only known bad at run time (k above settings.max_k, a filter the
    bundle refuses): FastAPI's validation error, so clients parse one format."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def check_k(k: int, max_k: int, loc: list[str | int]) -> None:
    # The bound comes from Settings at run time, so it can't live in a static Query(le=...).
    if not 1 <= k <= max_k:
        raise invalid(loc, f"k must be between 1 and {max_k}", k)


def request_filters(
    bundle: ServingBundle,
    where: str,
    exclude: Sequence[str] | None,
    include: Sequence[str] | None,
    groups: Sequence[int] | None,
) -> Filters:
    """resolve_filters, with a bad filter as a 422 located at (`where`, field)."""
    try:
        return resolve_filters(bundle, exclude, include, groups)
    except FilterError as exc:
        raise invalid([where, exc.field], exc.message, exc.value) from exc


def new_rec_id() -> str:
    """A fresh answer id: 12 hex digits, 48 bits of the random module's generator (seeded from
    os.urandom, and again in each forked worker process; ~0.2 µs, no Redis, no system call:
    os.urandom let the search thread take the GIL from the event loop, docs/service.md "Waiting
    on the GIL"). An id names an answer; it is not a secret (events need a write key)."""
    return f"{getrandbits(48):012x}"


def recommendations_json(
    bundle: ServingBundle,
    user_id: str | None,
    scores: np.ndarray,
    items: np.ndarray,
    *,
    rec_id: str,
    fallback: str | None = None,
    unknown: dict[str, list[str]] | None = None,
    source: Source = "model",
) -> str:
    """One `Recommendations` object as JSON text. scores, items: (k,) rows of recommend()."""
    head = "null" if user_id is None else encode_basestring_ascii(user_id)
    extra = f',"fallback":"{fallback}"' if fallback is not None else ""
    if unknown:
        extra += f',"unknown_items":{json.dumps(unknown)}'
    return (
        f'{{"rec_id":"{rec_id}","user_id":{head},'
        f'"model_id":{encode_basestring_ascii(bundle.model_id)},'
        f'"source":"{source}"{extra},"items":{bundle.items_json(scores, items)}}}'
    )


def answer(
    served: ServedModel,
    user_id: str | None,
    scores: np.ndarray,
    items: np.ndarray,
    t0: float,
    *,
    fallback: str | None = None,
    unknown: dict[str, list[str]] | None = None,
    source: Source = "model",
) -> Response:
    """The response of a one-list answer, counted (with its rec_id) on the model's tally.

    Args:
        scores, items: (k,) rows of recommend() or fallback().
        t0: perf_counter() when the handler began (the latency counted).
    """
    rec_id = new_rec_id()
    body = recommendations_json(
        served.bundle,
        user_id,
        scores,
        items,
        rec_id=rec_id,
        fallback=fallback,
        unknown=unknown,
        source=source,
    )
    served.tally.add(items, perf_counter() - t0, (rec_id, (user_id,)))
    note_answer()  # the warm-up freeze of the collector (gc_policy)
    return Response(body, media_type="application/json")


def batch_answer(
    user_ids: Sequence[str],
    parts: Sequence[tuple[ServedModel, list[int], np.ndarray, np.ndarray]],
    unknown_items: dict[str, list[str]],
    t0: float,
    sources: Sequence[Source] | None = None,
) -> Response:
    """The response of a batch: one result per user in request order, one rec_id for all.

    Args:
        parts: per served model, the request rows it answered and their (n, k) scores, items.
        sources: per request row, what answered it ("model" or "history"); None: all "model".
    """
    rec_id = new_rec_id()
    answers: list[str] = [""] * len(user_ids)
    latency = perf_counter() - t0
    for served, rows, scores, items in parts:
        for j, row in enumerate(rows):
            answers[row] = recommendations_json(
                served.bundle,
                user_ids[row],
                scores[j],
                items[j],
                rec_id=rec_id,
                source="model" if sources is None else sources[row],
            )
        served.tally.add(items, latency, (rec_id, tuple(user_ids[row] for row in rows)))
    extra = f',"unknown_items":{json.dumps(unknown_items)}' if unknown_items else ""
    model_id = encode_basestring_ascii(parts[0][0].model_id) if len(parts) == 1 else "null"
    body = f'{{"rec_id":"{rec_id}","model_id":{model_id}{extra},"results":[{",".join(answers)}]}}'
    note_answer()
    return Response(body, media_type="application/json")


# An app without the feed (the serving routes mounted alone, in tests) has no recent items.
NO_FRESH = FreshItems(max_users=1, per_user=1, ttl_s=1.0)


def fresh_items(request: Request) -> FreshItems:
    """This process's recent positive items per user (service.serving.fresh)."""
    fresh: FreshItems = getattr(request.app.state, "fresh", NO_FRESH)
    return fresh


def fresh_indices(bundle: ServingBundle, items: Collection[str]) -> np.ndarray:
    """(m,) sorted unique int64 indices of the fresh items the catalogue knows."""
    if not items:
        return NO_ITEMS
    lookup = bundle.item_index
    known = sorted({i for i in map(lookup, items) if i is not None})
    return np.array(known, dtype=np.int64) if known else NO_ITEMS
