"""Jobs that fan out: a large distillation job's teacher candidates, ranked in shards of
users by every worker that is up, kept on disk, and its student's report, ranked the same
way (docs/service.md, "Jobs that fan out").

A distill job over at least settings.fanout_min_users users (and a method with candidate
lists) runs its "candidates" stage this way, and, once its student is trained, its
"evaluate" stage: the student's and the teacher's top-K lists of the evaluated users (the
report's ranking, which is nearly all of its cost) in shards of `unkd.eval_shard` tasks, the
student's embeddings left where they read them (`.student-<job>/`, or the store's scratch).
The report is then computed in the parent from those lists (training.evaluation.evaluate_topk,
in blocks of users), the same report one process gives (tests/e2e/test_fanout.py compares
them figure by figure). Both stages share the machinery below, keyed by phase. Every other
job runs exactly as before.

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

import dataclasses
import hashlib
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

import numpy as np
import redis
import scipy.sparse as sp
import torch
from celery import Task, current_app, group, shared_task

from service.core import keys
from service.core.artifacts import SCRATCH, ArtifactExistsError, ArtifactStore
from service.core.config import Settings
from service.core.queue import CANDIDATE_SHARD, EVAL_SHARD, settings_of
from service.core.registry import TERMINAL, JobProgress, JobRecord, Registry
from training import pipelines
from training.checkpoint import ModelArtifact
from training.config import DistillConfig, EvalConfig
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
    write_arrays,
    write_shard,
)
from training.errors import JobCancelled
from training.evaluation import evaluate_topk, evaluated_users, exclusion_csr
from training.manifest import QualityReport
from training.scoring import EmbeddingScorer, TeacherScorer
from training.teachers import load_scorer
from training.topk import topk_from_scorer
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


# A fanned-out job's two phases: its teacher's candidate lists (over all users) and, after
# training, its student's report (the top-K lists of the student and of the teacher over
# the evaluated users). Each has its own directory, keys and shard task.
CANDIDATES, EVALUATE = "candidates", "evaluate"
PHASES = (CANDIDATES, EVALUATE)


def _tag(phase: str) -> str:
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r}: one of {PHASES}")
    return "" if phase == CANDIDATES else f":{phase}"


def shards_root(settings: Settings, job_id: str, phase: str = CANDIDATES) -> Path:
    """The job's shard directory: hidden, beside the models, on the disk workers share."""
    _tag(phase)
    return settings.models_dir.resolve() / f".{phase}-{job_id}"


def scratch_prefix(job_id: str, phase: str | None = None) -> str:
    """The job's shards in an object store (all phases, or one): scratch keys, deleted when
    the job ends."""
    return f"{SCRATCH}/{job_id}" + (f"/{phase}" if phase is not None else "")


def scratch_key(job_id: str, index: int, phase: str = CANDIDATES) -> str:
    return f"{scratch_prefix(job_id, phase)}/shard-{index:05d}"


def student_key(job_id: str, fp: str) -> str:
    """The trained student's embeddings, for evaluation shards on other hosts (named by the
    evaluation's fingerprint: another attempt's student is another key)."""
    return f"{scratch_prefix(job_id)}/student-{fp}"


def done_key(job_id: str, phase: str = CANDIDATES) -> str:
    """Set of the shards written anywhere: a host that does not share the parent's disk
    cannot see the shards the parent keeps there."""
    return f"{keys.PREFIX}:job:{job_id}{_tag(phase)}:shards:done"


def plan_key(job_id: str, phase: str = CANDIDATES) -> str:
    """The plan (as plan.json) for workers on other hosts, which do not see the parent's disk."""
    return f"{keys.PREFIX}:job:{job_id}{_tag(phase)}:shards:plan"


def remove_local_shards(settings: Settings, job_id: str) -> None:
    """The job's shards of every phase and its student's copy, on this disk."""
    for phase in PHASES:
        shutil.rmtree(shards_root(settings, job_id, phase), ignore_errors=True)
    shutil.rmtree(student_dir(settings, job_id), ignore_errors=True)


def remove_shards(settings: Settings, job_id: str) -> None:
    """The job ended: its shards go, on this disk and in the store's scratch."""
    remove_local_shards(settings, job_id)
    store = ArtifactStore.from_settings(settings)
    if not store.in_place:
        store.delete_scratch(scratch_prefix(job_id))


def starts_key(job_id: str, phase: str = CANDIDATES) -> str:
    """Hash shard index -> times its ranking started (a rerun after a lost worker: 2)."""
    return f"{keys.PREFIX}:job:{job_id}{_tag(phase)}:shards:starts"


def log_key(job_id: str, phase: str = CANDIDATES) -> str:
    """List of "<shard> <worker>", one per ranking started, in order."""
    return f"{keys.PREFIX}:job:{job_id}{_tag(phase)}:shards:log"


@dataclass
class EvalWork:
    """What an evaluation shard ranks: the student's and the teacher's top-K lists of the
    evaluated users of positions lo..hi, with the report's exclusions (training.evaluation)."""

    student: TeacherScorer
    users: np.ndarray  # (n_evaluated,) sorted user ids with a test positive
    excluded: sp.csr_matrix
    kmax: int
    chunk: int


@dataclass
class ShardWork:
    """What ranking a job's shards needs; built by the parent and by each shard task.

    phase CANDIDATES: `options` says which lists; the plan cuts all users. EVALUATE: `eval`
    says what to rank; the plan cuts the evaluated users (positions in eval.users).
    """

    job_id: str
    settings: Settings
    registry: Registry
    dataset: Dataset
    teacher: ModelArtifact
    scorer: TeacherScorer
    options: CandidateOptions | None
    plan: ShardPlan
    fp: str
    store: ArtifactStore
    phase: str = CANDIDATES
    eval: EvalWork | None = None

    @property
    def root(self) -> Path:
        return shards_root(self.settings, self.job_id, self.phase)

    def write_range(
        self, index: int, lo: int, hi: int, should_stop: Callable[[], bool], extra: dict[str, Any]
    ) -> tuple[bool, float]:
        """Rank shard `index` (plan positions lo..hi) and write it once under root: (written,
        seconds ranking)."""
        t0 = time.perf_counter()
        if self.phase == CANDIDATES:
            opts = self.options
            assert opts is not None
            lists = rank_user_range(
                self.scorer,
                self.dataset.csr("train"),
                opts.groups,
                opts.top_l,
                lo,
                hi,
                chunk=self.settings.fanout_chunk_users,
                with_scores=opts.with_scores,
                should_stop=should_stop,
            )
            seconds = round(time.perf_counter() - t0, 3)
            return write_shard(
                self.root, index, lists, lo=lo, fp=self.fp, extra={**extra, "seconds": seconds}
            ), seconds
        ev = self.eval
        assert ev is not None
        users = ev.users[lo:hi]
        arrays = {}
        for name, scorer in (("student", ev.student), ("teacher", self.scorer)):
            if should_stop():
                raise JobCancelled(f"stopped while evaluating shard {index}")
            top = topk_from_scorer(scorer, users, ev.excluded, ev.kmax, chunk=ev.chunk)
            arrays[name] = top.astype(np.int32)  # item ids < 2^31
        seconds = round(time.perf_counter() - t0, 3)
        meta = {
            "index": index,
            "lo": lo,
            "hi": hi,
            "fingerprint": self.fp,
            **extra,
            "seconds": seconds,
        }
        return write_arrays(self.root, index, arrays, meta), seconds

    @property
    def shared_disk(self) -> bool:
        """Workers share this data dir (no artifact URL); else shards travel through the store."""
        return self.store.in_place

    def in_store(self) -> set[int]:
        """Shards uploaded to the store's scratch by other hosts (one listing; none when the
        data dir is shared)."""
        if self.shared_disk:
            return set()
        return {
            int(k.rsplit("-", 1)[1])
            for k in self.store.complete_keys(scratch_prefix(self.job_id, self.phase))
        }

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
            return self.store.exists(scratch_key(self.job_id, index, self.phase))
        return bool(self.registry.redis.sismember(done_key(self.job_id, self.phase), str(index)))

    def mark_done(self, index: int) -> None:
        if not self.shared_disk:
            pipe = self.registry.redis.pipeline()
            pipe.sadd(done_key(self.job_id, self.phase), str(index))
            pipe.expire(done_key(self.job_id, self.phase), self.settings.result_expires_s)
            pipe.execute()


def open_work(
    job: JobRecord,
    settings: Settings,
    registry: Registry,
    *,
    dataset: Dataset | None = None,
    plan: ShardPlan | None = None,
) -> ShardWork:
    """The job's teacher, data and list options (as pipelines.distill_student resolves them)."""
    cfg = DistillConfig.model_validate(job.params["config"])
    record = registry.get_model(str(job.params["teacher_id"]), field="teacher_id")
    store = ArtifactStore.from_settings(settings)  # as _distill_body reads them
    if dataset is None:
        dataset = Dataset.load(
            store.resolve(registry.get_dataset(str(record.lineage.dataset_id)).path)
        )
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
        done |= {int(i) for i in work.registry.redis.smembers(done_key(work.job_id, work.phase))}
    users = sum(hi - lo for lo, hi in map(work.plan.users, done))
    verb = "ranked" if work.phase == CANDIDATES else "evaluated"
    message = f"{users} of {work.plan.n_users} users {verb} in {len(done)} of {n} shards"
    work.registry.update_progress(
        work.job_id, JobProgress(stage=work.phase, epoch=len(done), epochs=n, message=message)
    )


def compute_shard(
    work: ShardWork,
    index: int,
    should_stop: Callable[[], bool],
    worker: str,
    *,
    upload: bool = False,
    parent: bool = False,
) -> bool:
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
    name = f"shard-{index}" if work.phase == CANDIDATES else f"{work.phase}-shard-{index}"
    lease = JobLease(client, f"{work.job_id}:{name}", work.settings)
    if not lease.acquire():
        return False
    try:
        if work.done(index, parent=parent):  # written between the check and the lease
            return False
        expires = work.settings.result_expires_s
        pipe = client.pipeline()
        starts, log = starts_key(work.job_id, work.phase), log_key(work.job_id, work.phase)
        pipe.hincrby(starts, str(index), 1)
        pipe.rpush(log, f"{index} {worker}")
        pipe.expire(starts, expires)
        pipe.expire(log, expires)
        pipe.execute()
        lo, hi = work.plan.users(index)
        if upload:
            work.root.mkdir(parents=True, exist_ok=True)  # this host's own scratch
        try:
            wrote, seconds = work.write_range(
                index, lo, hi, lambda: lease.lost or should_stop(), {"worker": worker}
            )
        except JobCancelled:
            if lease.lost:
                logger.warning(
                    "job %s: %s shard %d lost its lease (stalled); left to another worker",
                    work.job_id,
                    work.phase,
                    index,
                )
                return False
            raise
        if wrote and upload:
            wrote = _upload(work, index)
        if wrote:
            work.mark_done(index)
    finally:
        lease.release()
    if wrote:
        logger.info(
            "job %s: %s shard %d of %d (users %d..%d) in %.2fs",
            work.job_id,
            work.phase,
            index,
            work.plan.n_shards,
            lo,
            hi - 1,
            seconds,
        )
        report_progress(work)
    return wrote


def _upload(work: ShardWork, index: int) -> bool:
    """Shard `index`, written here, into the store's scratch; the local copy removed."""
    local = shard_dir(work.root, index)
    try:
        work.store.put(scratch_key(work.job_id, index, work.phase), local)
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
    plan = {
        "n_users": work.plan.n_users,
        "shard_users": work.plan.shard_users,
        "fingerprint": work.fp,
    }
    path = root / PLAN
    if not work.shared_disk:  # for shard tasks on other hosts; shards of another plan go
        key = plan_key(work.job_id, work.phase)
        raw = work.registry.redis.get(key)
        if raw is not None and json.loads(raw) != plan:
            work.store.delete_scratch(scratch_prefix(work.job_id, work.phase))
            work.registry.redis.delete(done_key(work.job_id, work.phase))
        work.registry.redis.set(key, json.dumps(plan), ex=work.settings.result_expires_s)
    if path.is_file() and json.loads(path.read_text()) == plan:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tmp = root / f".{PLAN}.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, path)


def _read_plan(
    root: Path, registry: Registry, job_id: str, shared_disk: bool, phase: str = CANDIDATES
) -> tuple[ShardPlan, str] | None:
    """The parent's plan and fingerprint: its plan.json on the shared disk, else its copy in Redis."""
    try:
        if shared_disk:
            raw = json.loads((root / PLAN).read_text())
        else:
            text = registry.redis.get(plan_key(job_id, phase))
            if text is None:
                return None
            raw = json.loads(text)
    except FileNotFoundError:
        return None
    return ShardPlan(int(raw["n_users"]), int(raw["shard_users"])), str(raw["fingerprint"])


def rank_in_shards(ctx: JobContext, work: ShardWork) -> PrecomputedCandidates:
    """The parent's candidates phase: every shard written, then read back (memory-mapped)."""
    run_shards(ctx, work)
    assert work.options is not None
    lists = read_shards(work.root, work.plan, work.fp, mmap=work.options.mmap)
    return PrecomputedCandidates(lists, work.options)


def run_shards(ctx: JobContext, work: ShardWork) -> None:
    """The parent: send the shard tasks, rank shards here too, wait for the rest."""
    _write_plan(work)
    n = work.plan.n_shards
    pending = [i for i in range(n) if shard_meta(work.root, i) is None]
    report_progress(work)
    logger.info(
        "job %s: %s in %d shards of %d users (%d to do)",
        work.job_id,
        work.phase,
        n,
        work.plan.shard_users,
        len(pending),
    )
    if pending:  # any worker takes them: on the shared disk, or through the store's scratch
        app = getattr(ctx.reporter.task, "app", None) or current_app
        task = CANDIDATE_SHARD if work.phase == CANDIDATES else EVAL_SHARD
        group(
            [
                app.signature(
                    task, args=(work.job_id, i), immutable=True, queue=work.settings.train_queue
                )
                for i in pending
            ],
            app=app,
        ).apply_async()
    worker = _worker_name(ctx.reporter.task)
    while pending := [i for i in reversed(range(n)) if shard_meta(work.root, i) is None]:
        ranked = False
        uploaded = work.in_store()
        for i in pending:
            if ctx.stop():
                raise JobCancelled(f"stopped in the {work.phase} shards")
            if i in uploaded:  # ranked on another host: fetched (verified) into this job's dir
                work.store.fetch_into(
                    scratch_key(work.job_id, i, work.phase), shard_dir(work.root, i)
                )
                ranked = True
                continue
            ranked = compute_shard(work, i, ctx.stop, worker, parent=True) or ranked
        if not ranked:  # the rest are held by other workers (a dead one's lease expires)
            time.sleep(POLL_S if work.shared_disk else POLL_STORE_S)
    report_progress(work)


def distill_in_shards(
    ctx: JobContext, dataset: Dataset, cfg: DistillConfig, dataset_id: str
) -> ModelArtifact:
    """_distill_body's training for a job that fans out: candidate shards, the student, then
    its report in evaluation shards."""
    work = open_work(ctx.job, ctx.settings, ctx.registry, dataset=dataset)
    keep = False  # the shards outlive this attempt only when the job will run again
    try:
        candidates = rank_in_shards(ctx, work)

        def student_report(
            dataset: Dataset,
            user_emb: np.ndarray,
            item_emb: np.ndarray,
            teacher: ModelArtifact,
            eval_cfg: EvalConfig,
            device: torch.device,
        ) -> QualityReport:
            return evaluate_in_shards(ctx, work, user_emb, item_emb, eval_cfg, device)

        return pipelines.distill_student(
            dataset,
            work.teacher,
            cfg,
            ctx.model_dir,
            device=resolve_device(ctx.settings.device),
            on_progress=ctx.reporter,
            should_stop=ctx.stop,
            model_id=ctx.model_id,
            dataset_id=dataset_id,
            candidates=candidates,
            student_report=student_report,
        )
    except JobCancelled:
        keep = ctx.stop.lost or ctx.stop.shutdown
        raise
    except (redis.RedisError, OSError) as exc:  # retried (transient) unless deterministic
        keep = not isinstance(exc, (FileNotFoundError, PermissionError))
        raise
    finally:
        if not keep:
            remove_local_shards(ctx.settings, ctx.job.id)


# -- the evaluation phase: the student's report in shards of evaluated users ----------------


def student_dir(settings: Settings, job_id: str) -> Path:
    """The trained student's embeddings (student.npz), where evaluation shards read them."""
    return settings.models_dir.resolve() / f".student-{job_id}"


def eval_fingerprint(user_emb: np.ndarray, item_emb: np.ndarray, teacher_fp: str, kmax: int) -> str:
    """Names an evaluation's lists: the student's weights, the teacher and data, K."""
    h = hashlib.blake2b(digest_size=12)
    for part in (np.ascontiguousarray(user_emb), np.ascontiguousarray(item_emb)):
        h.update(part.tobytes())
    h.update(f"{teacher_fp}@{kmax}".encode())
    return h.hexdigest()


def _eval_work(
    base: ShardWork,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    kmax: int,
    chunk: int,
    device: torch.device,
) -> ShardWork:
    """The evaluation phase of `base`'s job (its teacher, data and store), for this student."""
    users = evaluated_users(base.dataset, "test")
    ev = EvalWork(
        EmbeddingScorer(user_emb, item_emb, device=device),
        users,
        exclusion_csr(base.dataset, "test"),
        kmax,
        chunk,
    )
    return dataclasses.replace(
        base,
        phase=EVALUATE,
        eval=ev,
        plan=ShardPlan(len(users), base.settings.fanout_shard_users),
        fp=eval_fingerprint(user_emb, item_emb, base.fp, kmax),
    )


def evaluate_in_shards(
    ctx: JobContext,
    base: ShardWork,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    cfg: EvalConfig,
    device: torch.device,
) -> QualityReport:
    """The student's report, its lists ranked in shards by every worker: the student's
    embeddings go where shard tasks read them (this disk, or the store's scratch), each shard
    ranks the student's and the teacher's top-K of its users, and the report is computed
    here from the lists, as pipelines._student_report computes it from its own."""
    work = _eval_work(base, user_emb, item_emb, max(cfg.ks), cfg.user_chunk, device)
    where = student_dir(work.settings, work.job_id)
    marker = where / "fingerprint"
    if not (
        marker.is_file() and marker.read_text() == work.fp
    ):  # an earlier attempt's student goes
        tmp = where.with_name(f"{where.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.savez(tmp / "student.npz", user_emb=user_emb, item_emb=item_emb)
        (tmp / "fingerprint").write_text(work.fp)
        shutil.rmtree(where, ignore_errors=True)
        os.rename(tmp, where)
    if not work.shared_disk:
        work.store.put(student_key(work.job_id, work.fp), where)
    run_shards(ctx, work)
    parts = [shard_dir(work.root, i) for i in range(work.plan.n_shards)]
    lists = {
        name: np.concatenate([np.load(d / f"{name}.npy") for d in parts]).astype(np.int64)
        for name in ("student", "teacher")
    }
    report = evaluate_topk(
        work.dataset,
        lists["student"],
        cfg=cfg,
        split="test",
        reference_topk=lists["teacher"],
        device=device,
    )
    return pipelines.with_teacher(work.dataset, report, work.teacher, cfg, device)


def open_eval_work(
    job: JobRecord, settings: Settings, registry: Registry, plan: ShardPlan, fp: str
) -> ShardWork | None:
    """A shard task's evaluation work: the job's teacher and data, the student the parent
    left (this disk, or the store's scratch, fetched into this host's artifact cache, which
    prune_cache bounds); None when that student is not the one the plan names (an older
    attempt's)."""
    base = open_work(job, settings, registry)
    if base.shared_disk:
        where = student_dir(settings, job.id)
    else:
        where = base.store.fetch(student_key(job.id, fp))
    with np.load(where / "student.npz") as z:
        user_emb, item_emb = z["user_emb"], z["item_emb"]
    cfg = EvalConfig()
    work = _eval_work(
        base, user_emb, item_emb, max(cfg.ks), cfg.user_chunk, resolve_device(settings.device)
    )
    if work.fp != fp or work.plan != plan:
        logger.warning(
            "job %s: the evaluation plan names other lists (%s) than this student's (%s)",
            job.id,
            fp,
            work.fp,
        )
        return None
    return work


# -- the shard tasks (any worker) ---------------------------------------------------------

_last_work: dict[
    tuple[str, str], ShardWork
] = {}  # one job's work per process, reused by its shards


def run_shard(task: Task, job_id: str, index: int, phase: str = CANDIDATES) -> dict[str, Any]:
    """Rank one shard of a fanned-out job, unless done, held, or the job is over."""
    settings = settings_of(task.app)
    registry = registry_for(settings)
    job = registry.get_job(job_id)
    root = shards_root(settings, job_id, phase)
    store = ArtifactStore.from_settings(settings)
    planned = _read_plan(root, registry, job_id, store.in_place, phase)
    idle = {"job_id": job_id, "phase": phase, "shard": index, "ranked": False}
    if job.status in TERMINAL or planned is None or shard_meta(root, index) is not None:
        return idle
    if not store.in_place and registry.redis.sismember(done_key(job_id, phase), str(index)):
        return idle
    plan, fp = planned
    work = _last_work.get((job_id, phase))
    if work is None or work.plan != plan or work.fp != fp:
        _last_work.clear()
        if phase == CANDIDATES:
            work = open_work(job, settings, registry, plan=plan)
        else:
            found = open_eval_work(job, settings, registry, plan, fp)
            if found is None:
                return idle
            work = found
        _last_work[(job_id, phase)] = work
    stop = StopCheck(registry, job_id, settings.job_soft_time_limit_s)

    def should_stop() -> bool:
        return stop() or registry.get_job(job_id).status in TERMINAL

    try:
        ranked = compute_shard(
            work, index, should_stop, _worker_name(task), upload=not store.in_place
        )
    except JobCancelled:
        return idle
    except FileNotFoundError:  # the job ended and removed its shards meanwhile
        return idle
    if ranked and not store.in_place and registry.get_job(job_id).status in TERMINAL:
        store.delete_scratch(scratch_key(job_id, index, phase))  # uploaded after the job's cleanup
    return {**idle, "ranked": ranked}


@shared_task(bind=True, name=CANDIDATE_SHARD)
def candidate_shard(self: Task, job_id: str, index: int) -> dict[str, Any]:
    """Rank one candidate shard of a distillation job (sent by the job's parent task)."""
    return run_shard(self, job_id, index, CANDIDATES)


@shared_task(bind=True, name=EVAL_SHARD)
def eval_shard(self: Task, job_id: str, index: int) -> dict[str, Any]:
    """Rank the student's and the teacher's report lists for one shard of evaluated users
    (sent by the job's parent task once the student is trained)."""
    return run_shard(self, job_id, index, EVALUATE)
