"""Reading exposure back: per served model, the window's 60 bucket hashes and item strings
and the since-epoch ones, in one pipeline, summed in numpy (for the route and /metrics).

That reads 61 x n_items x 4 bytes per model (1.6k items: 0.4 MB; 100k: 24 MB, ~20 ms).
The offline figure next to each group's live share is the group's exposure_share@20 in the
model's quality report (report.json in its model directory), read once per model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.core import keys
from service.core.artifacts import ArtifactError, ArtifactStore
from service.core.records import HEADLINE_K, NotFoundError
from service.serving.exposure.counts import (
    BUCKET_S,
    WINDOW_S,
    Counts,
    decode_items,
    scope_figures,
    window_buckets,
)
from service.serving.schemas import ExposureModel, ExposureReport
from training.errors import DataError
from training.manifest import read_report

if TYPE_CHECKING:
    import redis

    from service.core.registry import Registry
    from service.serving.served_model import ServedModel

logger = logging.getLogger(__name__)


def offline_group_shares(
    registry: Registry, store: ArtifactStore, model_id: str
) -> list[float | None] | None:
    """Per popularity group, exposure_share@20 of the model's quality report (its directory
    resolved through the artifact store: fetched into this host's cache for a store URL);
    None when the model is not registered or has no readable report."""
    try:
        record = registry.get_model(model_id)
        report = read_report(store.resolve(record.path))
    except (NotFoundError, FileNotFoundError, DataError, ArtifactError) as exc:
        logger.info("exposure: no offline report for model %s (%s)", model_id, exc)
        return None
    return [row.value(f"exposure_share@{HEADLINE_K}") for row in report.groups]


@dataclass
class ExposureReader:
    """Reads the summed counts of the served models from Redis (module doc).

    Args:
        redis_client: a client without decode_responses.
        offline: model id -> the per-group exposure_share@20 of its offline report, or None
            (no report); called once per model, the answer is cached.
    """

    redis: redis.Redis
    offline: Callable[[str], list[float | None] | None]
    clock: Callable[[], float] = time.time
    _offline_cache: dict[str, list[float | None] | None] = field(default_factory=dict)

    def offline_shares(self, model_id: str) -> list[float | None] | None:
        if model_id not in self._offline_cache:
            if len(self._offline_cache) > 256:  # models come and go; keep the cache small
                self._offline_cache.clear()
            self._offline_cache[model_id] = self.offline(model_id)
        return self._offline_cache[model_id]

    def report(self, models: Sequence[ServedModel], *, counting: bool) -> ExposureReport:
        """The exposure of `models` (the served ones, arms first) in the window and since
        their epoch began."""
        buckets = window_buckets(self.clock())
        pipe = self.redis.pipeline(transaction=False)
        for served in models:
            key = served.tally.key
            for b in buckets:
                pipe.hgetall(keys.exposure_bucket(key, b))
            pipe.hgetall(keys.exposure_total(key))
            pipe.mget(
                [keys.exposure_bucket_items(key, b) for b in buckets] + [keys.exposure_items(key)]
            )
        replies = pipe.execute()
        out = []
        per_model = len(buckets) + 2
        for m, served in enumerate(models):
            bundle = served.bundle
            part = replies[m * per_model : (m + 1) * per_model]
            hashes, total_hash, blobs = part[: len(buckets)], part[len(buckets)], part[-1]
            window = Counts.zero(bundle.n_groups)
            for raw in hashes:
                window.add(Counts.from_hash(raw, bundle.n_groups))
            window.items = decode_items(blobs[:-1], bundle.n_items)
            since = Counts.from_hash(total_hash, bundle.n_groups)
            since.items = decode_items(blobs[-1:], bundle.n_items)
            offline = self.offline_shares(served.model_id)
            entry = ExposureModel(
                model_id=served.model_id,
                role=served.role,
                weight=served.weight,
                since=served.tally.since,
                window=scope_figures(window, bundle.n_items, offline),
                since_publish=scope_figures(since, bundle.n_items, offline),
            )
            out.append(entry)
        return ExposureReport(window_s=WINDOW_S, bucket_s=BUCKET_S, counting=counting, models=out)
