"""Pipelines in Redis: recipes, runs, the one-run-at-a-time lock and the schedule's slots.

Shared by the API (PUT, GET, POST .../run) and the worker (the run task and the tick).
Keys come from service/core/keys.py. A run record changes only through `mutate_run`, a
WATCH/MULTI transaction, so a run that finishes and a tick that finds its worker dead cannot
both end it: whichever writes first wins, the other sees an ended run and does nothing.

The lock (`keys.pipeline_lock`) holds the id of the one run of a pipeline that is queued or
running. It is taken with SET NX when the run is created, with a TTL that covers a wait in
the queue; the running run's heartbeat renews it every job_heartbeat_s to 3 intervals. A run
whose worker died stops renewing it; the tick then fails the run once and the lock is gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import redis

from service.core import keys
from service.core.pipelines import Pipeline, PipelineRun, Trigger
from service.core.records import ConflictError, NotFoundError, utcnow

# Redis scripts: act only while the lock still holds this run's id.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def _score(when: datetime) -> float:
    return when.timestamp()


class PipelineStore:
    """Typed access to the pipeline keys through one redis-py client (decode_responses=True)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # -- recipes -------------------------------------------------------------------------
    def put(self, pipeline: Pipeline) -> tuple[Pipeline, bool]:
        """Create or replace; returns the stored pipeline and whether it is new. A replaced
        pipeline keeps its creation time and runs; its schedule starts again from now."""
        raw = self.redis.get(keys.pipeline(pipeline.name))
        created = raw is None
        if raw is not None:
            old = Pipeline.model_validate_json(raw)
            pipeline = pipeline.model_copy(update={"created_at": old.created_at})
        pipe = self.redis.pipeline()
        pipe.set(keys.pipeline(pipeline.name), pipeline.model_dump_json())
        pipe.zadd(keys.PIPELINES, {pipeline.name: _score(pipeline.created_at)})
        pipe.set(keys.pipeline_fired(pipeline.name), str(_score(pipeline.updated_at)))
        pipe.execute()
        return pipeline, created

    def get(self, name: str) -> Pipeline:
        raw = self.redis.get(keys.pipeline(name))
        if raw is None:
            raise NotFoundError("name", name, "pipeline")
        return Pipeline.model_validate_json(raw)

    def names(self) -> list[str]:
        return [str(n) for n in self.redis.zrevrange(keys.PIPELINES, 0, -1)]

    def list_pipelines(self, *, limit: int = 50, offset: int = 0) -> tuple[list[Pipeline], int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(keys.PIPELINES, offset, offset + limit - 1)
        pipe.zcard(keys.PIPELINES)
        names, total = pipe.execute()
        raws = self.redis.mget([keys.pipeline(str(n)) for n in names]) if names else []
        return [Pipeline.model_validate_json(r) for r in raws if r is not None], int(total)

    def delete(self, name: str) -> Pipeline:
        """Remove the recipe; its runs stay readable (and are the pipeline's again if it is
        created again); a queued or running run goes on to its end."""
        pipeline = self.get(name)
        pipe = self.redis.pipeline()
        pipe.delete(keys.pipeline(name), keys.pipeline_fired(name))
        pipe.zrem(keys.PIPELINES, name)
        pipe.execute()
        return pipeline

    # -- runs ----------------------------------------------------------------------------
    def create_run(
        self, name: str, trigger: Trigger, *, queued_ttl_s: int, min_new_events: int | None = None
    ) -> PipelineRun:
        """A queued run holding the pipeline's lock; ConflictError when a run holds it."""
        run = PipelineRun(
            run_id=uuid.uuid4().hex, pipeline=name, trigger=trigger, min_new_events=min_new_events
        )
        if not self.redis.set(keys.pipeline_lock(name), run.run_id, nx=True, ex=queued_ttl_s):
            holder = self.lock_holder(name)
            raise ConflictError(
                "name", name, f"run {holder} is queued or running; one run at a time"
            )
        pipe = self.redis.pipeline()
        pipe.set(keys.pipeline_run(run.run_id), run.model_dump_json())
        pipe.zadd(keys.pipeline_runs(name), {run.run_id: _score(run.created_at)})
        pipe.sadd(keys.PIPELINE_RUNS_OPEN, run.run_id)
        pipe.execute()
        return run

    def open_runs(self) -> list[PipelineRun]:
        """Every run not ended yet, of any pipeline (one deleted meanwhile too)."""
        ids = sorted(str(i) for i in self.redis.smembers(keys.PIPELINE_RUNS_OPEN))
        raws = self.redis.mget([keys.pipeline_run(i) for i in ids]) if ids else []
        runs = [PipelineRun.model_validate_json(r) for r in raws if r is not None]
        gone = [i for i, r in zip(ids, raws, strict=True) if r is None] + [
            r.run_id for r in runs if r.ended
        ]
        if gone:
            self.redis.srem(keys.PIPELINE_RUNS_OPEN, *gone)
        return [r for r in runs if not r.ended]

    def get_run(self, run_id: str, *, name: str | None = None) -> PipelineRun:
        raw = self.redis.get(keys.pipeline_run(run_id))
        run = PipelineRun.model_validate_json(raw) if raw is not None else None
        if run is None or (name is not None and run.pipeline != name):
            raise NotFoundError("run_id", run_id, "run" + (f" of pipeline {name}" if name else ""))
        return run

    def list_runs(
        self, name: str, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[PipelineRun], int]:
        """Newest first."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(keys.pipeline_runs(name), offset, offset + limit - 1)
        pipe.zcard(keys.pipeline_runs(name))
        ids, total = pipe.execute()
        raws = self.redis.mget([keys.pipeline_run(str(i)) for i in ids]) if ids else []
        return [PipelineRun.model_validate_json(r) for r in raws if r is not None], int(total)

    def mutate_run(
        self, run_id: str, change: Callable[[PipelineRun], PipelineRun | None]
    ) -> PipelineRun:
        """Apply `change` atomically (it may run more than once; None leaves the record)."""
        key = keys.pipeline_run(run_id)

        def txn(pipe: redis.client.Pipeline) -> PipelineRun:
            raw = pipe.get(key)
            if raw is None:
                raise NotFoundError("run_id", run_id, "run")
            old = PipelineRun.model_validate_json(raw)
            new = change(old.model_copy(deep=True))
            if new is None:
                return old
            pipe.multi()
            pipe.set(key, new.model_dump_json())
            return new

        result = self.redis.transaction(txn, key, value_from_callable=True)  # type: ignore[arg-type]
        if not isinstance(result, PipelineRun):
            raise TypeError(f"run {run_id}: transaction returned {type(result).__name__}")
        return result

    def start_run(self, run_id: str) -> tuple[PipelineRun, bool]:
        """queued -> running; returns (run, should_run). An ended run (a redelivered message
        of a run that failed) or one already running (a second delivery) is not run."""

        def change(run: PipelineRun) -> PipelineRun | None:
            if run.status != "queued":
                return None
            run.status, run.started_at = "running", utcnow()
            return run

        before = self.get_run(run_id)
        run = self.mutate_run(run_id, change)
        return run, before.status == "queued" and run.status == "running"

    def end_run(self, run_id: str, status: str, reason: str | None = None) -> PipelineRun:
        """Record the run's end once (a run already ended is left as it is), then release
        the lock if this run holds it."""

        def change(run: PipelineRun) -> PipelineRun | None:
            if run.ended:
                return None
            run.status = status  # type: ignore[assignment]
            run.reason = reason if reason is not None else run.reason
            run.finished_at = utcnow()
            return run

        run = self.mutate_run(run_id, change)
        self.redis.srem(keys.PIPELINE_RUNS_OPEN, run_id)
        self.release(run.pipeline, run_id)
        return run

    # -- the lock and the schedule --------------------------------------------------------
    def lock_holder(self, name: str) -> str | None:
        holder = self.redis.get(keys.pipeline_lock(name))
        return str(holder) if holder is not None else None

    def renew(self, name: str, run_id: str, ttl_s: float) -> bool:
        """The heartbeat: the lock's TTL back to `ttl_s`; False when this run lost it."""
        return bool(self.redis.eval(_RENEW, 1, keys.pipeline_lock(name), run_id, int(ttl_s * 1000)))

    def release(self, name: str, run_id: str) -> None:
        self.redis.eval(_RELEASE, 1, keys.pipeline_lock(name), run_id)

    def fired(self, name: str) -> float | None:
        raw = self.redis.get(keys.pipeline_fired(name))
        return float(raw) if raw is not None else None

    def claim_slot(self, name: str, slot: int, ttl_s: int) -> bool:
        """True for the one tick that claims `slot` (SET NX), then the slot is the last fired."""
        if not self.redis.set(keys.pipeline_slot(name, slot), "1", nx=True, ex=ttl_s):
            return False
        self.redis.set(keys.pipeline_fired(name), str(slot))
        return True
