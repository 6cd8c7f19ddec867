"""Meeting the head-share cap by construction: per-user head shifts folded into the
embeddings (docs/quality.md, "Debiased by default").

A UnKD student learns its teacher's ranking *within* popularity groups; how many slots the
head group gets *across* groups still comes from its BPR term and its start (ALS factors of
its own size, which give the head group most slots). Selecting an epoch under the cap only
works when some epoch happens to be under it. This module makes the cap hold instead, for
every user: where the student's top-K list holds more head items than its teacher's list for
that user, the user's head scores are lowered by the smallest shift beta_u that brings the
count down to the teacher's:

    s'(u, i) = s(u, i) - beta_u * [i in head]    = [p_u, beta_u] . [q_i, -[i in head]]

so the shift is one more embedding column (users beta_u >= 0, items -1 in the head group,
0 elsewhere) and FAISS still ranks by inner product. Within a group nothing moves: the
student's order of the head items among themselves, and of the other items among themselves,
is the one it learned. Users whose student list is no more head-heavy than their teacher's
keep beta_u = 0.

Why per user and not one shift for all: a head share is a property of the lists, and the
validation and the test users are disjoint halves of the users (training.split), so a share
over one half moves with the half drawn (the ALS-100 teacher on MovieLens-100K: 0.516 over the
validation users, 0.489 over the test users). One shift that put the student 0.014 under its
teacher over every user (3 standard errors of a half's mean) still left it 0.0003 above over
the test half. With a per-user cap the student's head count is at most its teacher's on every
user, so its head share is at most the teacher's over any set of users: the validation half,
the test half, an experiment arm. No held-out label enters the shifts.

The measure (`exposure`): head slots and slots of each user's top-K list, training items
excluded, for every user; its share is what the job's cap, its status and the publish gate
compare. A user the student was not trained on (fold-in) has no teacher list: serving gives
it the mean shift (`HeadShifts.new_user`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from training.scoring import TeacherScorer
from training.topk import topk_from_scorer
from training.validation import VALID_K

logger = logging.getLogger(__name__)

# Added to each shift so that float32 rounding of the served inner products cannot put a
# head item back level with the other item it must rank below.
SHIFT_PAD = 1e-4


@dataclass(frozen=True)
class Exposure:
    """Per user: head-group slots and slots of a model's top-K list."""

    head: np.ndarray  # (n_users,) int64
    slots: np.ndarray  # (n_users,) int64

    @property
    def share(self) -> float:
        total = int(self.slots.sum())
        return float(self.head.sum() / total) if total else 0.0


def exposure(
    scorer: TeacherScorer,
    train: sp.csr_matrix,
    head_items: np.ndarray,
    k: int = VALID_K,
    block: int = 16_384,
) -> Exposure:
    """Any model's (teacher or student) top-k lists for every user, training items excluded,
    counted per user."""
    n_users = train.shape[0]
    users = np.arange(n_users, dtype=np.int64)
    head = np.zeros(n_users, dtype=np.int64)
    slots = np.zeros(n_users, dtype=np.int64)
    for start in range(0, n_users, block):  # memory O(block x k)
        top = topk_from_scorer(scorer, users[start : start + block], train, k)
        shown = top >= 0
        head[start : start + len(top)] = (head_items[np.maximum(top, 0)] & shown).sum(axis=1)
        slots[start : start + len(top)] = shown.sum(axis=1)
    return Exposure(head, slots)


@dataclass(frozen=True)
class HeadShifts:
    """The per-user shifts of one student, and its head share before them."""

    beta: np.ndarray  # (n_users,) float32 >= 0
    head_share_before: float  # the student's exposure share, unshifted

    @property
    def users_shifted(self) -> float:
        """Share of users whose list the shift changed."""
        return float((self.beta > 0).mean()) if len(self.beta) else 0.0

    @property
    def new_user(self) -> float:
        """The shift for a user without a teacher list (fold-in): the mean over users."""
        return float(self.beta.mean()) if len(self.beta) else 0.0

    def apply(
        self, user_emb: np.ndarray, item_emb: np.ndarray, head_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shifted student as embeddings: one more column (users beta_u, head items -1).

        Unchanged (no column) when no user is shifted.
        """
        if not (self.beta > 0).any():
            return user_emb, item_emb
        col = -np.asarray(head_items, dtype=np.float32)[:, None]
        return (
            np.concatenate([np.asarray(user_emb, np.float32), self.beta[:, None]], axis=1),
            np.concatenate([np.asarray(item_emb, np.float32), col], axis=1),
        )


def _sorted_top(scores: torch.Tensor, mask: torch.Tensor, k: int) -> np.ndarray:
    """(b, k) float64 best scores among the masked items, best first, -inf padded."""
    out = np.full((scores.shape[0], k), -np.inf)
    kk = min(k, int(mask.sum()))
    if kk:
        out[:, :kk] = torch.topk(scores.masked_fill(~mask, -math.inf), kk, dim=1).values.double()
    return out


def head_shifts(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    teacher: Exposure,
    train: sp.csr_matrix,
    head_items: np.ndarray,
    *,
    k: int = VALID_K,
    chunk: int = 2048,
) -> HeadShifts:
    """For every user, the smallest shift of the head scores that leaves the student's top-k
    (training items excluded) with at most as many head items as the teacher's.

    With H the user's head scores and R the other items' scores, each best first, a list
    with at most c head items needs H[c] - beta below R[k - c - 1] (the k - c other items
    then all rank above the (c+1)-th head item), so beta_u = H[c] - R[k - c - 1] (+ pad) when
    that is positive. No constraint when c = k or fewer than c + 1 head items are left; when
    fewer than k - c other items are left, the head items must fill the list and beta_u puts
    every other item above them.

    Args:
        user_emb, item_emb: (n_users, d), (n_items, d) the trained student.
        teacher: the teacher's `exposure` on the same training split.
        head_items: (n_items,) bool, the head popularity group.
    """
    head = torch.from_numpy(np.asarray(head_items, dtype=bool))
    items = torch.from_numpy(np.asarray(item_emb, dtype=np.float32))
    n_users = len(user_emb)
    beta = np.zeros(n_users, dtype=np.float32)
    head_before, slots_before = 0, 0
    for start in range(0, n_users, chunk):
        block = np.arange(start, min(start + chunk, n_users))
        s = torch.from_numpy(np.asarray(user_emb[block], dtype=np.float32)) @ items.T  # (b, n)
        seen = train[block]
        rows = np.repeat(np.arange(len(block)), np.diff(seen.indptr))
        s[torch.from_numpy(rows), torch.from_numpy(seen.indices.astype(np.int64))] = -math.inf
        hs, rs = _sorted_top(s, head, k), _sorted_top(s, ~head, k)  # (b, k) each
        # The unshifted list: head items ranking above the k-th best of the merged scores.
        merged = np.sort(np.concatenate([hs, rs], axis=1), axis=1)[:, ::-1][:, :k]
        shown = np.isfinite(merged)
        head_before += int((np.isfinite(hs) & (hs >= merged[:, -1:])).sum())
        slots_before += int(shown.sum())
        c = teacher.head[block]
        n_rest = np.isfinite(rs).sum(axis=1)
        r_idx = np.minimum(k - c - 1, n_rest - 1)  # the other item the (c+1)-th head must trail
        bound = c < k
        h_next = np.where(bound, hs[np.arange(len(block)), np.minimum(c, k - 1)], -np.inf)
        r_at = np.where(r_idx >= 0, rs[np.arange(len(block)), np.maximum(r_idx, 0)], np.inf)
        gap = h_next - r_at
        need = bound & np.isfinite(gap) & (gap >= 0)
        beta[block[need]] = (gap[need] + SHIFT_PAD).astype(np.float32)
    before = head_before / slots_before if slots_before else 0.0
    shifts = HeadShifts(beta, before)
    logger.info(
        "head shifts: %.1f %% of users shifted (mean shift %.4g); unshifted head share@%d %.4f, "
        "teacher's %.4f",
        100 * shifts.users_shifted,
        shifts.new_user,
        k,
        before,
        teacher.share,
    )
    return shifts
