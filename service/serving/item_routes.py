"""Items like this one: GET /v1/items/{item_id}/similar from the served student's item embeddings.

Similarity is the cosine of item embeddings, not their inner product. The inner product
with item j ranks items as a user whose vector is q_j would see them, so items with large
norms come first whatever j is: in an MF student the norm grows with popularity, and the
same few head items would be "similar" to everything. The cosine keeps only direction,
and only of the learned columns: a student's head-shift column (service/serving/cosine.py)
would make every head item like every other.
The bundle builds a unit-norm copy of the item vectors and an exact inner-product index
over it on the first request (one more n_items x d float32 array); the item itself is
never in its answer, and the filters work as on the recommendation routes. During an A/B
experiment the active model answers (`model` may name an arm); these lists are not counted
as live exposure (service/serving/exposure/).

Item ids are any text, "/" included (service/serving/paths.py):
`/v1/items/a/b/similar` asks about item "a/b".
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii

import numpy as np
from fastapi import APIRouter, Query, Request, Response

from service.core.records import NotFoundError
from service.serving.answers import (
    ERRORS,
    ExcludeQuery,
    GroupsQuery,
    IncludeQuery,
    check_k,
    request_filters,
    serving_bundle,
    settings_of,
)
from service.serving.lean_route import ScalarQueryRoute
from service.serving.paths import ext_id
from service.serving.schemas import MODEL_DOC, SimilarItems

router = APIRouter(tags=["items"])


async def similar_items(
    request: Request,
    item_id: str,
    k: int = Query(20, description="items to return, 1 .. settings.max_k"),
    model: str | None = Query(None, description=MODEL_DOC),
    exclude: ExcludeQuery = None,
    include: IncludeQuery = None,
    groups: GroupsQuery = None,
) -> Response:
    """The k items most similar to one item (cosine of the student's item embeddings)."""
    check_k(k, settings_of(request).max_k, ["query", "k"])
    bundle = serving_bundle(request, model)
    filters = request_filters(bundle, "query", exclude, include, groups)
    idx = bundle.item_index(item_id)
    if idx is None:
        raise NotFoundError("item_id", item_id, f"item in model {bundle.model_id}")
    query = filters.query(item=idx, also_banned=np.array([idx], dtype=np.int64))
    scores, items = await bundle.recommend_one_async(-1, k, False, query)
    unknown = f',"unknown_items":{json.dumps(filters.unknown)}' if filters.unknown else ""
    body = (
        f'{{"item_id":{encode_basestring_ascii(item_id)},'
        f'"model_id":{encode_basestring_ascii(bundle.model_id)}{unknown},'
        f'"items":{bundle.items_json(scores, items)}}}'
    )
    return Response(body, media_type="application/json")


router.add_api_route(
    f"/v1/items/{ext_id('item_id')}/similar",
    similar_items,
    methods=["GET"],
    response_model=SimilarItems,
    responses={**ERRORS, 404: {"description": "unknown item id"}},
    summary="Items similar to one item",
    route_class_override=ScalarQueryRoute,
)
