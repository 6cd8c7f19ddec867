"""Request and response models of the serving endpoints (recommendations, serving status).

The recommendation routes answer with pre-serialised JSON of exactly these shapes (see
service/serving/routes.py); the models document them in OpenAPI and validate
batch requests.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class RecommendedItem(BaseModel):
    item_id: str = Field(description="external item id")
    score: float = Field(description="the model's score (inner product of user and item embeddings)")
    group: int = Field(description="popularity group of the item, 0 = head ... G-1 = tail")


class Recommendations(BaseModel):
    user_id: str
    model_id: str = Field(description="the published model that answered")
    items: list[RecommendedItem] = Field(description="best first; fewer than k only when the user has seen almost every item")


class RecommendationsBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[str] = Field(min_length=1, description="external user ids; at most settings.max_batch_users")
    k: int = Field(20, description="items per user, 1 .. settings.max_k")
    exclude_seen: bool = Field(True, description="leave out each user's training items")
    model: str | None = Field(default=None, description="answer only if this model is the one being served")


class RecommendationsBatch(BaseModel):
    model_id: str
    results: list[Recommendations] = Field(description="one entry per requested user, in request order")


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
