"""Pipelines: a saved recipe that retrains, distils, gates and publishes, and its runs.

A recipe (`PipelineRecipe`, PUT /v1/pipelines/{name}) names a dataset, a teacher job body
without dataset_id, an optional distill job body without teacher_id, a gate policy, what to
do when the gate passes (`on_pass`) and its triggers (`schedule` cron, `every_s`,
`min_new_events`). Each run (`PipelineRun`) builds a dataset version from the events that
arrived since the last one (service.core.versions, split by the recipe's `version_split`:
"temporal" holds each user's newest rows out, "append" keeps the parent's split and trains
on every new pair, which is what a retrain on feedback needs), trains the teacher on it, distils the
student, checks the gate and publishes; worker/pipeline_runs.py runs it as one task, and
worker/pipeline_tick.py decides when. The records live in Redis (pipelines_store.py).

The job bodies reuse training.config's models, so a recipe is validated exactly as the
jobs it submits are, and a bad field is a 422 naming `teacher.<field>` or `distill.<field>`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from celery.schedules import crontab
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.core.records import GateCheck, GatePolicy, utcnow
from service.core.versions import VersionSplit
from training.config import DistillConfig, TeacherConfig, TuneOptions

PipelineName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
RunStatus = Literal["queued", "running", "skipped", "succeeded", "refused", "failed"]
RUN_STATUSES: tuple[str, ...] = ("queued", "running", "skipped", "succeeded", "refused", "failed")
RUN_ENDED: frozenset[str] = frozenset({"skipped", "succeeded", "refused", "failed"})
Trigger = Literal["manual", "schedule", "events"]
OnPass = Literal["stage", "experiment", "activate"]
# Teachers whose model can be served itself (embeddings); EASE has none.
SERVABLE_TEACHERS = frozenset({"als", "mf", "lightgcn"})


class TeacherSpec(TeacherConfig):
    """A teacher job body without dataset_id: TeacherConfig's fields and `tune`."""

    tune: TuneOptions | None = Field(None, description="tune on the validation split")


class DistillSpec(DistillConfig):
    """A distill job body without teacher_id: DistillConfig's fields and `tune`."""

    tune: TuneOptions | None = Field(None, description="tune on the validation split")


def parse_cron(expr: str) -> crontab:
    """A five-field cron expression (minute hour day-of-month month day-of-week), in UTC."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expr!r}: a cron expression has 5 fields (minute hour day month weekday)"
        )
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except Exception as exc:  # celery raises ValueError and its own ParseException
        raise ValueError(f"{expr!r}: {exc}") from exc


RECIPE_EXAMPLE: dict[str, Any] = {
    "dataset_id": "ds-1a2b3c4d5e6f",
    "teacher": {"model": "als", "dim": 64, "epochs": 15},
    "distill": {"method": "unkd", "dim": 32, "epochs": 20},
    "gate": {"max_head_share_ratio": 1.0, "min_ndcg_ratio": 0.9},
    "on_pass": {"action": "experiment", "share": 0.1},
    "schedule": "0 3 * * *",
    "min_new_events": 1000,
    "version_split": "append",
}


class PipelineRecipe(BaseModel):
    """What a run does and when. PUT /v1/pipelines/{name}'s body, less `name`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [RECIPE_EXAMPLE]})

    dataset_id: str = Field(min_length=1, max_length=128, description="the lineage's dataset")
    teacher: TeacherSpec
    distill: DistillSpec | None = Field(
        None, description="absent: the teacher itself is gated and published (ALS, MF, LightGCN)"
    )
    gate: GatePolicy | None = Field(None, description="absent: the service's policy at run time")
    on_pass: OnPass = Field(
        "activate",
        description="stage: bundle built, not served; experiment: staged and served to `share` "
        "of users beside the active model; activate: served to everyone",
    )
    share: float | None = Field(
        None, gt=0, lt=1, description="with on_pass experiment: the new model's share of users"
    )
    schedule: str | None = Field(
        None, description="cron, 5 fields, UTC (e.g. '0 3 * * *'); a run per slot"
    )
    every_s: int | None = Field(None, ge=1, le=366 * 86400, description="a run every N seconds")
    min_new_events: int = Field(
        1,
        ge=0,
        le=10**9,
        description="positive events a run needs since the last version (fewer: skipped); "
        "without a schedule, reaching it starts a run",
    )
    version_split: VersionSplit = Field(
        "temporal",
        description="the split of the versions its runs build: temporal (each user's newest "
        "rows held out: judged on what came last) or append (the parent's split kept, every "
        "new pair in train: a retrain learns from every event, on a fixed test set)",
    )

    @model_validator(mode="before")
    @classmethod
    def _on_pass_object(cls, data: Any) -> Any:
        """on_pass may also be {"action": "experiment", "share": 0.2}."""
        if isinstance(data, dict) and isinstance(data.get("on_pass"), dict):
            on_pass = dict(data["on_pass"])
            data = {**data, "on_pass": on_pass.pop("action", "activate")}
            if "share" in on_pass:
                data["share"] = on_pass.pop("share")
            if on_pass:
                raise ValueError(f"on_pass: unknown fields {sorted(on_pass)}")
        return data

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cron(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineRecipe:
        if self.on_pass == "experiment" and self.share is None:
            raise ValueError('share: required with on_pass "experiment" (0 < share < 1)')
        if self.on_pass != "experiment" and self.share is not None:
            raise ValueError('share: only with on_pass "experiment"')
        if self.schedule is not None and self.every_s is not None:
            raise ValueError("every_s: give a schedule or every_s, not both")
        return self

    @property
    def scheduled(self) -> bool:
        return self.schedule is not None or self.every_s is not None

    def teacher_servable_check(self) -> None:
        """A recipe without distill serves its teacher: only one with embeddings can be."""
        if self.distill is None and self.teacher.model not in SERVABLE_TEACHERS:
            raise ValueError(
                f"distill: required with a {self.teacher.model} teacher, which has no embeddings "
                f"to serve; add a distill body or use a teacher in {sorted(SERVABLE_TEACHERS)}"
            )


class Pipeline(PipelineRecipe):
    """A stored recipe: the recipe with its name and when it was created and last replaced."""

    name: str
    key_name: str | None = Field(None, description="the API key that saved it (its publishes)")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Published(BaseModel):
    model_id: str
    action: OnPass
    experiment_share: float | None = None


class PipelineRun(BaseModel):
    """One run of a pipeline, from queued to its end (RUN_ENDED)."""

    run_id: str
    pipeline: str
    trigger: Trigger
    status: RunStatus = "queued"
    reason: str | None = None
    dataset_version: str | None = None
    new_events: int | None = None
    teacher_job: str | None = None
    distill_job: str | None = None
    publish_job: str | None = None
    teacher_id: str | None = None
    student_id: str | None = None
    gate: list[GateCheck] = Field(default_factory=list)
    published: Published | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    min_new_events: int | None = Field(None, description="a manual run's override")
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status in RUN_ENDED


# -- when a schedule is due ---------------------------------------------------------------------


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def due_slot(recipe: PipelineRecipe, fired: float, now: float) -> int | None:
    """The slot (epoch seconds) a scheduled pipeline should run for now, or None.

    Args:
        fired: the last slot claimed (or, before the first, when the recipe was saved).
        now: the current time.
    Slots missed while no scheduler ran are not caught up: one run, for the newest slot.
    """
    if recipe.every_s is not None:
        slot = math.floor(now / recipe.every_s) * recipe.every_s
        return int(slot) if slot > fired else None
    if recipe.schedule is not None:
        cron = parse_cron(recipe.schedule)
        nxt = next_cron_time(cron, _utc(fired))
        if nxt.timestamp() > now:
            return None
        while True:  # the newest slot at or before now
            after = next_cron_time(cron, nxt)
            if after.timestamp() > now:
                return int(nxt.timestamp())
            nxt = after
    return None


def next_cron_time(cron: crontab, after: datetime) -> datetime:
    """The first minute strictly after `after` that `cron` fires (UTC; day of month and day
    of week must both match, as celery's crontab reads them)."""
    t = after.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    hours, minutes = sorted(cron.hour), sorted(cron.minute)
    for _ in range(5 * 366):  # day by day: a date that exists matches within 4 years
        if (
            t.month in cron.month_of_year
            and t.day in cron.day_of_month
            and t.isoweekday() % 7 in cron.day_of_week  # crontab: 0 is Sunday
        ):
            for h in hours:
                for m in minutes:
                    if (h, m) >= (t.hour, t.minute):
                        return t.replace(hour=h, minute=m)
        t = (t + timedelta(days=1)).replace(hour=0, minute=0)
    raise ValueError(f"cron {cron} never fires")
