"""Request and response models of the serving endpoints (recommendations, similar items,
serving status, live exposure, experiments).

The recommendation routes answer with pre-serialised JSON of exactly these shapes (see
service/serving/routes.py); the models document them in OpenAPI and validate
batch requests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The stored experiment is a registry record (the routes answer with it as it is).
from service.core.records import Experiment, ExperimentArm

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
MODEL_DOC = (
    "answer from this model, which must be served: the active model or an arm of the running experiment "
    "(whatever a user's arm); 409 otherwise"
)
GROUPS_DOC = (
    "popularity groups allowed, 0 = head .. G-1 = tail (the `group` field of an answer item)"
)


class RecommendedItem(BaseModel):
    item_id: str = Field(description="external item id")
    score: float = Field(
        description="the model's score: inner product of user and item embeddings; cosine for "
        "similar items; the item's share of training interactions in a fallback answer"
    )
    group: int = Field(description="popularity group of the item, 0 = head ... G-1 = tail")


Source = Literal["model", "history", "fallback"]


class Recommendations(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rec_id": "3f9a0c41d27e",
                    "user_id": "42",
                    "model_id": "student-unkd-4e1f",
                    "source": "model",
                    "items": [
                        {"item_id": "i17", "group": 2, "score": 3.21},
                        {"item_id": "i5", "group": 0, "score": 3.02},
                    ],
                },
                {
                    "rec_id": "b71e09a4c3d2",
                    "user_id": "visitor-7",
                    "model_id": "student-unkd-4e1f",
                    "source": "history",
                    "items": [{"item_id": "i4", "group": 1, "score": 0.88}],
                },
            ]
        }
    )

    rec_id: str = Field(
        description="this answer's id (12 hex digits; a batch's, in each result): cite it as an "
        "event's rec_id to attribute the event to the model, position and group that showed "
        "the item (GET /v1/serving/outcomes)"
    )
    user_id: str | None = Field(description="the user asked for; null for an answer from a history")
    model_id: str = Field(description="the published model that answered")
    source: Source = Field(
        default="model",
        description="what the answer was computed from: `model` (the user's trained vector), "
        "`history` (an item history folded in: by-history, or a user the model does not know "
        "with recent positive events, POST /v1/events) or `fallback` (a popularity list)",
    )
    items: list[RecommendedItem] = Field(
        description="best first (equal scores: the item listed first in the catalogue first); k "
        "items whenever k qualify, fewer only when fewer pass the filters and the seen items"
    )
    fallback: Fallback | None = Field(
        default=None,
        description="present only when an unknown user was answered by a fallback list",
    )
    unknown_items: dict[str, list[str]] | None = Field(
        default=None,
        description="present only when the request named item ids the served catalogue does not "
        "know: field name (`exclude`, `include`, `items`) -> those ids, which were ignored",
    )


class FilterFields(BaseModel):
    """The business filters of the JSON requests (the GETs take them as repeated query parameters)."""

    exclude: list[str] | None = Field(
        default=None, description=EXCLUDE_DOC, examples=[["i3", "i8"]]
    )
    include: list[str] | None = Field(
        default=None, min_length=1, description=INCLUDE_DOC, examples=[["i1", "i2", "i5"]]
    )
    groups: list[int] | None = Field(
        default=None, min_length=1, description=GROUPS_DOC, examples=[[2, 3]]
    )


class RecommendationsBatchRequest(FilterFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_ids": ["1", "2"], "k": 10},
                {"user_ids": ["1", "2"], "k": 10, "exclude": ["i3"], "groups": [2, 3]},
            ]
        },
    )

    user_ids: list[str] = Field(
        min_length=1, description="external user ids; at most settings.max_batch_users"
    )
    k: int = Field(20, description="items per user, 1 .. settings.max_k")
    exclude_seen: bool = Field(
        True,
        description="leave out each user's training items and the items of their recent "
        "positive events (POST /v1/events)",
    )
    model: str | None = Field(default=None, description=MODEL_DOC)


class RecommendationsBatch(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rec_id": "5c20d8e1f93a",
                    "model_id": "student-unkd-4e1f",
                    "results": [
                        {
                            "rec_id": "5c20d8e1f93a",
                            "user_id": "42",
                            "model_id": "student-unkd-4e1f",
                            "source": "model",
                            "items": [{"item_id": "i17", "group": 2, "score": 3.21}],
                        },
                        {
                            "rec_id": "5c20d8e1f93a",
                            "user_id": "visitor-7",
                            "model_id": "student-unkd-4e1f",
                            "source": "history",
                            "items": [{"item_id": "i4", "group": 1, "score": 0.88}],
                        },
                    ],
                }
            ]
        }
    )

    rec_id: str = Field(description="the answer's id, the same in every result (Recommendations)")
    model_id: str | None = Field(
        description="the model that answered every user; null when an experiment's arms answered "
        "different users (each result names its own model)"
    )
    results: list[Recommendations] = Field(
        description="one entry per requested user, in request order"
    )
    unknown_items: dict[str, list[str]] | None = Field(
        default=None, description="present only when a filter named ids the catalogue does not know"
    )


class HistoryRequest(FilterFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"items": ["i1", "i2", "i9"], "k": 20, "exclude_seen": True},
                {"items": ["i1", "i2", "i9"], "k": 10, "include": ["i4", "i5", "i6", "i7"]},
            ]
        },
    )

    items: list[str] = Field(
        min_length=1,
        description="the visitor's history: item ids they interacted with. Unknown ids are "
        "ignored and listed in `unknown_items`; a history with no known id is refused (422)",
    )
    k: int = Field(20, description="items to return, 1 .. settings.max_k")
    exclude_seen: bool = Field(True, description="leave out the history's items")
    model: str | None = Field(default=None, description=MODEL_DOC)


class SimilarItems(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "item_id": "i17",
                    "model_id": "student-unkd-4e1f",
                    "items": [
                        {"item_id": "i21", "group": 1, "score": 0.97},
                        {"item_id": "i4", "group": 3, "score": 0.95},
                    ],
                }
            ]
        }
    )

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
    index_type: str | None = Field(
        default=None, description="FAISS factory string: Flat (exact), IVF…, HNSW…"
    )
    exact: bool | None = None
    metric: str | None = None
    dim: int | None = None
    n_items: int | None = None
    n_users: int | None = None
    published_at: str | None = None
    loaded_at: datetime | None = None
    bundle_created_at: str | None = None


# -- live exposure (service.serving.exposure) ------------------------------------------------


class ExposureGroup(BaseModel):
    group: int = Field(description="popularity group, 0 = head .. G-1 = tail")
    share: float | None = Field(
        description="the group's share of the slots shown; null when nothing was shown"
    )
    offline_share: float | None = Field(
        description="the group's exposure_share@20 in the model's offline quality report; null without one"
    )


class ExposureLatency(BaseModel):
    p50: float | None = Field(
        description="median latency of the answers counted, ms (histogram, within 6 %)"
    )
    p99: float | None = Field(description="99th percentile latency of the answers counted, ms")


class ExposureScope(BaseModel):
    requests: int = Field(
        description="answers counted: one per user list (a batch of n users counts n)"
    )
    slots: int = Field(description="items shown (filled slots) in those answers")
    head_share: float | None = Field(description="share of the slots given to group 0 (the head)")
    arp: float | None = Field(
        description="average recommendation popularity: mean over answers of the mean training "
        "interactions of their items"
    )
    coverage: float | None = Field(description="distinct items shown / items in the catalogue")
    gini: float | None = Field(
        description="Gini index of the items' counts (0 = even, toward 1 = concentrated)"
    )
    distinct_items: int = Field(description="distinct items shown")
    groups: list[ExposureGroup]
    latency_ms: ExposureLatency


class ExposureModel(BaseModel):
    model_id: str
    role: Literal["active", "arm"] = Field(
        description="the published model, or an arm of the running experiment"
    )
    weight: float | None = Field(description="the arm's share of users; null for the active model")
    since: str = Field(
        description="when its counts began: its publish time, or its experiment's start"
    )
    window: ExposureScope = Field(description="the last 10 minutes (to the 10-second bucket)")
    since_publish: ExposureScope = Field(description="since `since`")


class ExposureReport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "window_s": 600,
                    "bucket_s": 10,
                    "counting": True,
                    "models": [
                        {
                            "model_id": "student-unkd-4e1f",
                            "role": "active",
                            "weight": None,
                            "since": "2026-12-01T09:30:00Z",
                            "window": {
                                "requests": 1200,
                                "slots": 24000,
                                "head_share": 0.31,
                                "arp": 212.4,
                                "coverage": 0.42,
                                "gini": 0.61,
                                "distinct_items": 672,
                                "groups": [
                                    {"group": 0, "share": 0.31, "offline_share": 0.29},
                                    {"group": 1, "share": 0.27, "offline_share": 0.27},
                                    {"group": 2, "share": 0.23, "offline_share": 0.24},
                                    {"group": 3, "share": 0.19, "offline_share": 0.2},
                                ],
                                "latency_ms": {"p50": 1.1, "p99": 4.5},
                            },
                            "since_publish": {
                                "requests": 5400,
                                "slots": 108000,
                                "head_share": 0.3,
                                "arp": 208.0,
                                "coverage": 0.66,
                                "gini": 0.58,
                                "distinct_items": 1056,
                                "groups": [
                                    {"group": 0, "share": 0.3, "offline_share": 0.29},
                                    {"group": 1, "share": 0.27, "offline_share": 0.27},
                                    {"group": 2, "share": 0.23, "offline_share": 0.24},
                                    {"group": 3, "share": 0.2, "offline_share": 0.2},
                                ],
                                "latency_ms": {"p50": 1.0, "p99": 4.2},
                            },
                        }
                    ],
                }
            ]
        }
    )

    window_s: int = Field(description="length of the sliding window, seconds")
    bucket_s: int = Field(description="the window moves in buckets of this many seconds")
    counting: bool = Field(
        description="whether this API process counts its answers (UNKD_EXPOSURE_COUNTING)"
    )
    models: list[ExposureModel] = Field(
        description="every model served now: the experiment's arms, then "
        "the active model unless it is an arm; empty when none"
    )


# -- experiments (service.serving.experiment) ------------------------------------------------

WEIGHT_TOLERANCE = 1e-6


class ArmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(
        min_length=1, max_length=128, description="a registered model that has been published once"
    )
    weight: float = Field(
        gt=0, le=1, description="share of users served by this arm; the weights sum to 1"
    )


class ExperimentRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "arms": [
                        {"model_id": "student-unkd-4e1f", "weight": 0.5},
                        {"model_id": "student-rd-77a0", "weight": 0.5},
                    ],
                    "salt": "unkd-vs-rd-december",
                },
                {
                    "arms": [
                        {"model_id": "student-unkd-4e1f", "weight": 0.9},
                        {"model_id": "student-none-0c2b", "weight": 0.1},
                    ]
                },
            ]
        },
    )

    arms: list[ArmRequest] = Field(
        min_length=2, max_length=16, description="at least 2 arms, distinct models"
    )
    salt: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="mixed into the user hash: a new salt reshuffles users between arms; random when left out",
    )

    @field_validator("arms")
    @classmethod
    def _weights_and_ids(cls, arms: list[ArmRequest]) -> list[ArmRequest]:
        total = sum(a.weight for a in arms)
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(
                f"the arms' weights must sum to 1 (within {WEIGHT_TOLERANCE:g}); they sum to {total:.9g}"
            )
        ids = [a.model_id for a in arms]
        twice = sorted({m for m in ids if ids.count(m) > 1})
        if twice:
            raise ValueError(
                f"each arm must be a different model; {', '.join(map(repr, twice))} is named twice"
            )
        return arms


class ExperimentState(BaseModel):
    """The answer of GET /v1/serving/experiment: `running` false and the other fields null when
    no experiment runs (a 200, so a page can poll it), else the running experiment's fields."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "running": False,
                    "arms": None,
                    "salt": None,
                    "started_at": None,
                    "started_by": None,
                },
                {
                    "running": True,
                    "arms": [
                        {
                            "model_id": "student-unkd-4e1f",
                            "weight": 0.5,
                            "bundle_dir": "/srv/unkd/bundles/student-unkd-4e1f-9a0b1c2d",
                        },
                        {
                            "model_id": "student-rd-77a0",
                            "weight": 0.5,
                            "bundle_dir": "/srv/unkd/bundles/student-rd-77a0-5e6f7a8b",
                        },
                    ],
                    "salt": "unkd-vs-rd-december",
                    "started_at": "2026-12-01T09:30:00Z",
                    "started_by": "alice",
                },
            ]
        }
    )

    running: bool
    arms: list[ExperimentArm] | None = None
    salt: str | None = None
    started_at: datetime | None = None
    started_by: str | None = None


class EndedExperiment(Experiment):
    """The answer of DELETE /v1/serving/experiment: the experiment that ran, and its end."""

    ended_at: datetime
    ended_by: str | None = Field(
        description="the name of the API key that ended it; null when keys are off"
    )
