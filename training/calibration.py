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

# The student's head share over every user ends at least this far under its teacher's
# (head_shifts: "less", not only "at most").
HEAD_MARGIN = 0.005
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


def _shift_to(hs: np.ndarray, rs: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """(b,) the smallest shift leaving at most c head items in each top-k (0: no shift
    needed; NaN: c cannot be reached, the other items being too few to fill the list).

    hs, rs: (b, k) head and other scores, best first, -inf padded; c: (b,) int targets.
    """
    rows = np.arange(len(c))
    n_rest = np.isfinite(rs).sum(axis=1)
    bound = (c >= 0) & (c < k)
    h_next = np.where(bound, hs[rows, np.clip(c, 0, k - 1)], -np.inf)  # the (c+1)-th head item
    r_idx = k - c - 1  # the other item it must trail: then k - c others rank above it
    reachable = r_idx < n_rest
    r_at = np.where(reachable, rs[rows, np.clip(r_idx, 0, k - 1)], np.inf)
    gap = h_next - r_at
    beta = np.where(np.isfinite(gap) & (gap >= 0), gap + SHIFT_PAD, 0.0)
    return np.where(bound & ~reachable & np.isfinite(h_next), np.nan, beta)


def _head_count(hs: np.ndarray, rs: np.ndarray, beta: np.ndarray, k: int) -> np.ndarray:
    """(b,) head items in each top-k once the head scores are lowered by beta (b,)."""
    shifted = hs - beta[:, None]
    merged = np.sort(np.concatenate([shifted, rs], axis=1), axis=1)[:, ::-1]
    kth = merged[:, k - 1 : k]
    return (np.isfinite(shifted) & (shifted >= kth)).sum(axis=1)


def head_shifts(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    teacher: Exposure,
    train: sp.csr_matrix,
    head_items: np.ndarray,
    *,
    k: int = VALID_K,
    margin: float = HEAD_MARGIN,
    chunk: int = 2048,
) -> HeadShifts:
    """For every user, the smallest shift of the head scores that leaves the student's top-k
    (training items excluded) with at most as many head items as the teacher's; then, where
    that leaves the student's head share over every user less than `margin` under the
    teacher's, one head item fewer for the users whose lists that changes least.

    With H the user's head scores and R the other items' scores, each best first, a list
    with at most c head items needs H[c] - beta below R[k - c - 1] (the k - c other items
    then all rank above the (c+1)-th head item), so beta_u = H[c] - R[k - c - 1] (+ pad) when
    that is positive. No constraint when c = k or fewer than c + 1 head items are left. A
    teacher list of c head items proves the user has k - c other items left, so c is always
    reachable; the margin's extra head item fewer only where it is.

    The margin turns "at most" into "less": without it a student far more head-heavy than its
    teacher ends level with it on every user (MF-100 on Amazon-Beauty: 0.403 against 0.403).
    The extra step goes to the users whose (h-th) head item is closest to the next other item,
    so the smallest score changes buy it.

    Args:
        user_emb, item_emb: (n_users, d), (n_items, d) the trained student.
        teacher: the teacher's `exposure` on the same training split.
        head_items: (n_items,) bool, the head popularity group.
        margin: the head share over every user is brought this far under the teacher's.
    """
    head = torch.from_numpy(np.asarray(head_items, dtype=bool))
    items = torch.from_numpy(np.asarray(item_emb, dtype=np.float32))
    n_users = len(user_emb)
    beta = np.zeros(n_users, dtype=np.float64)
    extra = np.full(n_users, np.nan)  # the shift for one head item fewer than after beta
    count = np.zeros(n_users, dtype=np.int64)  # head items after beta
    head_before, slots = 0, 0
    for start in range(0, n_users, chunk):
        block = np.arange(start, min(start + chunk, n_users))
        s = torch.from_numpy(np.asarray(user_emb[block], dtype=np.float32)) @ items.T  # (b, n)
        seen = train[block]
        rows = np.repeat(np.arange(len(block)), np.diff(seen.indptr))
        s[torch.from_numpy(rows), torch.from_numpy(seen.indices.astype(np.int64))] = -math.inf
        hs, rs = _sorted_top(s, head, k), _sorted_top(s, ~head, k)  # (b, k) each
        shown = np.isfinite(np.concatenate([hs, rs], axis=1)).sum(axis=1).clip(max=k)
        head_before += int(_head_count(hs, rs, np.zeros(len(block)), k).sum())
        slots += int(shown.sum())
        b = np.nan_to_num(_shift_to(hs, rs, teacher.head[block], k), nan=0.0)
        h = _head_count(hs, rs, b, k)
        more = _shift_to(hs, rs, h - 1, k)  # NaN where h = 0 or unreachable
        beta[block], count[block] = b, h
        extra[block] = np.where(h > 0, np.maximum(more, b), np.nan)
    # The margin: one head item fewer, cheapest users first, until the share is under it.
    short = int(count.sum()) - math.floor((teacher.share - margin) * slots)
    if short > 0:
        cost = extra - beta
        order = np.argsort(np.where(np.isfinite(cost), cost, np.inf), kind="stable")
        take = order[: min(short, int(np.isfinite(cost).sum()))]
        beta[take] = extra[take]
    before = head_before / slots if slots else 0.0
    shifts = HeadShifts(beta.astype(np.float32), before)
    logger.info(
        "head shifts: %.1f %% of users shifted (mean shift %.4g; %d for the margin); unshifted "
        "head share@%d %.4f, teacher's %.4f",
        100 * shifts.users_shifted,
        shifts.new_user,
        max(short, 0),
        k,
        before,
        teacher.share,
    )
    return shifts
