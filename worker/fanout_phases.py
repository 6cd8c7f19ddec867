"""The two phases of a distill job that fans out, one class each behind shards.Phase.

- `CandidatePhase`: its teacher's candidate lists over all users (before training).
- `EvalPhase`: its student's report lists (the student's and the teacher's top-K of the
  evaluated users, after training).

Each is opened by the parent (worker/fanout.py) and, from the plan the parent wrote, by
every shard task (`CANDIDATE_SHARDS`, `EVAL_SHARDS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from service.core.artifacts import ArtifactStore
from service.core.config import Settings
from service.core.payloads import DistillPayload, payload_of
from service.core.queue import CANDIDATE_SHARD, EVAL_SHARD
from service.core.registry import JobRecord, Registry
from training.checkpoint import ModelArtifact
from training.config import EvalConfig
from training.defaults import resolve
from training.device import resolve_device
from training.distill.ranking import rank_user_range
from training.distill.shards import (
    CandidateOptions,
    ShardPlan,
    candidate_options,
    fingerprint,
    write_arrays,
    write_shard,
)
from training.errors import JobCancelled
from training.evaluation import evaluated_users, exclusion_csr
from training.scoring import EmbeddingScorer, TeacherScorer
from training.teachers import load_scorer
from training.topk import topk_from_scorer
from worker.inputs import DistillInputs, distill_inputs
from worker.shards import ShardTask, ShardWork, student_dir, student_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidatePhase:
    """The teacher's candidate lists of every user, as the job's method asks for them."""

    options: CandidateOptions
    train: sp.csr_matrix
    chunk: int  # users ranked between two stop checks (settings.fanout_chunk_users)

    name = "candidates"
    task = CANDIDATE_SHARD
    verb = "ranked"

    def write_shard(
        self,
        work: ShardWork,
        index: int,
        lo: int,
        hi: int,
        should_stop: Callable[[], bool],
        extra: dict[str, Any],
    ) -> bool:
        t0 = time.perf_counter()
        opts = self.options
        lists = rank_user_range(
            work.scorer,
            self.train,
            opts.groups,
            opts.top_l,
            lo,
            hi,
            chunk=self.chunk,
            with_scores=opts.with_scores,
            should_stop=should_stop,
        )
        seconds = round(time.perf_counter() - t0, 3)
        return write_shard(
            work.root, index, lists, lo=lo, fp=work.fp, extra={**extra, "seconds": seconds}
        )


@dataclass(frozen=True)
class EvalPhase:
    """The student's and the teacher's top-K lists of the evaluated users of a shard, with
    the report's exclusions (training.evaluation); the plan cuts positions in `users`."""

    student: TeacherScorer
    users: np.ndarray  # (n_evaluated,) sorted user ids with a test positive
    excluded: sp.csr_matrix
    kmax: int
    chunk: int

    name = "evaluate"
    task = EVAL_SHARD
    verb = "evaluated"

    def write_shard(
        self,
        work: ShardWork,
        index: int,
        lo: int,
        hi: int,
        should_stop: Callable[[], bool],
        extra: dict[str, Any],
    ) -> bool:
        t0 = time.perf_counter()
        users = self.users[lo:hi]
        arrays = {}
        for name, scorer in (("student", self.student), ("teacher", work.scorer)):
            if should_stop():
                raise JobCancelled(f"stopped while evaluating shard {index}")
            top = topk_from_scorer(scorer, users, self.excluded, self.kmax, chunk=self.chunk)
            arrays[name] = top.astype(np.int32)  # item ids < 2^31
        seconds = round(time.perf_counter() - t0, 3)
        meta = {"index": index, "lo": lo, "hi": hi, "fingerprint": work.fp, **extra}
        return write_arrays(work.root, index, arrays, {**meta, "seconds": seconds})


# -- opening a phase's work ----------------------------------------------------------------


def candidate_work(
    job_id: str,
    inputs: DistillInputs,
    settings: Settings,
    registry: Registry,
    *,
    plan: ShardPlan | None = None,
) -> tuple[ShardWork, CandidatePhase]:
    """The candidates phase of a job (its teacher, data and list options, as
    pipelines.distill_student resolves them) and the phase itself."""
    store = ArtifactStore.from_settings(settings)
    dataset, cfg = inputs.dataset, inputs.config
    teacher = ModelArtifact.load(inputs.teacher_dir)
    teacher.check_dataset(dataset.fingerprint)
    train = dataset.csr("train")
    options = candidate_options(resolve(cfg, train), train)
    if options is None:
        raise ValueError(f"method={cfg.method!r} ranks no candidate lists to shard")
    scorer = load_scorer(teacher, train, resolve_device(settings.device))
    tm = teacher.manifest
    fp = fingerprint(f"{tm.id}@{tm.created_at}@{dataset.fingerprint}", train, options)
    phase = CandidatePhase(options, train, settings.fanout_chunk_users)
    plan = plan or ShardPlan(dataset.n_users, settings.fanout_shard_users)
    work = ShardWork(job_id, settings, registry, dataset, teacher, scorer, plan, fp, store, phase)
    return work, phase


def _distill_payload(job: JobRecord) -> DistillPayload:
    payload = payload_of(job)
    if not isinstance(payload, DistillPayload):
        raise ValueError(f"job {job.id} is a {job.kind} job: it has no shards")
    return payload


def open_candidates(
    job: JobRecord, settings: Settings, registry: Registry, plan: ShardPlan, fp: str
) -> ShardWork | None:
    """A shard task's candidates work, from the job's inputs (worker/inputs.py), cut as the
    parent's plan says."""
    store = ArtifactStore.from_settings(settings)
    inputs = distill_inputs(_distill_payload(job), settings, registry, store)
    return candidate_work(job.id, inputs, settings, registry, plan=plan)[0]


def eval_fingerprint(user_emb: np.ndarray, item_emb: np.ndarray, teacher_fp: str, kmax: int) -> str:
    """Names an evaluation's lists: the student's weights, the teacher and data, K."""
    h = hashlib.blake2b(digest_size=12)
    for part in (np.ascontiguousarray(user_emb), np.ascontiguousarray(item_emb)):
        h.update(part.tobytes())
    h.update(f"{teacher_fp}@{kmax}".encode())
    return h.hexdigest()


def eval_work(
    base: ShardWork,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    kmax: int,
    chunk: int,
    device: torch.device,
) -> ShardWork:
    """The evaluation phase of `base`'s job (its teacher, data and store), for this student."""
    users = evaluated_users(base.dataset, "test")
    phase = EvalPhase(
        EmbeddingScorer(user_emb, item_emb, device=device),
        users,
        exclusion_csr(base.dataset, "test"),
        kmax,
        chunk,
    )
    return dataclasses.replace(
        base,
        phase=phase,
        plan=ShardPlan(len(users), base.settings.fanout_shard_users),
        fp=eval_fingerprint(user_emb, item_emb, base.fp, kmax),
    )


def open_evaluation(
    job: JobRecord, settings: Settings, registry: Registry, plan: ShardPlan, fp: str
) -> ShardWork | None:
    """A shard task's evaluation work: the job's teacher and data, the student the parent
    left (this disk, or the store's scratch, fetched into this host's artifact cache, which
    prune_cache bounds); None when that student is not the one the plan names (an older
    attempt's)."""
    store = ArtifactStore.from_settings(settings)
    inputs = distill_inputs(_distill_payload(job), settings, registry, store)
    base, _ = candidate_work(job.id, inputs, settings, registry)
    if base.shared_disk:
        where = student_dir(settings, job.id)
    else:
        where = base.store.fetch(student_key(job.id, fp))
    with np.load(where / "student.npz") as z:
        user_emb, item_emb = z["user_emb"], z["item_emb"]
    cfg = EvalConfig()
    work = eval_work(
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


CANDIDATE_SHARDS = ShardTask(CandidatePhase.name, open_candidates)
EVAL_SHARDS = ShardTask(EvalPhase.name, open_evaluation)
