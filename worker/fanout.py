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
them figure by figure). Both stages share the machinery of worker/shards.py; what differs
is a phase class each (worker/fanout_phases.py). This module is the parent's side. Every
other job runs exactly as before.

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

import logging
import os
import shutil
import time

import numpy as np
import redis
import torch
from celery import current_app, group

from service.core.config import Settings
from service.core.payloads import DistillPayload
from training import pipelines
from training.checkpoint import ModelArtifact
from training.config import DistillConfig, EvalConfig
from training.dataset import Dataset
from training.device import resolve_device
from training.distill.shards import PrecomputedCandidates, read_shards, shard_dir, shard_meta
from training.errors import JobCancelled
from training.evaluation import evaluate_topk
from training.manifest import QualityReport
from worker.fanout_phases import CandidatePhase, candidate_work, eval_work
from worker.inputs import DistillInputs
from worker.jobs import JobContext
from worker.shards import (
    ShardWork,
    compute_shard,
    remove_local_shards,
    remove_shards,
    report_progress,
    scratch_key,
    student_dir,
    student_key,
    worker_name,
    write_plan,
)

__all__ = ["distill_in_shards", "fans_out", "remove_shards"]

logger = logging.getLogger(__name__)

POLL_S = 0.2  # how often the parent looks at the shards other workers hold
POLL_STORE_S = 1.0  # the same with an object store (one listing each time)


def fans_out(settings: Settings, n_users: int, cfg: DistillConfig) -> bool:
    """True when a distill job ranks its candidates in shards (a method with lists); they
    stay on disk for training unless the method is RRD (training.budget.lists_mapped)."""
    return cfg.method != "none" and n_users >= settings.fanout_min_users


def run_shards(ctx: JobContext[DistillPayload], work: ShardWork) -> None:
    """The parent: send the shard tasks, rank shards here too, wait for the rest."""
    write_plan(work)
    n = work.plan.n_shards
    phase = work.phase.name
    pending = [i for i in range(n) if shard_meta(work.root, i) is None]
    report_progress(work)
    logger.info(
        "job %s: %s in %d shards of %d users (%d to do)",
        work.job_id,
        phase,
        n,
        work.plan.shard_users,
        len(pending),
    )
    if pending:  # any worker takes them: on the shared disk, or through the store's scratch
        app = getattr(ctx.reporter.task, "app", None) or current_app
        group(
            [
                app.signature(
                    work.phase.task,
                    args=(work.job_id, i),
                    immutable=True,
                    queue=work.settings.train_queue,
                )
                for i in pending
            ],
            app=app,
        ).apply_async()
    worker = worker_name(ctx.reporter.task)
    while pending := [i for i in reversed(range(n)) if shard_meta(work.root, i) is None]:
        ranked = False
        uploaded = work.in_store()
        for i in pending:
            if ctx.stop():
                raise JobCancelled(f"stopped in the {phase} shards")
            if i in uploaded:  # ranked on another host: fetched (verified) into this job's dir
                work.store.fetch_into(scratch_key(work.job_id, i, phase), shard_dir(work.root, i))
                ranked = True
                continue
            ranked = compute_shard(work, i, ctx.stop, worker, parent=True) or ranked
        if not ranked:  # the rest are held by other workers (a dead one's lease expires)
            time.sleep(POLL_S if work.shared_disk else POLL_STORE_S)
    report_progress(work)


def rank_in_shards(
    ctx: JobContext[DistillPayload], work: ShardWork, phase: CandidatePhase
) -> PrecomputedCandidates:
    """The parent's candidates phase: every shard written, then read back (memory-mapped)."""
    run_shards(ctx, work)
    lists = read_shards(work.root, work.plan, work.fp, mmap=phase.options.mmap)
    return PrecomputedCandidates(lists, phase.options)


def distill_in_shards(ctx: JobContext[DistillPayload], inputs: DistillInputs) -> ModelArtifact:
    """A distill job's training when it fans out: candidate shards, the student, then its
    report in evaluation shards."""
    work, phase = candidate_work(ctx.job.id, inputs, ctx.settings, ctx.registry)
    keep = False  # the shards outlive this attempt only when the job will run again
    try:
        candidates = rank_in_shards(ctx, work, phase)

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
            inputs.dataset,
            work.teacher,
            inputs.config,
            ctx.model_dir,
            device=resolve_device(ctx.settings.device),
            on_progress=ctx.reporter,
            should_stop=ctx.stop,
            model_id=ctx.model_id,
            dataset_id=inputs.dataset_id,
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


def evaluate_in_shards(
    ctx: JobContext[DistillPayload],
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
    work = eval_work(base, user_emb, item_emb, max(cfg.ks), cfg.user_chunk, device)
    where = student_dir(work.settings, work.job_id)
    marker = where / "fingerprint"
    if not (marker.is_file() and marker.read_text() == work.fp):  # an earlier attempt's goes
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
