"""Request and response models of the serving endpoints (recommendations, similar items,
serving status).

The recommendation routes answer with pre-serialised JSON of exactly these shapes (see
service/serving/routes.py); the models document them in OpenAPI and validate
batch requests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FALLBACKS = ("popular", "debiased")
Fallback = Literal["popular", "debiased"]

EXCLUDE_DOC = (
    "item ids never to return, besides the seen items; ids the served catalogue does not "
    "know are ignored and listed in `unknown_items`"
)
INCLUDE_DOC = (
    "allow-list: return only these item ids; unknown ids are listed in `unknown_items`, "
    "and a list with no known id is refused (422)"
)
GROUPS_DOC = "popularity groups allowed, 0 = head .. G-1 = tail (the `group` field of an answer item)"


class RecommendedItem(BaseModel):
    item_id: str = Field(description="external item id")
    score: float = Field(
        description="the model's score: inner product of user and item embeddings; cosine for "
        "similar items; the item's share of training interactions in a fallback answer"
    )
    group: int = Field(description="popularity group of the item, 0 = head ... G-1 = tail")


class Recommendations(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": "42", "model_id": "student-unkd-4e1f",
        "items": [{"item_id": "i17", "group": 2, "score": 3.21}, {"item_id": "i5", "group": 0, "score": 3.02}],
    }]})  # fmt: skip

    user_id: str | None = Field(description="the user asked for; null for an answer from a history")
    model_id: str = Field(description="the published model that answered")
    items: list[RecommendedItem] = Field(
        description="best first (equal scores: the item listed first in the catalogue first); k "
        "items whenever k qualify, fewer only when fewer pass the filters and the seen items"
    )
    fallback: Fallback | None = Field(
        default=None, description="present only when an unknown user was answered by a fallback list"
    )
    unknown_items: dict[str, list[str]] | None = Field(
        default=None,
        description="present only when the request named item ids the served catalogue does not "
        "know: field name (`exclude`, `include`, `items`) -> those ids, which were ignored",
    )


class FilterFields(BaseModel):
    """The business filters of the JSON requests (the GETs take them as repeated query parameters)."""

    exclude: list[str] | None = Field(default=None, description=EXCLUDE_DOC, examples=[["i3", "i8"]])
    include: list[str] | None = Field(default=None, min_length=1, description=INCLUDE_DOC, examples=[["i1", "i2", "i5"]])
    groups: list[int] | None = Field(default=None, min_length=1, description=GROUPS_DOC, examples=[[2, 3]])


class RecommendationsBatchRequest(FilterFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"user_ids": ["1", "2"], "k": 10},
        {"user_ids": ["1", "2"], "k": 10, "exclude": ["i3"], "groups": [2, 3]},
    ]})  # fmt: skip

    user_ids: list[str] = Field(min_length=1, description="external user ids; at most settings.max_batch_users")
    k: int = Field(20, description="items per user, 1 .. settings.max_k")
    exclude_seen: bool = Field(True, description="leave out each user's training items")
    model: str | None = Field(default=None, description="answer only if this model is the one being served")


class RecommendationsBatch(BaseModel):
    model_id: str
    results: list[Recommendations] = Field(description="one entry per requested user, in request order")
    unknown_items: dict[str, list[str]] | None = Field(
        default=None, description="present only when a filter named ids the catalogue does not know"
    )


class HistoryRequest(FilterFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"items": ["i1", "i2", "i9"], "k": 20, "exclude_seen": True},
        {"items": ["i1", "i2", "i9"], "k": 10, "include": ["i4", "i5", "i6", "i7"]},
    ]})  # fmt: skip

    items: list[str] = Field(
        min_length=1,
        description="the visitor's history: item ids they interacted with. Unknown ids are "
        "ignored and listed in `unknown_items`; a history with no known id is refused (422)",
    )
    k: int = Field(20, description="items to return, 1 .. settings.max_k")
    exclude_seen: bool = Field(True, description="leave out the history's items")
    model: str | None = Field(default=None, description="answer only if this model is the one being served")


class SimilarItems(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "item_id": "i17", "model_id": "student-unkd-4e1f",
        "items": [{"item_id": "i21", "group": 1, "score": 0.97}, {"item_id": "i4", "group": 3, "score": 0.95}],
    }]})  # fmt: skip

    item_id: str = Field(description="the item asked about (never in its own answer)")
    model_id: str = Field(description="the published model that answered")
    items: list[RecommendedItem] = Field(
        description="most similar first, by cosine of the student's item embeddings (equal "
        "scores: the item listed first in the catalogue first)"
    )
    unknown_items: dict[str, list[str]] | None = Field(
        default=None, description="present only when a filter named ids the catalogue does not know"
    )


class ServingStatus(BaseModel):
    ready: bool = Field(description="a bundle is loaded and answering")
    model_id: str | None = None
    index_type: str | None = Field(default=None, description="FAISS factory string: Flat (exact), IVF…, HNSW…")
    exact: bool | None = None
    metric: str | None = None
    dim: int | None = None
    n_items: int | None = None
    n_users: int | None = None
    published_at: str | None = None
    loaded_at: datetime | None = None
    bundle_created_at: str | None = None
