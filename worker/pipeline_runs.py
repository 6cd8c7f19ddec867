"""A pipeline run: version, teacher, distill, gate, publish, as one task on the train queue.

The steps run here, in this task's process, each through the code its job would run
(worker/training_jobs.py, worker/publishing.py): every step gets a job record of its own
(kind teacher, distill or publish, `pipeline_run` set), so it shows in /v1/jobs with its
progress and can be cancelled; its body is called in-process rather than enqueued, since a
worker with one process would wait on itself forever.

1. Data: the positive events since the lineage's newest version (service.core.versions).
   Enough of them (the recipe's min_new_events, at least 1) build a new version. Fewer: the
   run trains on the newest version if it is newer than the one the last run that trained
   (succeeded or refused) used, or when the run asked for min_new_events 0; else it is
   `skipped`, and says why.
2. A teacher job on that version; 3. a distill job from it (when the recipe has distill).
4. The gate (`Registry.gate_checks` with the recipe's policy, else the service's): a failed
   rule ends the run `refused` and nothing served changes. The ndcg rule compares with the
   served model only on the same dataset, and a new version is another dataset: its check
   then says "not checked" and names both datasets.
5. Publish per on_pass: `stage` (bundle built, not served), `experiment` (staged, then an
   A/B experiment: the active model and the new one at `share`), `activate` (a publish job,
   the gate checked again as every publish does).

The pipeline's lock (service/core/pipelines_store.py) is renewed by a heartbeat thread while
the run lives; a worker killed mid-run stops renewing it, and the tick
(worker/pipeline_tick.py) fails the run once and frees the lock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task

from service.core.config import Settings
from service.core.payloads import (
    DistillPayload,
    PublishPayload,
    TeacherPayload,
    new_job,
)
from service.core.pipelines import Pipeline, PipelineRun, Published
from service.core.pipelines_store import PipelineStore
from service.core.queue import new_job_id, settings_of
from service.core.records import (
    Experiment,
    ExperimentArm,
    GatePolicy,
    JobRecord,
    PublishGateError,
    utcnow,
)
from service.core.registry import Registry
from service.core.versions import build_version, latest_version, pending_events
from training.config import DistillConfig, TeacherConfig
from training.errors import JobCancelled
from worker.jobs import JobContext, JobType, P, describe_error, registry_for, typed_payload
from worker.progress import JobReporter, StopCheck
from worker.publishing import PUBLISH_JOB
from worker.recovery import JobLease, lease_ttl_s
from worker.training_jobs import DISTILL_JOB, TEACHER_JOB

logger = logging.getLogger(__name__)

HEADLINE = ("ndcg@20", "head_share@20", "recall@20")


class StepFailed(RuntimeError):
    """A step's job did not succeed; the run fails (or is refused) with its reason."""


class RunHeartbeat:
    """Renews the pipeline's lock while the run lives; `lost` once it no longer holds it."""

    def __init__(self, store: PipelineStore, run: PipelineRun, interval_s: float) -> None:
        self.store, self.run, self.interval_s = store, run, interval_s
        self.ttl_s = 3 * interval_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"run-{run.run_id[:8]}", daemon=True
        )

    def start(self) -> RunHeartbeat:
        self.lost = not self.store.renew(self.run.pipeline, self.run.run_id, self.ttl_s)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.store.renew(self.run.pipeline, self.run.run_id, self.ttl_s):
                    self.lost = True
                    logger.error("pipeline run %s: lock lost; stopping", self.run.run_id)
                    return
            except (redis.RedisError, OSError) as exc:
                logger.warning("pipeline run %s: heartbeat not written (%s)", self.run.run_id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


@dataclass
class RunContext:
    task: Task
    run: PipelineRun
    pipeline: Pipeline
    store: PipelineStore
    registry: Registry
    heartbeat: RunHeartbeat

    @property
    def settings(self) -> Settings:
        return settings_of(self.task.app)

    def note(self, **fields: Any) -> None:
        """Write fields of the run record as they become known."""

        def change(run: PipelineRun) -> PipelineRun:
            return run.model_copy(update=fields)

        self.run = self.store.mutate_run(self.run.run_id, change)


# -- a step's job, run here -------------------------------------------------------------------


def run_step(ctx: RunContext, job: JobRecord, job_type: JobType[P]) -> str:
    """Record `job` (visible, cancellable), run its body in this process under its lease;
    returns its model id, or raises StepFailed with the job's error."""
    settings, registry = ctx.settings, ctx.registry
    job = registry.create_job(job.model_copy(update={"pipeline_run": ctx.run.run_id}))
    lease = JobLease(registry.redis, job.id, settings)
    lease.acquire()
    try:
        job, should_run = registry.start_job(job.id)
        if not should_run:
            raise StepFailed(f"{job.kind} job {job.id} was {job.status} before it started")
        stop = StopCheck(
            registry,
            job.id,
            settings.job_soft_time_limit_s,
            lambda: lease.lost or ctx.heartbeat.lost,
        )
        jctx = JobContext(
            job,
            typed_payload(job, job_type.payload),
            settings,
            registry,
            JobReporter(registry, job.id, ctx.task),
            stop,
        )
        try:
            model_id = job_type.body(jctx)
        except JobCancelled as exc:
            why = (
                "cancelled"
                if stop.cancelled
                else "worker shutting down"
                if stop.shutdown
                else ("lock lost" if stop.lost else "over its time limit")
            )
            registry.finish_job(job.id, "cancelled" if stop.cancelled else "failed", error=why)
            raise StepFailed(f"{job.kind} job {job.id}: {why}") from exc
        except Exception as exc:
            error = describe_error(exc)
            registry.finish_job(job.id, "failed", model_id=jctx.saved_model_id, error=error)
            raise StepFailed(f"{job.kind} job {job.id} failed: {error}") from exc
        registry.finish_job(job.id, "succeeded", model_id=model_id)
        return model_id
    finally:
        lease.release()
        if job_type.ended is not None:
            job_type.ended(settings, job.id)


# -- the steps ---------------------------------------------------------------------------------


def choose_version(ctx: RunContext) -> tuple[str | None, int, str]:
    """(dataset id to train on or None, new positive events, why skipped)."""
    recipe, registry, settings = ctx.pipeline, ctx.registry, ctx.settings
    wanted = ctx.run.min_new_events if ctx.run.min_new_events is not None else recipe.min_new_events
    pending = pending_events(registry, registry.redis, recipe.dataset_id, settings=settings)
    if pending >= max(1, wanted):
        result = build_version(
            registry,
            settings,
            registry.redis,
            recipe.dataset_id,
            min_new_events=max(1, wanted),
            split=recipe.version_split,
        )
        if result.record is None:
            return None, result.new_events, result.reason
        return result.record.id, result.new_events, ""
    latest = latest_version(registry, recipe.dataset_id)
    trained = last_trained_version(ctx)
    if trained is not None and latest.id != trained:
        return latest.id, pending, ""  # built since (by a run that failed later, or by hand)
    if wanted == 0:
        return latest.id, pending, ""
    since = f"version {latest.id}" if trained is None else f"the last trained version {trained}"
    return (
        None,
        pending,
        f"no new data: {pending} new positive events since {since} (the run needs "
        f"{max(1, wanted)})",
    )


def last_trained_version(ctx: RunContext) -> str | None:
    """The dataset version of the newest run that trained to the gate."""
    runs, _ = ctx.store.list_runs(ctx.pipeline.name, limit=200)
    for run in runs:
        if run.status in ("succeeded", "refused") and run.dataset_version:
            return run.dataset_version
    return None


def train(ctx: RunContext, version_id: str) -> str:
    """The teacher job, then the distill job; returns the candidate's model id."""
    recipe = ctx.pipeline
    spec = recipe.teacher
    teacher_payload = TeacherPayload(
        dataset_id=version_id,
        config=TeacherConfig.model_validate(spec.model_dump(exclude={"tune"})),
        tune=spec.tune,
    )
    job_id = new_job_id()
    ctx.note(teacher_job=job_id)
    teacher_id = run_step(
        ctx, new_job(job_id, teacher_payload, output_model_id=f"teacher-{job_id[:12]}"), TEACHER_JOB
    )
    ctx.note(teacher_id=teacher_id)
    if recipe.distill is None:
        return teacher_id
    distill = recipe.distill
    payload = DistillPayload(
        teacher_id=teacher_id,
        dataset_id=version_id,
        config=DistillConfig.model_validate(distill.model_dump(exclude={"tune"})),
        tune=distill.tune,
    )
    job_id = new_job_id()
    ctx.note(distill_job=job_id)
    student_id = run_step(
        ctx,
        new_job(job_id, payload, output_model_id=f"student-{distill.method}-{job_id[:12]}"),
        DISTILL_JOB,
    )
    ctx.note(student_id=student_id)
    return student_id


def figures(ctx: RunContext) -> dict[str, float]:
    """The student's and the teacher's headline test figures."""
    out: dict[str, float] = {}
    for who, model_id in (("student", ctx.run.student_id), ("teacher", ctx.run.teacher_id)):
        if model_id and ctx.registry.has_model(model_id):
            metrics = ctx.registry.get_model(model_id).metrics
            out.update({f"{who}_{m}": metrics[m] for m in HEADLINE if m in metrics})
    return out


def publish(ctx: RunContext, model_id: str, policy: GatePolicy) -> Published:
    """Publish per on_pass; PublishGateError when the gate refuses at publish time."""
    recipe, registry = ctx.pipeline, ctx.registry
    active = registry.get_active()
    action = recipe.on_pass
    if action == "experiment" and (active is None or active.model_id == model_id):
        action = "activate"  # nothing else served to compare with
    payload = PublishPayload(
        model_id=model_id,
        key_name=recipe.key_name,
        gate_policy=policy,
        activate=action == "activate",
    )
    job_id = new_job_id()
    ctx.note(publish_job=job_id)
    claimed_by = registry.claim_publish(model_id, job_id, ctx.settings.job_soft_time_limit_s)
    if claimed_by is not None:
        raise StepFailed(f"model {model_id} is being published by job {claimed_by}")
    run_step(ctx, new_job(job_id, payload), PUBLISH_JOB)
    if action != "experiment" or active is None:
        return Published(model_id=model_id, action=action)
    share = float(recipe.share or 0.0)
    staged = registry.staged_bundle(model_id)
    if staged is None:
        raise StepFailed(f"model {model_id}: staged, but its bundle is not recorded")
    registry.start_experiment(
        Experiment(
            arms=[
                ExperimentArm(
                    model_id=active.model_id, weight=1.0 - share, bundle_dir=active.bundle_dir
                ),
                ExperimentArm(model_id=model_id, weight=share, bundle_dir=staged.bundle_dir),
            ],
            salt=f"pipeline-{recipe.name}-{ctx.run.run_id[:8]}",
            started_at=utcnow(),
            started_by=recipe.key_name,
        )
    )
    return Published(model_id=model_id, action="experiment", experiment_share=share)


def steps(ctx: RunContext) -> tuple[str, str | None]:
    """Every step; returns the run's final (status, reason)."""
    version_id, new_events, why = choose_version(ctx)
    ctx.note(new_events=new_events, dataset_version=version_id)
    if version_id is None:
        return "skipped", why
    candidate = train(ctx, version_id)
    policy = ctx.pipeline.gate or GatePolicy.of(ctx.settings)
    checks = ctx.registry.gate_checks(candidate, policy)
    ctx.note(gate=checks, metrics=figures(ctx))
    failed = [c for c in checks if c.passed is False]
    if failed:
        return "refused", "gate refused " + candidate + ": " + "; ".join(c.detail for c in failed)
    try:
        published = publish(ctx, candidate, policy)
    except StepFailed as exc:
        if isinstance(exc.__cause__, PublishGateError):  # the served model changed meanwhile
            return "refused", str(exc.__cause__)
        raise
    ctx.note(published=published)
    return "succeeded", None


def run_pipeline(task: Task, run_id: str) -> dict[str, Any]:
    """The task's body: start the run (once), run its steps, record its end once."""
    settings = settings_of(task.app)
    registry = registry_for(settings)
    store = PipelineStore(registry.redis)
    run, should_run = store.start_run(run_id)
    if not should_run:
        logger.info("pipeline run %s is %s: not running it", run_id, run.status)
        return {"run_id": run_id, "status": run.status}
    heartbeat = RunHeartbeat(store, run, settings.job_heartbeat_s).start()
    status, reason = "failed", None
    try:
        ctx = RunContext(task, run, store.get(run.pipeline), store, registry, heartbeat)
        logger.info("pipeline run %s of %s started (%s)", run_id, run.pipeline, run.trigger)
        status, reason = steps(ctx)
    except StepFailed as exc:
        reason = str(exc)
    except Exception as exc:
        logger.exception("pipeline run %s: unexpected error", run_id)
        reason = describe_error(exc)
    finally:
        heartbeat.stop()
    ended = store.end_run(run_id, status, reason)
    logger.info(
        "pipeline run %s of %s %s%s (lock ttl %.1fs)",
        run_id,
        run.pipeline,
        ended.status,
        f": {ended.reason}" if ended.reason else "",
        lease_ttl_s(settings),
    )
    return {"run_id": run_id, "status": ended.status, "reason": ended.reason}
