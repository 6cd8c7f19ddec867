"""Progress events emitted by training loops; the worker turns them into job status."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field


class ProgressEvent(BaseModel):
    stage: str = Field(description="what is running: 'prepare', 'candidates', 'train', 'evaluate'")
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    elapsed_s: float = 0.0
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]
ShouldStop = Callable[[], bool]
