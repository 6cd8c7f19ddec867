"""The Redis registry of datasets, jobs, models and the active serving model.

Shared by the API and the workers, so it imports no FastAPI and no Celery. Records are
JSON strings under the keys of service/core/keys.py; sorted sets (score = creation time)
list them newest first. A job record is changed only through `_mutate_job`, an optimistic
WATCH/MULTI transaction, so a worker's progress write can never undo the API's cancel
request. The served model's pointer, publish history, staged bundles and the A/B
experiment are the serving half, `ServingRegistry` (service/core/serving_registry.py),
which `Registry` extends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import redis

from service.core import keys
from service.core.records import (
    JOB_KINDS,
    JOB_STATES,
    TERMINAL,
    ActiveModel,
    ConflictError,
    DatasetRecord,
    GateCheck,
    GatePolicy,
    JobKind,
    JobProgress,
    JobRecord,
    JobState,
    JobTimings,
    ModelRecord,
    NotFoundError,
    PublishEntry,
    PublishGateError,
    StagedBundle,
    evaluate_gate,
    utcnow,
)
from service.core.serving_registry import ServingRegistry
from training.manifest import HeadShareCap

__all__ = [
    "JOB_KINDS",
    "JOB_STATES",
    "TERMINAL",
    "ActiveModel",
    "ConflictError",
    "DatasetRecord",
    "GateCheck",
    "GatePolicy",
    "JobKind",
    "JobProgress",
    "JobRecord",
    "JobState",
    "JobTimings",
    "ModelRecord",
    "NotFoundError",
    "PublishEntry",
    "PublishGateError",
    "Registry",
    "ServingRegistry",
    "StagedBundle",
    "utcnow",
]

logger = logging.getLogger(__name__)


def _score(when: datetime) -> float:
    return when.timestamp()


class Registry(ServingRegistry):
    """Typed access to datasets, models and jobs, and (ServingRegistry) to the served model,
    through one redis-py client (decode_responses=True)."""

    # -- listing helper ------------------------------------------------------------------
    def _page(self, index: str, limit: int, offset: int) -> tuple[list[str], int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(index, offset, offset + limit - 1)
        pipe.zcard(index)
        ids, total = pipe.execute()
        return [str(i) for i in ids], int(total)

    def _load_many(self, key: Callable[[str], str], ids: list[str], model: type[Any]) -> list[Any]:
        if not ids:
            return []
        raws = self.redis.mget([key(i) for i in ids])
        return [model.model_validate_json(raw) for raw in raws if raw is not None]

    # -- datasets ------------------------------------------------------------------------
    def add_dataset(self, record: DatasetRecord) -> DatasetRecord:
        pipe = self.redis.pipeline()
        pipe.set(keys.dataset(record.id), record.model_dump_json())
        pipe.zadd(keys.DATASETS, {record.id: _score(record.created_at)})
        pipe.execute()
        return record

    def get_dataset(self, dataset_id: str, *, field: str = "dataset_id") -> DatasetRecord:
        raw = self.redis.get(keys.dataset(dataset_id))
        if raw is None:
            raise NotFoundError(field, dataset_id, "dataset")
        return DatasetRecord.model_validate_json(raw)

    def list_datasets(self, *, limit: int = 50, offset: int = 0) -> tuple[list[DatasetRecord], int]:
        ids, total = self._page(keys.DATASETS, limit, offset)
        return self._load_many(keys.dataset, ids, DatasetRecord), total

    # -- models --------------------------------------------------------------------------
    def add_model(self, record: ModelRecord) -> ModelRecord:
        pipe = self.redis.pipeline()
        pipe.set(keys.model(record.id), record.model_dump_json())
        pipe.zadd(keys.MODELS, {record.id: _score(record.created_at)})
        pipe.execute()
        return record

    def get_model(self, model_id: str, *, field: str = "model_id") -> ModelRecord:
        raw = self.redis.get(keys.model(model_id))
        if raw is None:
            raise NotFoundError(field, model_id, "model")
        return ModelRecord.model_validate_json(raw)

    def has_model(self, model_id: str) -> bool:
        return bool(self.redis.exists(keys.model(model_id)))

    def list_models(self, *, limit: int = 50, offset: int = 0) -> tuple[list[ModelRecord], int]:
        ids, total = self._page(keys.MODELS, limit, offset)
        return self._load_many(keys.model, ids, ModelRecord), total

    # -- publishing: the gate and the claim ------------------------------------------------
    def gate_checks(self, model_id: str, policy: GatePolicy) -> list[GateCheck]:
        """The publish gate's rules for `model_id`, from the headline figures of the
        registered models (the candidate, its teacher, the served model)."""
        candidate = self.get_model(model_id)
        teacher_id = candidate.lineage.teacher_id
        teacher = self.get_model(teacher_id) if teacher_id and self.has_model(teacher_id) else None
        active = self.get_active()
        served = (
            self.get_model(active.model_id)
            if active is not None and self.has_model(active.model_id)
            else None
        )
        return evaluate_gate(candidate, teacher=teacher, served=served, policy=policy)

    def enforce_gate(self, model_id: str, policy: GatePolicy) -> list[GateCheck]:
        """gate_checks, raising PublishGateError (409) when a rule failed."""
        checks = self.gate_checks(model_id, policy)
        failed = [c for c in checks if c.passed is False]
        if failed:
            raise PublishGateError(model_id, failed)
        return checks

    def claim_publish(self, model_id: str, job_id: str, ttl_s: int) -> str | None:
        """Mark `model_id` as being published by `job_id`; returns the job already doing it.

        A claim held by a job that has finished (its worker died before releasing it) is
        taken over.
        """
        key = keys.publish_claim(model_id)
        for _ in range(3):
            if self.redis.set(key, job_id, nx=True, ex=ttl_s):
                return None
            holder = self.redis.get(key)
            if holder is None:
                continue
            raw = self.redis.get(keys.job(str(holder)))
            if raw is not None and JobRecord.model_validate_json(raw).status not in TERMINAL:
                return str(holder)
            self.redis.delete(key)
        return None

    def release_publish(self, model_id: str, job_id: str) -> None:
        key = keys.publish_claim(model_id)
        if self.redis.get(key) == job_id:
            self.redis.delete(key)

    # -- jobs ----------------------------------------------------------------------------
    def create_job(self, record: JobRecord) -> JobRecord:
        score = _score(record.timings.queued_at)
        pipe = self.redis.pipeline()
        pipe.set(keys.job(record.id), record.model_dump_json())
        pipe.zadd(keys.JOBS, {record.id: score})
        pipe.zadd(keys.jobs_by_kind(record.kind), {record.id: score})
        pipe.zadd(keys.jobs_by_status(record.status), {record.id: score})
        pipe.hincrby(keys.JOB_STATS, f"{record.kind}:{record.status}", 1)
        pipe.execute()
        return record

    def get_job(self, job_id: str, *, field: str = "job_id") -> JobRecord:
        raw = self.redis.get(keys.job(job_id))
        if raw is None:
            raise NotFoundError(field, job_id, "job")
        return JobRecord.model_validate_json(raw)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[JobRecord], int]:
        """Newest first, optionally filtered by status and/or kind."""
        if status and kind:
            ranked: list[tuple[str, float]] = self.redis.zinter(  # type: ignore[assignment]
                [keys.jobs_by_status(status), keys.jobs_by_kind(kind)],
                aggregate="MAX",
                withscores=True,
            )
            ids = [str(job_id) for job_id, _ in sorted(ranked, key=lambda pair: -pair[1])]
            page, total = ids[offset : offset + limit], len(ids)
        else:
            index = (
                keys.jobs_by_status(status)
                if status
                else keys.jobs_by_kind(kind)
                if kind
                else keys.JOBS
            )
            page, total = self._page(index, limit, offset)
        return self._load_many(keys.job, page, JobRecord), total

    def job_counts(self) -> dict[tuple[str, str], int]:
        """(kind, status) -> number of jobs that ever reached that status (monotonic)."""
        counts: dict[tuple[str, str], int] = {}
        for field, value in self.redis.hgetall(keys.JOB_STATS).items():
            kind, _, status = str(field).partition(":")
            counts[(kind, status)] = int(value)
        return counts

    def jobs_by_status(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for status in JOB_STATES:
            pipe.zcard(keys.jobs_by_status(status))
        return dict(zip(JOB_STATES, (int(n) for n in pipe.execute()), strict=True))

    def _mutate_job(
        self, job_id: str, change: Callable[[JobRecord], JobRecord | None]
    ) -> JobRecord:
        """Apply `change` to the stored record atomically; it returns None to leave it as is.

        `change` may run more than once (WATCH retries when another process wrote the
        record meanwhile), so it must be a pure function of the record it is given.
        """
        key = keys.job(job_id)

        def txn(pipe: redis.client.Pipeline) -> JobRecord:
            raw = pipe.get(key)
            if raw is None:
                raise NotFoundError("job_id", job_id, "job")
            old = JobRecord.model_validate_json(raw)
            new = change(old.model_copy(deep=True))
            if new is None:
                return old
            pipe.multi()
            pipe.set(key, new.model_dump_json())
            if new.status != old.status:
                score = _score(new.timings.queued_at)
                pipe.zrem(keys.jobs_by_status(old.status), job_id)
                pipe.zadd(keys.jobs_by_status(new.status), {job_id: score})
                pipe.hincrby(keys.JOB_STATS, f"{new.kind}:{new.status}", 1)
            return new

        result = self.redis.transaction(txn, key, value_from_callable=True)  # type: ignore[arg-type]
        if not isinstance(result, JobRecord):
            raise TypeError(f"job {job_id}: transaction returned {type(result).__name__}")
        return result

    def start_job(self, job_id: str) -> tuple[JobRecord, bool]:
        """A worker picks the job up: returns (record, should_run).

        A cancelled job (or one whose cancel was requested) never runs and ends cancelled;
        a finished job is not run again when its message is delivered twice; a job found
        running was interrupted (worker lost) and runs again. Each run counts an attempt.
        """

        def change(job: JobRecord) -> JobRecord | None:
            if job.status in TERMINAL:
                return None
            now = utcnow()
            if job.cancel_requested:
                job.status = "cancelled"
                job.timings.finished_at = now
                job.progress.stage = "cancelled"
                return job
            job.status = "running"
            job.attempts += 1
            job.error = None
            job.timings.started_at = now
            job.progress.stage = "starting"
            return job

        job = self._mutate_job(job_id, change)
        return job, job.status == "running"

    def update_progress(
        self, job_id: str, progress: JobProgress, metrics: dict[str, float] | None = None
    ) -> JobRecord:
        """Record progress and the latest metrics of a running job."""

        def change(job: JobRecord) -> JobRecord | None:
            if job.status != "running":
                return None
            update = progress.model_dump()
            if progress.epochs == 0:  # a stage event (evaluate, publish): keep epoch of epochs
                update.update(epoch=job.progress.epoch, epochs=job.progress.epochs)
            if progress.trials == 0:  # not from a trial: a tuning job keeps its trial count
                update.update(trial=job.progress.trial, trials=job.progress.trials)
            elif progress.trials == job.progress.trials:  # workers race: finished never falls
                update.update(trial=max(progress.trial, job.progress.trial))
            job.progress = JobProgress.model_validate(update)
            if metrics:
                job.metrics = {**job.metrics, **metrics}
            return job

        return self._mutate_job(job_id, change)

    def record_cap(self, job_id: str, cap: HeadShareCap) -> JobRecord:
        """A distill job's head-share cap as its model kept it: JobRecord.cap_met and
        head_share_cap, and the two figures among its metrics (head_share@20 and
        teacher_head_share@20)."""

        def change(job: JobRecord) -> JobRecord:
            job.cap_met, job.head_share_cap = cap.met, cap
            job.metrics = {
                **job.metrics,
                "head_share@20": cap.student,
                "teacher_head_share@20": cap.teacher,
            }
            return job

        return self._mutate_job(job_id, change)

    def finish_job(
        self,
        job_id: str,
        status: Literal["succeeded", "failed", "cancelled"],
        *,
        model_id: str | None = None,
        error: str | None = None,
    ) -> JobRecord:
        def change(job: JobRecord) -> JobRecord:
            now = utcnow()
            job.status = status
            job.model_id = model_id if model_id is not None else job.model_id
            job.error = error
            job.progress.stage = status
            job.timings.finished_at = now
            if job.timings.started_at is not None:
                job.timings.elapsed_s = round((now - job.timings.started_at).total_seconds(), 3)
            return job

        return self._mutate_job(job_id, change)

    def requeue_job(self, job_id: str, reason: str) -> JobRecord:
        """Back to queued before a retry after a transient error."""

        def change(job: JobRecord) -> JobRecord | None:
            if job.status in TERMINAL:
                return None
            job.status = "queued"
            job.error = f"retrying after: {reason}"
            job.progress.stage = "queued"
            return job

        return self._mutate_job(job_id, change)

    def request_cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled now; a running one is flagged and stops at its next epoch."""

        def change(job: JobRecord) -> JobRecord | None:
            if job.status == "cancelled":
                return None
            if job.status in TERMINAL:
                raise ConflictError(
                    "job_id", job_id, f"job already {job.status}, nothing to cancel"
                )
            job.cancel_requested = True
            if job.status == "queued":
                job.status = "cancelled"
                job.progress.stage = "cancelled"
                job.timings.finished_at = utcnow()
            return job

        return self._mutate_job(job_id, change)

    def cancel_requested(self, job_id: str) -> bool:
        raw = self.redis.get(keys.job(job_id))
        return raw is not None and JobRecord.model_validate_json(raw).cancel_requested
