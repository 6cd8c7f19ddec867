"""The registry's serving half: the served model's pointer, its publish history, the bundles
staged for experiment arms, and the running A/B experiment.

`Registry` (service/core/registry.py) adds datasets, models and jobs to it; the API process's
IndexStore needs only this half. Records are the typed models of service/core/records.py,
stored as JSON under service/core/keys.py's `unkd:serving:*` keys; every change that other
API processes must follow is published on a channel in the same MULTI (SERVING_EVENTS,
EXPERIMENT_EVENTS), and the message is only a hint: they re-read the keys.
"""

from __future__ import annotations

from typing import Self

import redis
from redis.client import PubSub

from service.core import keys
from service.core.records import (
    ActiveModel,
    ConflictError,
    Experiment,
    PublishEntry,
    ServingState,
    StagedBundle,
)


class ServingRegistry:
    """Typed access to the serving keys through one redis-py client (decode_responses=True)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float | None = None) -> Self:
        """A client for `url`; `timeout_s` bounds connects and replies (a hung Redis then
        raises TimeoutError, which the API answers with 503, instead of hanging a request)."""
        return cls(
            redis.Redis.from_url(
                url,
                decode_responses=True,
                health_check_interval=30,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
            )
        )

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def close(self) -> None:
        self.redis.close()

    # -- the serving pointer -------------------------------------------------------------
    def get_active(self) -> ActiveModel | None:
        raw = self.redis.get(keys.ACTIVE_MODEL)
        return ActiveModel.model_validate_json(raw) if raw is not None else None

    def set_active(self, active: ActiveModel) -> None:
        """Move the pointer and tell every API process, in one MULTI."""
        payload = active.model_dump_json()
        pipe = self.redis.pipeline()
        pipe.set(keys.ACTIVE_MODEL, payload)
        pipe.publish(keys.SERVING_EVENTS, payload)
        pipe.execute()

    def serving_state(self) -> ServingState:
        """The active pointer and the running experiment, in one MGET (the watcher's poll)."""
        active, experiment = (
            v.decode() if isinstance(v, bytes) else v
            for v in self.redis.mget([keys.ACTIVE_MODEL, keys.EXPERIMENT])
        )
        return ServingState(active, experiment)

    def serving_events(self) -> PubSub:
        """A subscription to the hints that the pointer or the experiment changed."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.SERVING_EVENTS, keys.EXPERIMENT_EVENTS)
        return pubsub

    # -- publishing: the history and staged bundles --------------------------------------
    def record_publish(
        self, entry: PublishEntry, *, expect_active: str | None = None
    ) -> PublishEntry:
        """Make `entry`'s model the served one: move the pointer, add the entry to the
        history (with the model it replaces as `previous_model_id`) and tell every API
        process, in one WATCH/MULTI transaction.

        Args:
            expect_active: when given, the model that must still be served (a rollback
                chose its target from it); otherwise ConflictError and nothing changes.
        """

        def txn(pipe: redis.client.Pipeline) -> PublishEntry:
            raw = pipe.get(keys.ACTIVE_MODEL)
            current = ActiveModel.model_validate_json(raw) if raw is not None else None
            current_id = current.model_id if current is not None else None
            if expect_active is not None and current_id != expect_active:
                raise ConflictError(
                    "model_id",
                    entry.model_id,
                    (
                        f"the served model changed meanwhile ({expect_active} -> {current_id}); nothing rolled back"
                    ),
                )
            recorded = entry.model_copy(update={"previous_model_id": current_id})
            pointer = ActiveModel(
                model_id=recorded.model_id,
                bundle_dir=recorded.bundle_dir,
                published_at=recorded.published_at,
            ).model_dump_json()
            pipe.multi()
            pipe.set(keys.ACTIVE_MODEL, pointer)
            pipe.lpush(keys.PUBLISH_HISTORY, recorded.model_dump_json())
            pipe.ltrim(keys.PUBLISH_HISTORY, 0, keys.PUBLISH_HISTORY_MAX - 1)
            pipe.publish(keys.SERVING_EVENTS, pointer)
            return recorded

        result = self.redis.transaction(txn, keys.ACTIVE_MODEL, value_from_callable=True)  # type: ignore[arg-type]
        if not isinstance(result, PublishEntry):
            raise TypeError(
                f"publish of {entry.model_id}: transaction returned {type(result).__name__}"
            )
        return result

    def record_staged(self, staged: StagedBundle) -> StagedBundle:
        """A bundle built without serving it (publish with "activate": false): the model's
        newest staged bundle, for experiment arms. The active pointer and history are untouched."""
        self.redis.hset(keys.STAGED_BUNDLES, staged.model_id, staged.model_dump_json())
        return staged

    def staged_bundle(self, model_id: str) -> StagedBundle | None:
        raw = self.redis.hget(keys.STAGED_BUNDLES, model_id)
        return StagedBundle.model_validate_json(raw) if raw is not None else None

    def publish_history(
        self, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[PublishEntry], int]:
        """Publishes and rollbacks, newest first."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(keys.PUBLISH_HISTORY, offset, offset + limit - 1)
        pipe.llen(keys.PUBLISH_HISTORY)
        raws, total = pipe.execute()
        return [PublishEntry.model_validate_json(raw) for raw in raws], int(total)

    def rollback_target(self) -> tuple[PublishEntry, str] | None:
        """The newest history entry of a model other than the served one, and the served
        model's id; None when nothing is served or the history holds no other model."""
        active = self.get_active()
        if active is None:
            return None
        raws = self.redis.lrange(keys.PUBLISH_HISTORY, 0, -1)
        for raw in raws:
            entry = PublishEntry.model_validate_json(raw)
            if entry.model_id != active.model_id:
                return entry, active.model_id
        return None

    def newest_bundle(self, model_id: str) -> str | None:
        """The bundle `model_id` is served from: the active pointer's when it is the active
        model, else its staged bundle (a publish with "activate": false), else its newest
        publish's in the history; None when it was never published."""
        active = self.get_active()
        if active is not None and active.model_id == model_id:
            return active.bundle_dir
        staged = self.staged_bundle(model_id)
        if staged is not None:
            return staged.bundle_dir
        entries, _ = self.publish_history(limit=keys.PUBLISH_HISTORY_MAX)
        return next((e.bundle_dir for e in entries if e.model_id == model_id), None)

    # -- the A/B experiment --------------------------------------------------------------
    def get_experiment(self) -> Experiment | None:
        raw = self.redis.get(keys.EXPERIMENT)
        return Experiment.model_validate_json(raw) if raw is not None else None

    def start_experiment(self, spec: Experiment) -> None:
        """Store `spec` as the running experiment (replacing one) and tell every API process,
        in one MULTI. The stored text is `spec.model_dump_json()`, which the watchers compare."""
        raw = spec.model_dump_json()
        pipe = self.redis.pipeline()
        pipe.set(keys.EXPERIMENT, raw)
        pipe.publish(keys.EXPERIMENT_EVENTS, raw)
        pipe.execute()

    def end_experiment(self) -> Experiment | None:
        """Remove the running experiment and tell every API process; returns it (None: none
        ran, and nothing is published)."""
        raw = self.redis.getdel(keys.EXPERIMENT)
        if raw is None:
            return None
        self.redis.publish(keys.EXPERIMENT_EVENTS, "")
        return Experiment.model_validate_json(raw)
