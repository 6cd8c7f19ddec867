"""POST /v1/events: what users did after the upload (views, clicks, purchases), in batches.

The whole batch is validated before anything is written: one bad event is a 422 whose
detail locates it (`["body", "events", i, "<field>"]`) and nothing of the batch is kept.
Then one Lua script stores every event whose event_id is new (service/core/events.py) and
the route answers 202 once Redis replied, which, with the stack's append-only file synced on
every write, means the batch is on disk (docs/reliability.md). Users and items the served
model does not know are accepted: they are new, and a user with positive events is answered
from them (service/serving/routes.py, "source": "history").

A plain `def`: redis-py blocks, so the route runs in the threadpool, off the event loop.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import WriteCaller
from service.core.config import EventType
from service.core.events import Event, EventLog, now

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["events"])

MAX_EVENTS_PER_BATCH = 1000
ID_MAX_CHARS = 256


class EventIn(BaseModel):
    """One event as a client sends it."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=ID_MAX_CHARS, examples=["42"])
    item_id: str = Field(min_length=1, max_length=ID_MAX_CHARS, examples=["i17"])
    type: EventType = Field(
        description="view | click | cart | purchase; which count as positive feedback is "
        "UNKD_EVENTS_POSITIVE_TYPES (default click, purchase)",
        examples=["purchase"],
    )
    ts: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="when it happened, seconds since the epoch; absent: the API's clock",
        examples=[1767225600.0],
    )
    rec_id: str | None = Field(
        default=None,
        max_length=ID_MAX_CHARS,
        description="the recommendation this event followed, if any (for outcome attribution)",
    )
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=ID_MAX_CHARS,
        description="the client's id of this event: a repeat of a stored id is dropped, so a "
        "batch may be resent safely; absent: the API makes one (no such protection)",
        examples=["evt-9f2c-0001"],
    )


class EventBatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"user_id": "42", "item_id": "i17", "type": "view"},
                        {
                            "user_id": "42",
                            "item_id": "i17",
                            "type": "purchase",
                            "ts": 1767225600.0,
                            "rec_id": "r-77",
                            "event_id": "evt-9f2c-0001",
                        },
                    ]
                }
            ]
        },
    )

    events: list[EventIn] = Field(
        min_length=1,
        max_length=MAX_EVENTS_PER_BATCH,
        description=f"1 .. {MAX_EVENTS_PER_BATCH} events, stored in this order",
    )


class EventsAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"received": 2, "stored": 2, "duplicates": 0}]}
    )

    received: int = Field(description="events in the batch")
    stored: int = Field(description="events written to the event stream by this request")
    duplicates: int = Field(
        description="events whose event_id was stored before (or earlier in this batch): dropped"
    )


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        401: {"description": "keys are configured and no bearer token was sent"},
        403: {"description": "the key is not accepted, or its role is below write"},
        422: {
            "description": "an event is invalid: the detail's loc is body.events.<index>.<field>"
        },
        503: {"description": "Redis unreachable: nothing is known stored; resend the batch"},
    },
    summary="Record a batch of user events (202 once durable)",
)
def post_events(request: Request, batch: EventBatch, caller: WriteCaller) -> EventsAccepted:
    """Store a batch of events; a repeated event_id is stored once. 202 once Redis has the
    batch (with the stack's Redis: fsynced to its append-only file)."""
    log: EventLog = request.app.state.event_log
    received = now()
    events = [
        Event(
            event_id=e.event_id if e.event_id is not None else uuid.uuid4().hex,
            user_id=e.user_id,
            item_id=e.item_id,
            type=e.type,
            ts=e.ts if e.ts is not None else received,
            rec_id=e.rec_id or "",
        )
        for e in batch.events
    ]
    result = log.append(events)
    counter = request.app.state.metrics.events
    counter.labels(result="stored").inc(result.stored)
    if result.duplicates:
        counter.labels(result="duplicate").inc(result.duplicates)
    return EventsAccepted(received=len(events), stored=result.stored, duplicates=result.duplicates)
