"""The outcomes report's response models (GET /v1/serving/outcomes)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RATE_DOC = "per 1,000 exposures, with its Wilson 95 % interval; null where nothing was shown"


class OutcomeRate(BaseModel):
    per_1000: float | None = Field(description="events per 1,000 exposures")
    low: float | None = Field(description="the Wilson 95 % interval's lower end, per 1,000")
    high: float | None = Field(description="its upper end, per 1,000")


class OutcomeGroup(BaseModel):
    group: int = Field(description="popularity group of the items, 0 = head ... G-1 = tail")
    exposures: int = Field(description="slots of this group shown")
    clicks: int
    purchases: int
    click_rate: OutcomeRate = Field(description="clicks " + RATE_DOC)
    purchase_rate: OutcomeRate = Field(description="purchases " + RATE_DOC)


class OutcomeScope(BaseModel):
    exposures: int = Field(description="items shown (the exposure counts' slots)")
    requests: int = Field(description="answers (lists) shown")
    views: int
    clicks: int
    purchases: int
    click_rate: OutcomeRate = Field(description="clicks " + RATE_DOC)
    purchase_rate: OutcomeRate = Field(description="purchases " + RATE_DOC)
    tail_click_share: float | None = Field(
        description="clicks on items of groups 1 .. G-1 / all clicks; null without clicks"
    )
    groups: list[OutcomeGroup]
    clicks_by_position: dict[str, int] = Field(
        description="clicks by the item's position in its list (1 = first): 1, 2, 3, 4-5, "
        "6-10, 11-20, 21+"
    )


class OutcomeModel(BaseModel):
    model_id: str
    role: Literal["active", "arm"]
    weight: float | None = Field(description="the arm's share of users; null for the active model")
    since: str = Field(description="when the model's serving epoch began (publish or experiment)")
    window: OutcomeScope = Field(description="the 10-s buckets begun in the last 600 s")
    since_publish: OutcomeScope


class ArmTest(BaseModel):
    method: str = Field(description="the test: mSPRT with a normal mixture (Johari et al. 2017)")
    arm_a: str = Field(description="the first arm's model id")
    arm_b: str = Field(description="the second arm's model id")
    span: Literal["since_publish"] = Field(description="the counts compared")
    mixing_variance: float = Field(
        description="tau^2 of the normal mixture over the difference of the per-exposure click "
        "rates (fixed before the data)"
    )
    alpha: float
    difference_per_1000: float | None = Field(description="B's click rate - A's, per 1,000")
    interval_per_1000: list[float] | None = Field(
        description="the always-valid (1 - alpha) confidence interval of the difference, per "
        "1,000, at this look"
    )
    p_value: float = Field(
        description="the always-valid p-value: the smallest 1 / Lambda of any look so far"
    )
    decided: bool = Field(description="p_value <= alpha: the arms' click rates differ")
    better: str | None = Field(description="the arm with the higher click rate once decided")


class Unattributed(BaseModel):
    window: dict[str, int] = Field(description="by reason, in the window")
    total: dict[str, int] = Field(description="by reason, since the counters began (30 days)")


class OutcomesReport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "window_s": 600,
                    "bucket_s": 10,
                    "models": [
                        {
                            "model_id": "student-unkd-4e1f",
                            "role": "arm",
                            "weight": 0.5,
                            "since": "2026-12-01T09:30:00+00:00",
                            "window": {
                                "exposures": 24000,
                                "requests": 1200,
                                "views": 0,
                                "clicks": 312,
                                "purchases": 21,
                                "click_rate": {"per_1000": 13.0, "low": 11.65, "high": 14.5},
                                "purchase_rate": {"per_1000": 0.875, "low": 0.57, "high": 1.34},
                                "tail_click_share": 0.41,
                                "groups": [
                                    {
                                        "group": 0,
                                        "exposures": 7440,
                                        "clicks": 184,
                                        "purchases": 13,
                                        "click_rate": {"per_1000": 24.7, "low": 21.4, "high": 28.5},
                                        "purchase_rate": {
                                            "per_1000": 1.75,
                                            "low": 1.02,
                                            "high": 2.99,
                                        },
                                    }
                                ],
                                "clicks_by_position": {"1": 80, "2": 51, "3": 40, "4-5": 52},
                            },
                            "since_publish": {"...": "the same shape"},
                        }
                    ],
                    "test": {
                        "method": "mSPRT, normal mixture (Johari et al. 2017): always-valid p-value",
                        "arm_a": "student-unkd-4e1f",
                        "arm_b": "student-rd-77a0",
                        "span": "since_publish",
                        "mixing_variance": 4e-06,
                        "alpha": 0.05,
                        "difference_per_1000": -2.1,
                        "interval_per_1000": [-4.0, -0.2],
                        "p_value": 0.012,
                        "decided": True,
                        "better": "student-unkd-4e1f",
                    },
                    "unattributed": {
                        "window": {"no_rec_id": 40},
                        "total": {"no_rec_id": 913, "unknown_rec_id": 7},
                    },
                }
            ]
        }
    )

    window_s: int
    bucket_s: int
    models: list[OutcomeModel] = Field(
        description="the served models: an experiment's arms, then the active model unless it "
        "is an arm; empty while nothing is served"
    )
    test: ArmTest | None = Field(
        description="the comparison of the click rates of an experiment's two arms; null "
        "without an experiment of exactly two arms"
    )
    unattributed: Unattributed = Field(
        description="events no answer explains: no_rec_id, unknown_rec_id (no record: never "
        "answered, expired after an hour, or not flushed within the wait), item_not_shown"
    )
