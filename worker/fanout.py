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
- **Storage: on disk, and through the store between hosts.** The parent keeps the shards in
  `<data dir>/models/.candidates-<job id>/` (plan.json, then shard-00000/ ...), each shard's
  meta.json naming its lists' fingerprint (teacher, data, grouping, list options): training
  reads them by memory map, which needs files on a filesystem. Workers that share that data
  dir (UNKD_ARTIFACT_URL unset) write their shards there too. With an object store each host
  has its own data dir: the plan goes to Redis, a shard task writes its shard on its own
  disk, uploads it to the store's scratch (`scratch/<job id>/shard-00003`, manifest last)
  and removes its copy; the parent lists the scratch once per poll and fetches each
  uploaded shard, verified, into its directory (ArtifactStore.fetch_into: not the fetch
  cache). A Redis set names the shards written anywhere, so a shard task does not rank one
  the parent keeps on its own disk. At 1M users a shard is ~335 MB at L = 500: the store
  moves each shard ranked elsewhere up once and down once. Everything (the directory, the
  scratch keys) is removed when the job succeeds, fails for good or is cancelled, and kept
  when it is requeued (worker lost or shutting down, a transient error), for its next
  attempt.
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
from service.core.artifacts import SCRATCH, ArtifactExistsError, ArtifactStore
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
    shard_dir,
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
POLL_STORE_S = 1.0  # the same with an object store (one listing each time)
PLAN = "plan.json"


def fans_out(settings: Settings, n_users: int, cfg: DistillConfig) -> bool:
    """True when a distill job ranks its candidates in shards (a method with lists); they
    stay on disk for training unless the method is RRD (training.budget.lists_mapped)."""
    return cfg.method != "none" and n_users >= settings.fanout_min_users


def shards_root(settings: Settings, job_id: str) -> Path:
    """The job's shard directory: hidden, beside the models, on the disk workers share."""
    return settings.models_dir.resolve() / f".candidates-{job_id}"


def scratch_prefix(job_id: str) -> str:
    """The job's shards in an object store: scratch keys, deleted when the job ends."""
    return f"{SCRATCH}/{job_id}"


def scratch_key(job_id: str, index: int) -> str:
    return f"{scratch_prefix(job_id)}/shard-{index:05d}"


def done_key(job_id: str) -> str:
    """Set of the shards written anywhere: a host that does not share the parent's disk
    cannot see the shards the parent keeps there."""
    return f"{keys.PREFIX}:job:{job_id}:shards:done"


def plan_key(job_id: str) -> str:
    """The plan (as plan.json) for workers on other hosts, which do not see the parent's disk."""
    return f"{keys.PREFIX}:job:{job_id}:shards:plan"


def remove_shards(settings: Settings, job_id: str) -> None:
    """The job ended: its shards go, on this disk and in the store's scratch."""
    shutil.rmtree(shards_root(settings, job_id), ignore_errors=True)
    store = ArtifactStore.from_settings(settings)
    if not store.in_place:
        store.delete_scratch(scratch_prefix(job_id))


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
    store: ArtifactStore

    @property
    def root(self) -> Path:
        return shards_root(self.settings, self.job_id)

    @property
    def shared_disk(self) -> bool:
        """Workers share this data dir (no artifact URL); else shards travel through the store."""
        return self.store.in_place

    def in_store(self) -> set[int]:
        """Shards uploaded to the store's scratch by other hosts (one listing; none when the
        data dir is shared)."""
        if self.shared_disk:
            return set()
        return {int(k.rsplit("-", 1)[1]) for k in self.store.complete_keys(scratch_prefix(self.job_id))}

    def done(self, index: int, *, parent: bool = False) -> bool:
        """Shard `index` is written: here (or on the shared disk), or on another host.

        parent: the job's own task asks. It must hold every shard in the end, so only a
        shard it can fetch (in the store) counts; a shard task also trusts the done set,
        which names the shards the parent keeps on its own disk. (A parent that runs again
        on another host finds its earlier local shards in the set but nowhere to fetch
        them from, and ranks them again.)
        """
        if shard_meta(self.root, index) is not None:
            return True
        if self.shared_disk:
            return False
        if parent:
            return self.store.exists(scratch_key(self.job_id, index))
        return bool(self.registry.redis.sismember(done_key(self.job_id), str(index)))

    def mark_done(self, index: int) -> None:
        if not self.shared_disk:
            pipe = self.registry.redis.pipeline()
            pipe.sadd(done_key(self.job_id), str(index))
            pipe.expire(done_key(self.job_id), self.settings.result_expires_s)
            pipe.execute()


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
    return ShardWork(job.id, settings, registry, dataset, teacher, scorer, options, plan, fp, store)


def report_progress(work: ShardWork) -> None:
    """The job's progress: shards written of shards (here or in the store), and their users."""
    n = work.plan.n_shards
    done = {i for i in range(n) if shard_meta(work.root, i) is not None}
    if not work.shared_disk:  # and those written on other hosts (the parent's are in the set)
        done |= {int(i) for i in work.registry.redis.smembers(done_key(work.job_id))}
    users = sum(hi - lo for lo, hi in map(work.plan.users, done))
    message = f"{users} of {work.plan.n_users} users ranked in {len(done)} of {n} shards"
    work.registry.update_progress(work.job_id, JobProgress(stage="candidates", epoch=len(done),
                                                           epochs=n, message=message))  # fmt: skip


def compute_shard(work: ShardWork, index: int, should_stop: Callable[[], bool], worker: str,
                  *, upload: bool = False, parent: bool = False) -> bool:  # fmt: skip
    """Rank and write shard `index` unless it is written or another worker holds it.

    upload: a shard task on a host that does not share the parent's disk: the shard is
    written here, uploaded to the store's scratch (manifest last), and the local copy removed.
    parent: the job's own task ranks it (ShardWork.done).
    Returns True when this call wrote it. Raises JobCancelled when should_stop says so;
    a lease lost while stalled (another worker may have taken the shard) returns False.
    """
    if work.done(index, parent=parent):
        return False
    client = work.registry.redis
    lease = JobLease(client, f"{work.job_id}:shard-{index}", work.settings)
    if not lease.acquire():
        return False
    try:
        if work.done(index, parent=parent):  # written between the check and the lease
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
        if upload:
            work.root.mkdir(parents=True, exist_ok=True)  # this host's own scratch
        wrote = write_shard(work.root, index, lists, lo=lo, fp=work.fp,
                            extra={"worker": worker, "seconds": seconds})  # fmt: skip
        if wrote and upload:
            wrote = _upload(work, index)
        if wrote:
            work.mark_done(index)
    finally:
        lease.release()
    if wrote:
        logger.info("job %s: shard %d of %d (users %d..%d) ranked in %.2fs", work.job_id, index,
                    work.plan.n_shards, lo, hi - 1, seconds)  # fmt: skip
        report_progress(work)
    return wrote


def _upload(work: ShardWork, index: int) -> bool:
    """Shard `index`, written here, into the store's scratch; the local copy removed."""
    local = shard_dir(work.root, index)
    try:
        work.store.put(scratch_key(work.job_id, index), local)
    except ArtifactExistsError:  # another worker's copy of the same shard got there first
        return False
    finally:
        shutil.rmtree(local, ignore_errors=True)
        try:
            work.root.rmdir()  # this host keeps nothing of the job
        except OSError:
            pass
    return True


def _worker_name(task: Any) -> str:
    request = getattr(task, "request", None)
    return str(getattr(request, "hostname", None) or f"{socket.gethostname()}:{os.getpid()}")


def _write_plan(work: ShardWork) -> None:
    """plan.json: the cut and the lists' fingerprint. Shards of another plan (the shard size
    setting changed between two attempts of the job) are removed first."""
    root = work.root
    plan = {"n_users": work.plan.n_users, "shard_users": work.plan.shard_users, "fingerprint": work.fp}
    path = root / PLAN
    if not work.shared_disk:  # for shard tasks on other hosts; shards of another plan go
        raw = work.registry.redis.get(plan_key(work.job_id))
        if raw is not None and json.loads(raw) != plan:
            work.store.delete_scratch(scratch_prefix(work.job_id))
            work.registry.redis.delete(done_key(work.job_id))
        work.registry.redis.set(plan_key(work.job_id), json.dumps(plan), ex=work.settings.result_expires_s)
    if path.is_file() and json.loads(path.read_text()) == plan:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tmp = root / f".{PLAN}.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, path)


def _read_plan(root: Path, registry: Registry, job_id: str, shared_disk: bool) -> ShardPlan | None:
    """The parent's plan: its plan.json on the shared disk, else its copy in Redis."""
    try:
        if shared_disk:
            raw = json.loads((root / PLAN).read_text())
        else:
            text = registry.redis.get(plan_key(job_id))
            if text is None:
                return None
            raw = json.loads(text)
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
    if pending:  # any worker takes them: on the shared disk, or through the store's scratch
        app = getattr(ctx.reporter.task, "app", None) or current_app
        group(
            [app.signature(CANDIDATE_SHARD, args=(work.job_id, i), immutable=True,
                           queue=work.settings.train_queue) for i in pending],
            app=app,
        ).apply_async()  # fmt: skip
    worker = _worker_name(ctx.reporter.task)
    while pending := [i for i in reversed(range(n)) if shard_meta(work.root, i) is None]:
        ranked = False
        uploaded = work.in_store()
        for i in pending:
            if ctx.stop():
                raise JobCancelled("stopped while ranking the teacher's candidates in shards")
            if i in uploaded:  # ranked on another host: fetched (verified) into this job's dir
                work.store.fetch_into(scratch_key(work.job_id, i), shard_dir(work.root, i))
                ranked = True
                continue
            ranked = compute_shard(work, i, ctx.stop, worker, parent=True) or ranked
        if not ranked:  # the rest are held by other workers (a dead one's lease expires)
            time.sleep(POLL_S if work.shared_disk else POLL_STORE_S)
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
    store = ArtifactStore.from_settings(settings)
    plan = _read_plan(root, registry, job_id, store.in_place)
    idle = {"job_id": job_id, "shard": index, "ranked": False}
    if job.status in TERMINAL or plan is None or shard_meta(root, index) is not None:
        return idle
    if not store.in_place and registry.redis.sismember(done_key(job_id), str(index)):
        return idle
    work = _last_work.get(job_id)
    if work is None or work.plan != plan:
        _last_work.clear()
        work = _last_work[job_id] = open_work(job, settings, registry, plan=plan)
    stop = StopCheck(registry, job_id, settings.job_soft_time_limit_s)

    def should_stop() -> bool:
        return stop() or registry.get_job(job_id).status in TERMINAL

    try:
        ranked = compute_shard(work, index, should_stop, _worker_name(task), upload=not store.in_place)
    except JobCancelled:
        return idle
    except FileNotFoundError:  # the job ended and removed its shards meanwhile
        return idle
    if ranked and not store.in_place and registry.get_job(job_id).status in TERMINAL:
        store.delete_scratch(scratch_key(job_id, index))  # uploaded after the job's cleanup
    return {**idle, "ranked": ranked}


@shared_task(bind=True, name=CANDIDATE_SHARD)
def candidate_shard(self: Task, job_id: str, index: int) -> dict[str, Any]:
    """Rank one candidate shard of a distillation job (sent by the job's parent task)."""
    return run_shard(self, job_id, index)
