"""The fan-out phases (worker/fanout_phases.py), each a class behind worker.shards.Phase:
a shard written by a phase holds exactly the lists brute force gives for its users.

Pure logic: the phases read only the work's directory, fingerprint and teacher scorer, so
the work here is a stand-in with those three."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training.distill.shards import CandidateOptions, ShardPlan, read_shards, shard_dir, shard_meta
from training.errors import JobCancelled
from training.scoring import EmbeddingScorer
from worker.fanout_phases import CandidatePhase, EvalPhase
from worker.shards import Phase

CPU = torch.device("cpu")
N_USERS, N_ITEMS, DIM = 11, 17, 4


def _scorer(seed: int) -> tuple[EmbeddingScorer, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    i = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    return EmbeddingScorer(u, i, CPU), u.astype(np.float64) @ i.T.astype(np.float64)


def _seen(seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.3).astype(np.float32)
    return sp.csr_matrix(dense)


def _brute_top(scores: np.ndarray, seen: sp.csr_matrix, users: np.ndarray, k: int) -> np.ndarray:
    """Each user's k best unseen items, best first (-1 past the unseen ones)."""
    out = np.full((len(users), k), -1, dtype=np.int64)
    dense = seen.toarray() > 0
    for row, u in enumerate(users):
        ranked = [int(j) for j in np.argsort(-scores[u], kind="stable") if not dense[u, j]]
        out[row, : min(k, len(ranked))] = ranked[:k]
    return out


def _work(root: Path, scorer: EmbeddingScorer) -> Any:
    return SimpleNamespace(root=root, fp="fp-test", scorer=scorer)


def test_each_phase_is_a_phase() -> None:
    opts = CandidateOptions(np.zeros(N_ITEMS, dtype=np.int64), 5, False, True)
    phases: list[Phase] = [
        CandidatePhase(opts, _seen(0), chunk=4),
        EvalPhase(_scorer(1)[0], np.arange(N_USERS), _seen(0), 3, 4),
    ]
    assert [(p.name, p.task, p.verb) for p in phases] == [
        ("candidates", "unkd.candidate_shard", "ranked"),
        ("evaluate", "unkd.eval_shard", "evaluated"),
    ]


def test_candidate_shards_hold_the_teachers_best_unseen_items(tmp_path: Path) -> None:
    teacher, scores = _scorer(2)
    train = _seen(3)
    phase = CandidatePhase(
        CandidateOptions(np.zeros(N_ITEMS, dtype=np.int64), 5, False, True), train, chunk=2
    )
    work = _work(tmp_path / ".candidates-j", teacher)
    work.root.mkdir()
    plan = ShardPlan(N_USERS, 4)
    for index in reversed(range(plan.n_shards)):
        lo, hi = plan.users(index)
        assert phase.write_shard(work, index, lo, hi, lambda: False, {"worker": "w"})
        assert shard_meta(work.root, index)["worker"] == "w"  # type: ignore[index]
    # Written once: a second writer of the same shard writes nothing.
    assert not phase.write_shard(work, 0, *plan.users(0), lambda: False, {})
    lists = read_shards(work.root, plan, work.fp, mmap=False)
    expected = _brute_top(scores, train, np.arange(N_USERS), 5)
    np.testing.assert_array_equal(np.asarray(lists.items), expected)


def test_eval_shards_hold_the_students_and_the_teachers_top_k(tmp_path: Path) -> None:
    teacher, teacher_scores = _scorer(4)
    student, student_scores = _scorer(5)
    excluded = _seen(6)
    users = np.array([0, 2, 3, 5, 8, 9, 10], dtype=np.int64)  # the evaluated users
    phase = EvalPhase(student, users, excluded, kmax=3, chunk=2)
    work = _work(tmp_path / ".evaluate-j", teacher)
    work.root.mkdir()
    plan = ShardPlan(len(users), 3)
    for index in range(plan.n_shards):
        lo, hi = plan.users(index)
        assert phase.write_shard(work, index, lo, hi, lambda: False, {})
        meta = shard_meta(work.root, index)
        assert meta is not None and (meta["lo"], meta["hi"], meta["fingerprint"]) == (
            lo,
            hi,
            "fp-test",
        )
    for name, scores in (("student", student_scores), ("teacher", teacher_scores)):
        got = np.concatenate(
            [np.load(shard_dir(work.root, i) / f"{name}.npy") for i in range(plan.n_shards)]
        )
        np.testing.assert_array_equal(got, _brute_top(scores, excluded, users, 3), err_msg=name)


def test_eval_shard_stops_when_asked(tmp_path: Path) -> None:
    phase = EvalPhase(_scorer(7)[0], np.arange(N_USERS), _seen(8), 3, 4)
    work = _work(tmp_path / ".evaluate-j", _scorer(9)[0])
    work.root.mkdir()
    with pytest.raises(JobCancelled):
        phase.write_shard(work, 0, 0, 4, lambda: True, {})
    assert shard_meta(work.root, 0) is None
