"""Settings for one test (or one suite's session) with queues no other test consumes."""

from __future__ import annotations

import uuid
from typing import Any

from service.core.config import Settings


def make_test_settings(prefix: str = "test", **values: Any) -> Settings:
    """Settings from `values`, with train/light queues named `<prefix>-<8 hex>-train|light`.

    A unique name per call keeps a worker of one test (or of a session) from taking
    another's messages, even where two share a Redis database. Values override the names.
    """
    queue = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return Settings(**{"train_queue": f"{queue}-train", "light_queue": f"{queue}-light", **values})
