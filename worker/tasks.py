"""The worker's Celery tasks: each names what it runs, a few lines each.

A job's task takes only its job id and runs it under worker/jobs.py's run_job (lease,
payload, status, retries); the helper tasks of a job that spreads over every worker (a
tuning study's trials, a fan-out's shards) take the job id and their part of it.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from service.core.queue import (
    CANDIDATE_SHARD,
    DISTILL,
    EVAL_SHARD,
    PIPELINE_RUN,
    PIPELINE_TICK,
    PUBLISH,
    TRAIN_TEACHER,
    TUNE_TRIALS,
)
from worker.fanout_phases import CANDIDATE_SHARDS, EVAL_SHARDS
from worker.jobs import run_job
from worker.pipeline_runs import run_pipeline
from worker.pipeline_tick import tick
from worker.publishing import PUBLISH_JOB
from worker.shards import run_shard
from worker.training_jobs import DISTILL_JOB, TEACHER_JOB
from worker.tuning import run_helper


@shared_task(bind=True, name=TRAIN_TEACHER)
def train_teacher(self: Task, job_id: str) -> dict[str, Any]:
    """Train a teacher on a registered dataset."""
    return run_job(self, job_id, TEACHER_JOB)


@shared_task(bind=True, name=DISTILL)
def distill(self: Task, job_id: str) -> dict[str, Any]:
    """Distil a registered teacher into a student (and publish it if asked)."""
    return run_job(self, job_id, DISTILL_JOB)


@shared_task(bind=True, name=PUBLISH)
def publish(self: Task, job_id: str) -> dict[str, Any]:
    """Publish a registered model: serving bundle, then the active pointer."""
    return run_job(self, job_id, PUBLISH_JOB)


@shared_task(bind=True, name=TUNE_TRIALS)
def tune_trials(self: Task, job_id: str, slot: int) -> dict[str, Any]:
    """Run trials of a tuning job's study on this worker (sent by the job's coordinator)."""
    return run_helper(self, job_id, slot)


@shared_task(bind=True, name=CANDIDATE_SHARD)
def candidate_shard(self: Task, job_id: str, index: int) -> dict[str, Any]:
    """Rank one candidate shard of a distillation job (sent by the job's parent task)."""
    return run_shard(self, job_id, index, CANDIDATE_SHARDS)


@shared_task(bind=True, name=EVAL_SHARD)
def eval_shard(self: Task, job_id: str, index: int) -> dict[str, Any]:
    """Rank the student's and the teacher's report lists for one shard of evaluated users
    (sent by the job's parent task once the student is trained)."""
    return run_shard(self, job_id, index, EVAL_SHARDS)


@shared_task(bind=True, name=PIPELINE_RUN)
def pipeline_run(self: Task, run_id: str) -> dict[str, Any]:
    """Run one pipeline run's steps (version, teacher, distill, gate, publish) here."""
    return run_pipeline(self, run_id)


@shared_task(bind=True, name=PIPELINE_TICK)
def pipelines_tick(self: Task) -> dict[str, Any]:
    """Fail the runs whose worker died, start the runs that are due (sent by the scheduler)."""
    return tick(self.app)
