"""The shards of a job that fans out, whatever its phase: where they live, who ranks which,
how they travel between hosts, and the shard task's run (worker/fanout.py tells the story).

A phase (worker/fanout_phases.py) says what a shard of it holds and how it is ranked,
behind the `Phase` protocol; everything here works the same for every phase.
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
from typing import Any, Protocol

from celery import Task

from service.core import keys
from service.core.artifacts import SCRATCH, ArtifactExistsError, ArtifactStore
from service.core.config import Settings
from service.core.queue import settings_of
from service.core.registry import TERMINAL, JobProgress, JobRecord, Registry
from training.checkpoint import ModelArtifact
from training.dataset import Dataset
from training.distill.shards import ShardPlan, shard_dir, shard_meta
from training.errors import JobCancelled
from training.scoring import TeacherScorer
from worker.jobs import registry_for
from worker.progress import StopCheck
from worker.recovery import JobLease

logger = logging.getLogger(__name__)

PLAN = "plan.json"
# The phases a job may fan out, in order; each has its own directory, keys and shard task.
PHASE_NAMES = ("candidates", "evaluate")


class Phase(Protocol):
    """One phase of a fanned-out job: what its shards hold and how one is ranked."""

    @property
    def name(self) -> str:
        """One of PHASE_NAMES: names its directory, Redis keys, scratch keys and leases."""
        ...

    @property
    def task(self) -> str:
        """The name of its shard task (service.core.queue)."""
        ...

    @property
    def verb(self) -> str:
        """What a shard does to its users, for the job's progress message."""
        ...

    def write_shard(
        self,
        work: ShardWork,
        index: int,
        lo: int,
        hi: int,
        should_stop: Callable[[], bool],
        extra: dict[str, Any],
    ) -> bool:
        """Rank shard `index` (plan positions lo..hi) and write it once under work.root;
        True when this call wrote it. Raises JobCancelled when should_stop says so."""
        ...


def shards_root(settings: Settings, job_id: str, phase: str = PHASE_NAMES[0]) -> Path:
    """The job's shard directory of a phase: hidden, beside the models, on the disk workers
    share."""
    if phase not in PHASE_NAMES:
        raise ValueError(f"phase={phase!r}: one of {PHASE_NAMES}")
    return settings.models_dir.resolve() / f".{phase}-{job_id}"


def student_dir(settings: Settings, job_id: str) -> Path:
    """The trained student's embeddings (student.npz), where evaluation shards read them."""
    return settings.models_dir.resolve() / f".student-{job_id}"


def scratch_prefix(job_id: str, phase: str | None = None) -> str:
    """The job's shards in an object store (all phases, or one): scratch keys, deleted when
    the job ends."""
    return f"{SCRATCH}/{job_id}" + (f"/{phase}" if phase is not None else "")


def scratch_key(job_id: str, index: int, phase: str) -> str:
    return f"{scratch_prefix(job_id, phase)}/shard-{index:05d}"


def student_key(job_id: str, fp: str) -> str:
    """The trained student's embeddings, for evaluation shards on other hosts (named by the
    evaluation's fingerprint: another attempt's student is another key)."""
    return f"{scratch_prefix(job_id)}/student-{fp}"


def remove_local_shards(settings: Settings, job_id: str) -> None:
    """The job's shards of every phase and its student's copy, on this disk."""
    for phase in PHASE_NAMES:
        shutil.rmtree(shards_root(settings, job_id, phase), ignore_errors=True)
    shutil.rmtree(student_dir(settings, job_id), ignore_errors=True)


def remove_shards(settings: Settings, job_id: str) -> None:
    """The job ended: its shards go, on this disk and in the store's scratch."""
    remove_local_shards(settings, job_id)
    store = ArtifactStore.from_settings(settings)
    if not store.in_place:
        store.delete_scratch(scratch_prefix(job_id))


@dataclass
class ShardWork:
    """What ranking one phase's shards needs; built by the parent and by each shard task.

    scorer: the teacher's (every phase ranks with it); plan: the cut of the phase's users;
    fp: the fingerprint of the phase's lists.
    """

    job_id: str
    settings: Settings
    registry: Registry
    dataset: Dataset
    teacher: ModelArtifact
    scorer: TeacherScorer
    plan: ShardPlan
    fp: str
    store: ArtifactStore
    phase: Phase

    @property
    def root(self) -> Path:
        return shards_root(self.settings, self.job_id, self.phase.name)

    @property
    def shared_disk(self) -> bool:
        """Workers share this data dir (no artifact URL); else shards travel through the store."""
        return self.store.in_place

    def key(self, what: str) -> str:
        return keys.fanout_shards(self.job_id, self.phase.name, what)

    def in_store(self) -> set[int]:
        """Shards uploaded to the store's scratch by other hosts (one listing; none when the
        data dir is shared)."""
        if self.shared_disk:
            return set()
        return {
            int(k.rsplit("-", 1)[1])
            for k in self.store.complete_keys(scratch_prefix(self.job_id, self.phase.name))
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
            return self.store.exists(scratch_key(self.job_id, index, self.phase.name))
        return bool(self.registry.redis.sismember(self.key("done"), str(index)))

    def mark_done(self, index: int) -> None:
        if not self.shared_disk:
            pipe = self.registry.redis.pipeline()
            pipe.sadd(self.key("done"), str(index))
            pipe.expire(self.key("done"), self.settings.result_expires_s)
            pipe.execute()


def report_progress(work: ShardWork) -> None:
    """The job's progress: shards written of shards (here or in the store), and their users."""
    n = work.plan.n_shards
    done = {i for i in range(n) if shard_meta(work.root, i) is not None}
    if not work.shared_disk:  # and those written on other hosts (the parent's are in the set)
        done |= {int(i) for i in work.registry.redis.smembers(work.key("done"))}
    users = sum(hi - lo for lo, hi in map(work.plan.users, done))
    message = f"{users} of {work.plan.n_users} users {work.phase.verb} in {len(done)} of {n} shards"
    work.registry.update_progress(
        work.job_id, JobProgress(stage=work.phase.name, epoch=len(done), epochs=n, message=message)
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
    phase = work.phase.name
    lease = JobLease(client, keys.fanout_shard_holder(work.job_id, phase, index), work.settings)
    if not lease.acquire():
        return False
    try:
        if work.done(index, parent=parent):  # written between the check and the lease
            return False
        expires = work.settings.result_expires_s
        pipe = client.pipeline()
        starts, log = work.key("starts"), work.key("log")
        pipe.hincrby(starts, str(index), 1)
        pipe.rpush(log, f"{index} {worker}")
        pipe.expire(starts, expires)
        pipe.expire(log, expires)
        pipe.execute()
        lo, hi = work.plan.users(index)
        if upload:
            work.root.mkdir(parents=True, exist_ok=True)  # this host's own scratch
        t0 = time.perf_counter()
        try:
            wrote = work.phase.write_shard(
                work, index, lo, hi, lambda: lease.lost or should_stop(), {"worker": worker}
            )
        except JobCancelled:
            if lease.lost:
                logger.warning(
                    "job %s: %s shard %d lost its lease (stalled); left to another worker",
                    work.job_id,
                    phase,
                    index,
                )
                return False
            raise
        seconds = time.perf_counter() - t0
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
            phase,
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
        work.store.put(scratch_key(work.job_id, index, work.phase.name), local)
    except ArtifactExistsError:  # another worker's copy of the same shard got there first
        return False
    finally:
        shutil.rmtree(local, ignore_errors=True)
        try:
            work.root.rmdir()  # this host keeps nothing of the job
        except OSError:
            pass
    return True


def worker_name(task: Any) -> str:
    request = getattr(task, "request", None)
    return str(getattr(request, "hostname", None) or f"{socket.gethostname()}:{os.getpid()}")


def write_plan(work: ShardWork) -> None:
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
        raw = work.registry.redis.get(work.key("plan"))
        if raw is not None and json.loads(raw) != plan:
            work.store.delete_scratch(scratch_prefix(work.job_id, work.phase.name))
            work.registry.redis.delete(work.key("done"))
        work.registry.redis.set(
            work.key("plan"), json.dumps(plan), ex=work.settings.result_expires_s
        )
    if path.is_file() and json.loads(path.read_text()) == plan:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tmp = root / f".{PLAN}.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, path)


def read_plan(
    root: Path, registry: Registry, job_id: str, shared_disk: bool, phase: str
) -> tuple[ShardPlan, str] | None:
    """The parent's plan and fingerprint: its plan.json on the shared disk, else its copy in Redis."""
    try:
        if shared_disk:
            raw = json.loads((root / PLAN).read_text())
        else:
            text = registry.redis.get(keys.fanout_shards(job_id, phase, "plan"))
            if text is None:
                return None
            raw = json.loads(text)
    except FileNotFoundError:
        return None
    return ShardPlan(int(raw["n_users"]), int(raw["shard_users"])), str(raw["fingerprint"])


# -- the shard tasks (any worker) ---------------------------------------------------------

# A shard task's work, from the job and the plan the parent wrote (plan, fingerprint); None
# when the plan names other lists than the ones this worker would rank (an older attempt's).
OpenWork = Callable[[JobRecord, Settings, Registry, ShardPlan, str], "ShardWork | None"]


@dataclass(frozen=True)
class ShardTask:
    """What a phase's shard task needs before its work is open: the phase's name and how
    to open its work."""

    phase: str
    open: OpenWork


_last_work: dict[tuple[str, str], ShardWork] = {}  # one job's work per process, for its shards


def run_shard(task: Task, job_id: str, index: int, kind: ShardTask) -> dict[str, Any]:
    """Rank one shard of a fanned-out job, unless done, held, or the job is over."""
    settings = settings_of(task.app)
    registry = registry_for(settings)
    job = registry.get_job(job_id)
    phase = kind.phase
    root = shards_root(settings, job_id, phase)
    store = ArtifactStore.from_settings(settings)
    planned = read_plan(root, registry, job_id, store.in_place, phase)
    idle = {"job_id": job_id, "phase": phase, "shard": index, "ranked": False}
    if job.status in TERMINAL or planned is None or shard_meta(root, index) is not None:
        return idle
    done_set = keys.fanout_shards(job_id, phase, "done")
    if not store.in_place and registry.redis.sismember(done_set, str(index)):
        return idle
    plan, fp = planned
    work = _last_work.get((job_id, phase))
    if work is None or work.plan != plan or work.fp != fp:
        _last_work.clear()
        opened = kind.open(job, settings, registry, plan, fp)
        if opened is None:
            return idle
        work = _last_work[(job_id, phase)] = opened
    stop = StopCheck(registry, job_id, settings.job_soft_time_limit_s)

    def should_stop() -> bool:
        return stop() or registry.get_job(job_id).status in TERMINAL

    try:
        ranked = compute_shard(
            work, index, should_stop, worker_name(task), upload=not store.in_place
        )
    except JobCancelled:
        return idle
    except FileNotFoundError:  # the job ended and removed its shards meanwhile
        return idle
    if ranked and not store.in_place and registry.get_job(job_id).status in TERMINAL:
        store.delete_scratch(scratch_key(job_id, index, phase))  # uploaded after the job's cleanup
    return {**idle, "ranked": ranked}
