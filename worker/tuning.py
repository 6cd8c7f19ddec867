"""Tuning jobs: the trials of one Optuna study run on every worker that is up (docs/tuning.md).

A teacher or distill job whose payload carries `tune` runs as a tuning job:

- The job's own task, the *coordinator* (`tune_teacher` / `tune_distill`, called by the
  job's body in worker/training_jobs.py under `run_job` and its heartbeat
  lease like any job), creates the study in Redis: an Optuna JournalStorage on
  JournalRedisBackend, keys `unkd:tune:<job id>:*`. It sends `trials - 1` helper tasks
  (`unkd.tune_trials`, run by `run_helper`) to the train queue, then runs trials itself.
- Every task, coordinator or helper, loops: under a short Redis lock
  (`unkd:tune:<job id>:lock`) it fails the stale trials and, while finished + running
  trials are fewer than asked, asks the study for a trial and takes the trial's lease;
  it trains the trial outside the lock, tells the study, and writes the job's progress
  {trial: finished trials, trials}. A helper returns when no trial is left to start.
- A trial's configuration is sampled as it is asked, under the lock. A running trial
  holds a lease (worker.recovery.JobLease on `<job id>:trial-<n>`, key
  `unkd:job:<job id>:trial-<n>:lease`, 3 heartbeats). A RUNNING trial whose lease is
  gone lost its worker (SIGKILL, OOM): it is failed and its configuration enqueued once
  more, so the study still ends with N finished trials.
- When no trial is left to start, the coordinator waits for the running ones, failing
  stale ones as it polls, and keeps the best trial's model (training.tuning.keep_best),
  which the job's body registers (and publishes, when a distill job asks).
- A killed coordinator's job lease expires and a Reaper requeues the job; the next worker
  runs the coordinator again, which loads the same study and carries on.
- Trial models: each worker trains into its own `models/.tune-<job id>/trial-<n>`. On the
  data dir every worker sees every trial. With an object store (UNKD_ARTIFACT_URL: hosts
  with their own disks) a finished trial's model is also put under
  `tune/<job id>/trial-<n>`, and the coordinator fetches the best one from there when
  another host trained it. Those scratch keys stay in the store (nothing deletes from it).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from celery import Task, current_app
from optuna.trial import FrozenTrial, Trial, TrialState

from service.core import keys
from service.core.artifacts import MANIFEST_FILE as ARTIFACT_MANIFEST
from service.core.artifacts import ArtifactStore, check_key
from service.core.config import Settings
from service.core.payloads import (
    DistillPayload,
    PublishPayload,
    TeacherPayload,
    TrainingPayload,
    payload_of,
)
from service.core.queue import TUNE_TRIALS, settings_of
from service.core.registry import TERMINAL, JobProgress, JobRecord, Registry
from training import pipelines, tuning
from training.checkpoint import ModelArtifact
from training.config import DistillConfig, TeacherConfig, TuneOptions
from training.device import resolve_device
from training.errors import JobCancelled
from training.manifest import MANIFEST
from training.progress import ProgressEvent
from training.tuning_space import suggest
from worker.inputs import DistillInputs, TeacherInputs, distill_inputs, teacher_inputs
from worker.jobs import JobContext, registry_for
from worker.progress import StopCheck
from worker.recovery import JobLease, lease_ttl_s

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often the coordinator looks at the trials still running
LOCK_WAIT_S = 120  # how long a task waits for the ask lock before it gives up (transient)


def trial_lease_id(job_id: str, number: int) -> str:
    return f"{job_id}:trial-{number}"


def trial_key(job_id: str, number: int) -> str:
    """Where a trial's model goes in an object store (scratch of one job, written once)."""
    return check_key(f"tune/{job_id}/trial-{number}")


def work_dir(settings: Settings, job_id: str) -> Path:
    """Where the trials' models go: hidden, beside the models, on the disk every worker shares."""
    return settings.models_dir.resolve() / f".tune-{job_id}"


def _optuna_logging() -> None:
    """Optuna's records through the worker's logging (one format, one stream)."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


# -- one study as a worker sees it --------------------------------------------------------


@dataclass
class TuningRun:
    """A tuning job's study and what its trials need, built by any task of the job."""

    job: JobRecord
    settings: Settings
    registry: Registry
    setup: tuning.StudySetup
    study: optuna.Study

    @property
    def trials(self) -> int:
        return self.setup.options.trials

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore.from_settings(self.settings)

    def store_trial(self, number: int) -> None:
        """With an object store (UNKD_ARTIFACT_URL), put a finished trial's model under
        tune/<job id>/trial-<n>, so that whichever worker keeps the best one can read it;
        on the data dir every worker already sees every trial directory."""
        store = self.store
        local = tuning.trial_dir(self.setup, number)
        if (
            store.in_place or not (local / MANIFEST).is_file()
        ):  # no model: pruned (never best) or failed
            return
        store.put(trial_key(self.job.id, number), local)

    def fetch_best(self) -> None:
        """Bring the best trial's model to this host's trial directory when another worker
        trained it (object store only): keep_best then reads it there."""
        best = tuning.select_best(self.study.get_trials(deepcopy=False))
        store = self.store
        if best is None or store.in_place:
            return
        local = tuning.trial_dir(self.setup, best.number)
        if (local / MANIFEST).is_file():
            return
        cached = store.fetch(trial_key(self.job.id, best.number))  # verified against its manifest
        shutil.rmtree(local, ignore_errors=True)
        shutil.copytree(cached, local, ignore=shutil.ignore_patterns(ARTIFACT_MANIFEST))
        logger.info(
            "job %s: best trial %d was trained on another host: fetched from the store",
            self.job.id,
            best.number,
        )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The study's ask lock. Held for a journal read and an ask, so it expires with a
        lease's TTL: a holder killed inside it blocks the others no longer than its trial
        takes to be found lost."""
        lock = self.registry.redis.lock(
            keys.tuning_lock(self.job.id),
            timeout=lease_ttl_s(self.settings),
            blocking_timeout=LOCK_WAIT_S,
        )
        if not lock.acquire():
            raise TimeoutError(f"job {self.job.id}: tuning lock not acquired in {LOCK_WAIT_S}s")
        try:
            yield
        finally:
            lock.release()

    def fail_stale(self, trials: list[FrozenTrial]) -> None:
        """RUNNING trials whose lease expired lost their worker: fail them, retry their
        configuration once. Called under the lock, where leases are taken."""
        for t in trials:
            if t.state != TrialState.RUNNING:
                continue
            if self.registry.redis.exists(keys.job_lease(trial_lease_id(self.job.id, t.number))):
                continue
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            retried = tuning.retry(self.study, t, "its worker was lost")
            logger.warning(
                "job %s: trial %d lost its worker (no heartbeat); %s",
                self.job.id,
                t.number,
                "its configuration is tried again" if retried else "not retried",
            )

    def next_trial(self) -> tuple[Trial | None, JobLease | None, bool]:
        """Under the lock: fail stale trials, then ask for a trial when the study lacks one.

        Returns (trial, its lease, done): done once N trials finished and none runs.
        """
        with self.locked():
            trials = self.study.get_trials(deepcopy=False)
            self.fail_stale(trials)
            trials = self.study.get_trials(deepcopy=False)
            n_done = tuning.finished(trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if n_done + running >= self.trials or len(trials) >= tuning.max_trials(
                self.setup.options
            ):
                return None, None, running == 0
            trial = self.study.ask()
            # Sampled now, not when training starts: a trial lost at any point after this
            # has its configuration in the study, to be tried again.
            suggest(trial, self.setup.base)
            logger.info(
                "job %s: trial %d started (%d of %d finished)",
                self.job.id,
                trial.number,
                n_done,
                self.trials,
            )
            lease = JobLease(
                self.registry.redis, trial_lease_id(self.job.id, trial.number), self.settings
            )
            if not lease.acquire():  # cannot happen under the lock; be safe
                self.study.tell(trial, state=TrialState.FAIL)
                return None, None, False
        return trial, lease, False

    def progress(self, message: str, epoch: int = 0, epochs: int = 0) -> None:
        trials = self.study.get_trials(deepcopy=False)
        best = tuning.select_best(trials)
        metrics = (
            {} if best is None or best.value is None else {"best_valid_ndcg@20": float(best.value)}
        )
        p = JobProgress(
            stage="tune",
            trial=tuning.finished(trials),
            trials=self.trials,
            epoch=epoch,
            epochs=epochs,
            message=message,
        )
        self.registry.update_progress(self.job.id, p, metrics)

    def run_one(self, trial: Trial, lease: JobLease, stop: StopCheck) -> FrozenTrial | None:
        """Train one trial (its lease beating), tell the study, write the job's progress.

        Returns None when the trial was taken from this worker (its lease expired while it
        stalled: another task failed it and enqueued it again). Raises JobCancelled when
        the job is to stop (cancelled, out of time, worker shutting down, job lease lost).
        """
        trial_stop = _TrialStop(stop, lease)

        def on_progress(event: ProgressEvent) -> None:
            if event.stage == "train" and event.epochs and event.metrics:  # once per checked epoch
                self.progress(f"trial {trial.number}", event.epoch, event.epochs)

        try:
            frozen = tuning.run_trial(
                self.study, trial, self.setup, on_progress=on_progress, should_stop=trial_stop
            )
        except JobCancelled:
            lost = trial_stop.trial_lost or stop.shutdown or stop.lost
            if lost:  # not the configuration's fault: try it again (once, whoever notices)
                tuning.retry(
                    self.study,
                    self.study.get_trials(deepcopy=False)[trial.number],
                    "its worker stopped",
                )
            if trial_stop.trial_lost:  # stalled past its lease: this job goes on
                logger.warning(
                    "job %s: trial %d lost its lease (stalled)", self.job.id, trial.number
                )
                return None
            raise
        finally:
            lease.release()
        if frozen.state == TrialState.COMPLETE:
            self.store_trial(frozen.number)
        self.progress(f"trial {frozen.number} {frozen.state.name.lower()}")
        return frozen

    def cleanup(self) -> None:
        """Remove the trials' models; let the study's keys expire (the report has the trials)."""
        shutil.rmtree(self.setup.work_dir, ignore_errors=True)
        client = self.registry.redis
        for key in client.scan_iter(match=f"{keys.tuning_study(self.job.id)}:*", count=500):
            client.expire(key, self.settings.result_expires_s)


def open_run(
    job: JobRecord,
    payload: TrainingPayload,
    settings: Settings,
    registry: Registry,
    *,
    create: bool,
    seed_offset: int,
) -> TuningRun:
    """The study of a tuning job and the trainer of its trials (dataset, teacher, device)."""
    _optuna_logging()
    if payload.tune is None:
        raise ValueError(f"job {job.id} asks for no tuning")
    options = payload.tune
    device = resolve_device(settings.device)
    model_id = str(job.output_model_id)
    store = ArtifactStore.from_settings(settings)  # the dataset and the teacher are read through it
    cfg: TeacherConfig | DistillConfig
    teacher: ModelArtifact | None = None
    if isinstance(payload, TeacherPayload):
        inputs: TeacherInputs | DistillInputs = teacher_inputs(payload, settings, registry, store)
    else:
        inputs = distill_inputs(payload, settings, registry, store)
        teacher = ModelArtifact.load(inputs.teacher_dir)
    dataset, dataset_id, cfg = inputs.dataset, inputs.dataset_id, inputs.config

    def train(c: Any, out: Path, on_progress: Any, should_stop: Any) -> ModelArtifact:
        if teacher is None:
            return pipelines.train_teacher(
                dataset,
                c,
                out,
                device=device,
                on_progress=on_progress,
                should_stop=should_stop,
                model_id=model_id,
                dataset_id=dataset_id,
            )
        return pipelines.distill_student(
            dataset,
            teacher,
            c,
            out,
            device=device,
            on_progress=on_progress,
            should_stop=should_stop,
            model_id=model_id,
            dataset_id=dataset_id,
        )

    setup = tuning.StudySetup(
        dataset, cfg, options, train, work_dir(settings, job.id), device=device
    )
    storage = tuning.make_storage(settings.redis_url, prefix=keys.tuning_study(job.id))
    study = tuning.open_study(setup, storage, job.id, create=create, seed_offset=seed_offset)
    if teacher is not None:  # the constraint's bound, measured once per study
        bound = study.user_attrs.get("teacher_valid_head_share")
        if bound is None:
            bound = tuning.validation_figures(
                dataset, teacher, groups=setup.groups, device=device
            ).head_share
            study.set_user_attr("teacher_valid_head_share", bound)
        setup.teacher_head_share = float(bound)
    return TuningRun(job, settings, registry, setup, study)


class _TrialStop:
    """should_stop of one trial: the job's StopCheck, or this trial's lease lost."""

    def __init__(self, stop: StopCheck, lease: JobLease) -> None:
        self.stop, self.lease = stop, lease
        self.trial_lost = False

    def __call__(self) -> bool:
        if self.lease.lost:
            self.trial_lost = True
            return True
        return self.stop()


# -- the coordinator (the job's own task) --------------------------------------------------


def _send_helpers(ctx: JobContext, run: TuningRun) -> None:
    """trials - 1 helper tasks on the train queue: every idle worker takes one and runs
    trials; the ones taken after the study is full return at once."""
    app = getattr(ctx.reporter.task, "app", None) or current_app
    for slot in range(1, run.trials):
        app.send_task(TUNE_TRIALS, args=[run.job.id, slot], queue=run.settings.train_queue)


def tune_teacher(ctx: JobContext[TeacherPayload], options: TuneOptions) -> ModelArtifact:
    """A tuned teacher job's model: the best of its study's trials."""
    return _coordinate(ctx, options)


def tune_distill(ctx: JobContext[DistillPayload], options: TuneOptions) -> ModelArtifact:
    """A tuned distill job's student: the best of its study's trials."""
    return _coordinate(ctx, options)


def _coordinate(ctx: JobContext[Any], options: TuneOptions) -> ModelArtifact:
    """Run a tuning job's study: trials here and on every worker, then the best kept as the
    job's model (the job's body registers it)."""
    t0 = time.perf_counter()
    run = open_run(
        ctx.job,
        ctx.payload,
        ctx.settings,
        ctx.registry,
        create=True,
        seed_offset=1009 * max(0, ctx.job.attempts - 1),
    )
    logger.info("job %s: coordinating its study of %d trials", ctx.job.id, options.trials)
    try:
        run.progress("study open")
        _send_helpers(ctx, run)
        while True:
            trial, lease, done = run.next_trial()
            if trial is not None and lease is not None:
                run.run_one(trial, lease, ctx.stop)
            elif done:
                break
            elif ctx.stop():
                raise JobCancelled("stopped while waiting for the running trials")
            else:
                time.sleep(POLL_S)
        ctx.reporter(ProgressEvent(stage="keep", message="keeping the best trial's model"))
        run.fetch_best()
        artifact = tuning.keep_best(
            run.setup,
            run.study,
            ctx.model_dir,
            model_id=ctx.model_id,
            seconds=time.perf_counter() - t0,
        )
    except JobCancelled:
        if ctx.stop.cancelled:
            run.cleanup()
        raise
    except (ValueError, LookupError):  # deterministic: the job fails, its trials go
        run.cleanup()
        raise
    run.cleanup()
    return artifact


# -- helpers (every other worker) ------------------------------------------------------------


def run_helper(task: Task, job_id: str, slot: int) -> dict[str, Any]:
    """Run trials of the job's study until none is left to start; never the job's ending."""
    settings = settings_of(task.app)
    registry = registry_for(settings)
    job = registry.get_job(job_id)
    if job.status in TERMINAL:
        return {"job_id": job_id, "trials": 0}
    payload = payload_of(job)
    if isinstance(payload, PublishPayload) or payload.tune is None:
        return {"job_id": job_id, "trials": 0}
    try:
        run = open_run(job, payload, settings, registry, create=False, seed_offset=7919 * slot)
    except KeyError:  # the study is gone (expired): the job finished long ago
        return {"job_id": job_id, "trials": 0}
    stop = StopCheck(registry, job_id, settings.job_soft_time_limit_s)
    ran = 0
    while registry.get_job(job_id).status not in TERMINAL:
        trial, lease, _ = run.next_trial()
        if trial is None or lease is None:
            break
        try:
            run.run_one(trial, lease, stop)
        except JobCancelled:
            break
        ran += 1
    logger.info("job %s: helper %d ran %d trials", job_id, slot, ran)
    return {"job_id": job_id, "trials": ran}
