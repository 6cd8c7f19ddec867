"""Jobs that fan out: a large distillation job's teacher candidates, ranked in shards of
users by every worker that is up, kept on disk (docs/service.md, "Jobs that fan out").

A distill job over at least settings.fanout_min_users users (and a method with candidate
lists) runs its "candidates" stage this way; every other job runs exactly as before.

- **Celery's primitive, as intended.** The job's own task (the *parent*, under run_job and
  its heartbeat lease like any job) writes the plan and sends a `group` of
  `unkd.candidate_shard` tasks, one per shard, to the train queue: the broker hands them
  to idle workers, acks_late and reject_on_worker_lost redeliver a dead worker's message.
  The parent never waits on the group's results (a task that blocks on sub-tasks
  deadlocks a `--pool=solo` worker, and Celery refuses `.get()` inside a task); it ranks
  shards itself, from the last one down while the group's tasks go from the first one up,
  then waits only for shards other workers hold. One worker: the parent ranks them all and
  the group's tasks, run after the job, find nothing to do. Two: they share them. A
  `chord` would also avoid the deadlock, but it splits the job's lifecycle (registry
  state, lease, cancel, progress) over two tasks and waits for a dead shard's redelivery
  until the broker's visibility timeout (hours).
- **Claims: a lease, not a queue.** Whoever ranks shard i (a shard task or the parent)
  holds the heartbeat lease `unkd:job:<id>:shard-<i>:lease` (worker.recovery.JobLease, the
  jobs' and tuning trials' lease: 3 heartbeats). A shard is done when its directory exists
  (training.distill.shards: written once, temp directory then rename). A worker killed
  mid-shard stops beating; within 3 × job_heartbeat_s its lease expires and the parent
  (or a later shard task) ranks that shard again, so the kill costs one shard. A killed
  parent is the job's usual recovery (the reaper requeues it); its next attempt finds the
  shards already written and ranks only the missing ones.
- **Storage: the data dir**, `<data dir>/models/.candidates-<job id>/` (plan.json, then
  shard-00000/ ...), each shard's meta.json naming its lists' fingerprint (teacher, data,
  grouping, list options). Not the artifact store: training reads the shards by memory
  map, which needs files on a filesystem, and they are scratch of one job, not versioned
  artifacts (an object store would copy 11 GB up, then down into a fetch cache that is
  never pruned). So other workers take shards only when the store is the data dir
  (UNKD_ARTIFACT_URL unset: workers share one data dir, as before the store); with an
  object store each host has its own data dir and the parent ranks every shard itself,
  still on disk. Removed when the job succeeds, fails for good or is cancelled; kept when
  it is requeued (worker lost or shutting down), for its next attempt.
- **Progress**: each shard written updates the job: stage `candidates`, epoch / epochs =
  shards written / shards, the message the users ranked (the written shards' sums).
- **Cancel**: every shard checks the job's cancel flag and status between its user
  chunks (settings.fanout_chunk_users); a shard task of a finished job returns at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Task, current_app, group, shared_task

from service.core import keys
from service.core.artifacts import ArtifactStore
from service.core.config import Settings
from service.core.queue import CANDIDATE_SHARD, settings_of
from service.core.registry import TERMINAL, JobProgress, JobRecord, Registry
from training import pipelines
from training.checkpoint import ModelArtifact
from training.config import DistillConfig
from training.dataset import Dataset
from training.defaults import resolve
from training.device import resolve_device
from training.distill.ranking import rank_user_range
from training.distill.shards import (
    CandidateOptions,
    PrecomputedCandidates,
    ShardPlan,
    candidate_options,
    fingerprint,
    read_shards,
    shard_meta,
    write_shard,
)
from training.errors import JobCancelled
from training.scoring import TeacherScorer
from training.teachers import load_scorer
from worker.progress import StopCheck
from worker.recovery import JobLease
from worker.tasks import JobContext, registry_for

logger = logging.getLogger(__name__)

POLL_S = 0.2  # how often the parent looks at the shards other workers hold
PLAN = "plan.json"


def fans_out(settings: Settings, n_users: int, cfg: DistillConfig) -> bool:
    """True when a distill job ranks its candidates in shards (a method with lists); they
    stay on disk for training unless the method is RRD (training.budget.lists_mapped)."""
    return cfg.method != "none" and n_users >= settings.fanout_min_users


def shards_root(settings: Settings, job_id: str) -> Path:
    """The job's shard directory: hidden, beside the models, on the disk workers share."""
    return settings.models_dir.resolve() / f".candidates-{job_id}"


def starts_key(job_id: str) -> str:
    """Hash shard index -> times its ranking started (a rerun after a lost worker: 2)."""
    return f"{keys.PREFIX}:job:{job_id}:shards:starts"


def log_key(job_id: str) -> str:
    """List of "<shard> <worker>", one per ranking started, in order."""
    return f"{keys.PREFIX}:job:{job_id}:shards:log"


@dataclass
class ShardWork:
    """What ranking a job's shards needs; built by the parent and by each shard task."""

    job_id: str
    settings: Settings
    registry: Registry
    dataset: Dataset
    teacher: ModelArtifact
    scorer: TeacherScorer
    options: CandidateOptions
    plan: ShardPlan
    fp: str

    @property
    def root(self) -> Path:
        return shards_root(self.settings, self.job_id)


def open_work(job: JobRecord, settings: Settings, registry: Registry, *,
              dataset: Dataset | None = None, plan: ShardPlan | None = None) -> ShardWork:  # fmt: skip
    """The job's teacher, data and list options (as pipelines.distill_student resolves them)."""
    cfg = DistillConfig.model_validate(job.params["config"])
    record = registry.get_model(str(job.params["teacher_id"]), field="teacher_id")
    store = ArtifactStore.from_settings(settings)  # as _distill_body reads them
    if dataset is None:
        dataset = Dataset.load(store.resolve(registry.get_dataset(str(record.lineage.dataset_id)).path))
    teacher = ModelArtifact.load(store.resolve(record.path))
    teacher.check_dataset(dataset.fingerprint)
    train = dataset.csr("train")
    options = candidate_options(resolve(cfg, train), train)
    if options is None:
        raise ValueError(f"method={cfg.method!r} ranks no candidate lists to shard")
    scorer = load_scorer(teacher, train, resolve_device(settings.device))
    tm = teacher.manifest
    fp = fingerprint(f"{tm.id}@{tm.created_at}@{dataset.fingerprint}", train, options)
    plan = plan or ShardPlan(dataset.n_users, settings.fanout_shard_users)
    return ShardWork(job.id, settings, registry, dataset, teacher, scorer, options, plan, fp)


def report_progress(work: ShardWork) -> None:
    """The job's progress: shards written of shards, and the users they hold."""
    done = [m for i in range(work.plan.n_shards) if (m := shard_meta(work.root, i)) is not None]
    users = sum(int(m["hi"]) - int(m["lo"]) for m in done)
    n = work.plan.n_shards
    message = f"{users} of {work.plan.n_users} users ranked in {len(done)} of {n} shards"
    work.registry.update_progress(work.job_id, JobProgress(stage="candidates", epoch=len(done),
                                                           epochs=n, message=message))  # fmt: skip


def compute_shard(work: ShardWork, index: int, should_stop: Callable[[], bool], worker: str) -> bool:
    """Rank and write shard `index` unless it is written or another worker holds it.

    Returns True when this call wrote it. Raises JobCancelled when should_stop says so;
    a lease lost while stalled (another worker may have taken the shard) returns False.
    """
    if shard_meta(work.root, index) is not None:
        return False
    client = work.registry.redis
    lease = JobLease(client, f"{work.job_id}:shard-{index}", work.settings)
    if not lease.acquire():
        return False
    try:
        if shard_meta(work.root, index) is not None:  # written between the check and the lease
            return False
        expires = work.settings.result_expires_s
        pipe = client.pipeline()
        pipe.hincrby(starts_key(work.job_id), str(index), 1)
        pipe.rpush(log_key(work.job_id), f"{index} {worker}")
        pipe.expire(starts_key(work.job_id), expires)
        pipe.expire(log_key(work.job_id), expires)
        pipe.execute()
        lo, hi = work.plan.users(index)
        t0 = time.perf_counter()
        opts = work.options
        try:
            lists = rank_user_range(
                work.scorer, work.dataset.csr("train"), opts.groups, opts.top_l, lo, hi,
                chunk=work.settings.fanout_chunk_users, with_scores=opts.with_scores,
                should_stop=lambda: lease.lost or should_stop(),
            )  # fmt: skip
        except JobCancelled:
            if lease.lost:
                logger.warning("job %s: shard %d lost its lease (stalled); left to another worker",
                               work.job_id, index)  # fmt: skip
                return False
            raise
        seconds = round(time.perf_counter() - t0, 3)
        wrote = write_shard(work.root, index, lists, lo=lo, fp=work.fp,
                            extra={"worker": worker, "seconds": seconds})  # fmt: skip
    finally:
        lease.release()
    if wrote:
        logger.info("job %s: shard %d of %d (users %d..%d) ranked in %.2fs", work.job_id, index,
                    work.plan.n_shards, lo, hi - 1, seconds)  # fmt: skip
        report_progress(work)
    return wrote


def _worker_name(task: Any) -> str:
    request = getattr(task, "request", None)
    return str(getattr(request, "hostname", None) or f"{socket.gethostname()}:{os.getpid()}")


def _write_plan(work: ShardWork) -> None:
    """plan.json: the cut and the lists' fingerprint. Shards of another plan (the shard size
    setting changed between two attempts of the job) are removed first."""
    root = work.root
    plan = {"n_users": work.plan.n_users, "shard_users": work.plan.shard_users, "fingerprint": work.fp}
    path = root / PLAN
    if path.is_file() and json.loads(path.read_text()) == plan:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tmp = root / f".{PLAN}.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, path)


def _read_plan(root: Path) -> ShardPlan | None:
    try:
        raw = json.loads((root / PLAN).read_text())
    except FileNotFoundError:
        return None
    return ShardPlan(int(raw["n_users"]), int(raw["shard_users"]))


def rank_in_shards(ctx: JobContext, work: ShardWork) -> PrecomputedCandidates:
    """The parent: send the shard tasks, rank shards here too, wait for the rest."""
    _write_plan(work)
    n = work.plan.n_shards
    pending = [i for i in range(n) if shard_meta(work.root, i) is None]
    report_progress(work)
    logger.info("job %s: candidates in %d shards of %d users (%d to rank)", work.job_id, n,
                work.plan.shard_users, len(pending))  # fmt: skip
    # Other workers see the shards only through a shared data dir, which an object store
    # (UNKD_ARTIFACT_URL: one data dir per host) does not promise: the parent ranks them all.
    if pending and ArtifactStore.from_settings(work.settings).in_place:
        app = getattr(ctx.reporter.task, "app", None) or current_app
        group(
            [app.signature(CANDIDATE_SHARD, args=(work.job_id, i), immutable=True,
                           queue=work.settings.train_queue) for i in pending],
            app=app,
        ).apply_async()  # fmt: skip
    worker = _worker_name(ctx.reporter.task)
    while pending := [i for i in reversed(range(n)) if shard_meta(work.root, i) is None]:
        ranked = False
        for i in pending:
            if ctx.stop():
                raise JobCancelled("stopped while ranking the teacher's candidates in shards")
            ranked = compute_shard(work, i, ctx.stop, worker) or ranked
        if not ranked:  # the rest are held by other workers (a dead one's lease expires)
            time.sleep(POLL_S)
    report_progress(work)
    lists = read_shards(work.root, work.plan, work.fp, mmap=work.options.mmap)
    return PrecomputedCandidates(lists, work.options)


def distill_in_shards(ctx: JobContext, dataset: Dataset, cfg: DistillConfig,
                      dataset_id: str) -> ModelArtifact:  # fmt: skip
    """_distill_body's training for a job that fans out: shards, then the student."""
    work = open_work(ctx.job, ctx.settings, ctx.registry, dataset=dataset)
    keep = False  # the shards outlive this attempt only when the job will run again
    try:
        candidates = rank_in_shards(ctx, work)
        return pipelines.distill_student(
            dataset, work.teacher, cfg, ctx.model_dir, device=resolve_device(ctx.settings.device),
            on_progress=ctx.reporter, should_stop=ctx.stop, model_id=ctx.model_id,
            dataset_id=dataset_id, candidates=candidates,
        )  # fmt: skip
    except JobCancelled:
        keep = ctx.stop.lost or ctx.stop.shutdown
        raise
    except (redis.RedisError, OSError) as exc:  # retried (transient) unless deterministic
        keep = not isinstance(exc, (FileNotFoundError, PermissionError))
        raise
    finally:
        if not keep:
            shutil.rmtree(work.root, ignore_errors=True)


# -- the shard tasks (any worker) ---------------------------------------------------------

_last_work: dict[str, ShardWork] = {}  # one job's teacher and data per process, reused by its shards


def run_shard(task: Task, job_id: str, index: int) -> dict[str, Any]:
    """Rank one shard of a fanned-out job, unless done, held, or the job is over."""
    settings = settings_of(task.app)
    registry = registry_for(settings)
    job = registry.get_job(job_id)
    root = shards_root(settings, job_id)
    plan = _read_plan(root)
    idle = {"job_id": job_id, "shard": index, "ranked": False}
    if job.status in TERMINAL or plan is None or shard_meta(root, index) is not None:
        return idle
    work = _last_work.get(job_id)
    if work is None or work.plan != plan:
        _last_work.clear()
        work = _last_work[job_id] = open_work(job, settings, registry, plan=plan)
    stop = StopCheck(registry, job_id, settings.job_soft_time_limit_s)

    def should_stop() -> bool:
        return stop() or registry.get_job(job_id).status in TERMINAL

    try:
        ranked = compute_shard(work, index, should_stop, _worker_name(task))
    except JobCancelled:
        return idle
    except FileNotFoundError:  # the job ended and removed its shards meanwhile
        return idle
    return {**idle, "ranked": ranked}


@shared_task(bind=True, name=CANDIDATE_SHARD)
def candidate_shard(self: Task, job_id: str, index: int) -> dict[str, Any]:
    """Rank one candidate shard of a distillation job (sent by the job's parent task)."""
    return run_shard(self, job_id, index)
