"""The head-share cap met by construction (training/calibration.py): per-user head shifts.

Expected answers come from numpy brute force over the embeddings: every user's full score
row, training items removed, sorted by (-score, item) as training.topk breaks ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training.calibration import HEAD_MARGIN, SHIFT_PAD, Exposure, exposure, head_shifts
from training.scoring import EmbeddingScorer

CPU = torch.device("cpu")
K = 20


def _world(seed: int, n_users: int = 120, n_items: int = 90, d: int = 6):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    head = np.zeros(n_items, dtype=bool)
    head[rng.choice(n_items, 20, replace=False)] = True
    dense = rng.random((n_users, n_items)) < 0.15
    train = sp.csr_matrix(dense.astype(np.float32))
    student_u = rng.normal(size=(n_users, d)).astype(np.float32)
    student_i = rng.normal(size=(n_items, d)).astype(np.float32)
    student_i[head] += 0.8  # a head-heavy student
    teacher_u = rng.normal(size=(n_users, d)).astype(np.float32)
    teacher_i = rng.normal(size=(n_items, d)).astype(np.float32)
    return train, head, (student_u, student_i), (teacher_u, teacher_i)


def _brute_head_counts(
    user_emb: np.ndarray, item_emb: np.ndarray, train: sp.csr_matrix, head: np.ndarray
) -> np.ndarray:
    scores = user_emb.astype(np.float64) @ item_emb.T.astype(np.float64)
    counts = np.zeros(len(user_emb), dtype=np.int64)
    seen = train.toarray() > 0
    for u in range(len(user_emb)):
        items = np.flatnonzero(~seen[u])
        order = items[np.lexsort((items, -scores[u, items]))][:K]
        counts[u] = int(head[order].sum())
    return counts


def _shifted(user_emb: np.ndarray, item_emb: np.ndarray, head: np.ndarray, beta: np.ndarray):  # type: ignore[no-untyped-def]
    return (
        np.concatenate([user_emb, beta[:, None]], axis=1),
        np.concatenate([item_emb, -head.astype(np.float32)[:, None]], axis=1),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exposure_counts_each_users_head_slots(seed: int) -> None:
    train, head, (su, si), _ = _world(seed)
    got = exposure(EmbeddingScorer(su, si, CPU), train, head)
    want = _brute_head_counts(su, si, train, head)
    np.testing.assert_array_equal(got.head, want)
    assert got.share == pytest.approx(want.sum() / got.slots.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_user_gets_more_head_items_than_from_the_teacher(seed: int) -> None:
    train, head, (su, si), (tu, ti) = _world(seed)
    teacher = Exposure(_brute_head_counts(tu, ti, train, head), np.full(len(tu), K, dtype=np.int64))
    before = _brute_head_counts(su, si, train, head)
    assert (before > teacher.head).sum() > 10, "the fixture's student should be head-heavier"
    shifts = head_shifts(su, si, teacher, train, head)
    after = _brute_head_counts(*_shifted(su, si, head, shifts.beta), train, head)
    assert (after <= teacher.head).all()
    # Users already at or under their teacher keep their list: no shift.
    np.testing.assert_array_equal(shifts.beta[before <= teacher.head], 0.0)
    # Each shift is the smallest that gives the user's count: a little less, one head item more.
    over = np.flatnonzero(shifts.beta > 0)
    less = shifts.beta.copy()
    less[over] = np.maximum(0.0, less[over] - 2 * SHIFT_PAD)
    again = _brute_head_counts(*_shifted(su, si, head, less), train, head)
    assert (again[over] > after[over]).all()
    # Over any set of users, so over a validation or a test half alike.
    half = np.random.default_rng(seed).permutation(len(su))[: len(su) // 2]
    assert after[half].sum() <= teacher.head[half].sum()
    assert shifts.head_share_before == pytest.approx(before.sum() / (K * len(su)))


def test_within_a_group_the_students_order_is_kept() -> None:
    train, head, (su, si), (tu, ti) = _world(3)
    teacher = Exposure(_brute_head_counts(tu, ti, train, head), np.full(len(tu), K, dtype=np.int64))
    shifts = head_shifts(su, si, teacher, train, head)
    u2, i2 = shifts.apply(su, si, head)
    assert u2.shape[1] == su.shape[1] + 1 and set(np.unique(i2[:, -1])) <= {-1.0, 0.0}
    before, after = su @ si.T, u2 @ i2.T
    for group in (head, ~head):
        for u in range(0, len(su), 17):
            np.testing.assert_array_equal(
                np.argsort(-before[u, group], kind="stable"),
                np.argsort(-after[u, group], kind="stable"),
            )


def test_a_student_under_its_teacher_is_left_alone() -> None:
    train, head, (su, si), _ = _world(4)
    counts = _brute_head_counts(su, si, train, head)
    teacher = Exposure(counts + 1, np.full(len(su), K, dtype=np.int64))
    shifts = head_shifts(su, si, teacher, train, head)
    assert not shifts.beta.any() and shifts.users_shifted == 0.0
    u2, i2 = shifts.apply(su, si, head)
    assert u2 is su and i2 is si  # no column when nobody is shifted


def test_a_job_that_misses_its_cap_says_so(tiny_dataset) -> None:  # type: ignore[no-untyped-def]
    """cap_rule "select" keeps an epoch; when it is above the teacher, the recorded cap says
    met=False with both figures, and the CLI/report line says MISSED."""
    from training.config import DistillConfig
    from training.pipelines import _meet_cap
    from training.trainer import FitResult

    train = tiny_dataset.csr("train")
    head = np.asarray(tiny_dataset.groups(4)) == 0
    rng = np.random.default_rng(0)
    user = rng.normal(size=(tiny_dataset.n_users, 4)).astype(np.float32)
    item = rng.normal(size=(tiny_dataset.n_items, 4)).astype(np.float32)
    item[head] += 3.0  # every head item tops every list
    result = FitResult(user, item, 1, 1)
    teacher = Exposure(np.zeros(tiny_dataset.n_users, np.int64), np.full(tiny_dataset.n_users, K))
    cfg = DistillConfig(method="unkd", dim=4, cap_rule="select")
    cap = _meet_cap(result, cfg, train, head, teacher, CPU, None)
    assert cap.met is False and cap.teacher == 0.0 and cap.student > 0.1
    assert cap.summary().startswith("head-share cap MISSED: ")
    # The default rule meets the same cap: every head item goes below the other items.
    shifted = FitResult(user, item, 1, 1)
    cap = _meet_cap(shifted, DistillConfig(method="unkd", dim=4), train, head, teacher, CPU, None)
    assert cap.met is True and cap.student == 0.0 and cap.shift_column == 4
    assert shifted.user_emb.shape[1] == 5 and cap.summary().startswith("head-share cap met: ")


def test_level_with_the_teacher_is_not_enough_the_margin_goes_under_it() -> None:
    """A student far more head-heavy than its teacher would end level with it on every user;
    the margin takes one head item more from the cheapest users until the share over every
    user is HEAD_MARGIN under the teacher's, and no user goes over its teacher."""
    train, head, (su, si), _ = _world(5)
    si = si.copy()
    si[head] += 5.0  # every list all head where it can be
    before = _brute_head_counts(su, si, train, head)
    teacher = Exposure(np.maximum(before - 6, 0), np.full(len(su), K, dtype=np.int64))
    shifts = head_shifts(su, si, teacher, train, head)
    after = _brute_head_counts(*_shifted(su, si, head, shifts.beta), train, head)
    assert (after <= teacher.head).all()
    share, theirs = after.sum() / (K * len(su)), teacher.share
    assert share <= theirs - HEAD_MARGIN
    # ... and not far past it: the margin costs about as many head items as it needs.
    assert share > theirs - HEAD_MARGIN - 5 / (K * len(su))
    assert (after < teacher.head).sum() >= 1
    no_margin = head_shifts(su, si, teacher, train, head, margin=0.0)
    level = _brute_head_counts(*_shifted(su, si, head, no_margin.beta), train, head)
    np.testing.assert_array_equal(level, teacher.head)  # "at most" alone ends level
