"""One-off teacher rankings, computed in user chunks through the teacher's scorer so memory
never grows as users × items, and the rank sampler every distiller shares."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import scipy.sparse as sp
import torch

from training.errors import JobCancelled
from training.process_cache import ProcessCache
from training.progress import ShouldStop
from training.scoring import TeacherScorer
from training.topk import topk_rows


class CandidateLists:
    """For every user, the teacher's best unobserved items of each group, best first.

    All groups live side by side in one (n_users, sum_g L_g) int32 tensor: group g occupies
    columns offsets[g] : offsets[g] + widths[g]. lengths[u, g] says how many of those
    columns are real items for user u (a user who saw most of a small group has fewer);
    the rest hold -1. `scores`, when asked for, holds the teacher's score of each listed
    item in the same layout (0 where the item is -1).
    """

    def __init__(
        self,
        items: torch.Tensor,
        lengths: torch.Tensor,
        offsets: torch.Tensor,
        widths: torch.Tensor,
        scores: torch.Tensor | None = None,
    ) -> None:
        self.items = items  # (n_users, sum L_g) int32 item ids, -1 = none
        self.lengths = lengths  # (n_users, G) int64
        self.offsets = offsets  # (G,) int64
        self.widths = widths  # (G,) int64
        self.scores = scores  # (n_users, sum L_g) float32 teacher scores, or None

    @property
    def n_groups(self) -> int:
        return int(self.offsets.numel())

    def nbytes(self) -> int:
        extra = 0 if self.scores is None else self.scores.element_size() * self.scores.numel()
        return self.items.element_size() * self.items.numel() + extra


def _seen_mask_rows(train: sp.csr_matrix, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk-relative row, item) index pairs of the training items of `rows`."""
    sub = train[rows]
    r = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
    return torch.from_numpy(r.astype(np.int64)), torch.from_numpy(sub.indices.astype(np.int64))


def teacher_candidates(
    teacher: TeacherScorer,
    train: sp.csr_matrix,
    groups: np.ndarray,
    top_l: int,
    *,
    chunk: int = 1024,
    with_scores: bool = False,
    should_stop: ShouldStop | None = None,
) -> CandidateLists:
    """Rank every group's unobserved items by teacher score and keep the top L per user.

    The teacher is used only through its scorer, one block of users at a time, on its own
    device. Within a group, equal scores rank the lower item index first (training.topk's
    rule), so an EASE teacher's many exact ties give the same lists on every run.

    Args:
        teacher: scores a block of users against every item (training.scoring).
        train: (n_users, n_items) CSR of training interactions (excluded from the lists).
        groups: (n_items,) group of each item; pass zeros for one list over all items.
        top_l: maximum list length per (user, group).
        chunk: users scored at once; peak memory ~ 2 × chunk × n_items floats.
        with_scores: also keep the teacher's score of every listed item (CD's soft labels).
        should_stop: checked before every chunk; JobCancelled when it says stop.
    """
    return rank_user_range(
        teacher,
        train,
        groups,
        top_l,
        0,
        train.shape[0],
        chunk=chunk,
        with_scores=with_scores,
        should_stop=should_stop,
    )


def rank_user_range(
    teacher: TeacherScorer,
    train: sp.csr_matrix,
    groups: np.ndarray,
    top_l: int,
    lo: int,
    hi: int,
    *,
    chunk: int = 1024,
    with_scores: bool = False,
    should_stop: ShouldStop | None = None,
) -> CandidateLists:
    """teacher_candidates for users lo..hi-1 only: the rows of the full lists, so lists
    ranked in user ranges (shards, training.distill.shards) and stacked equal the lists of
    one call. Arguments as teacher_candidates'.

    Returns:
        CandidateLists of hi - lo rows (row r is user lo + r).
    """
    n_users, n_items = train.shape
    if (teacher.n_users, teacher.n_items) != (n_users, n_items):
        raise ValueError(
            f"teacher scores {teacher.n_users} users x {teacher.n_items} items, "
            f"training data has {n_users} x {n_items}"
        )
    if not 0 <= lo <= hi <= n_users:
        raise ValueError(f"user range {lo}..{hi} is outside 0..{n_users}")
    device = teacher.device
    n_groups = int(groups.max()) + 1
    # Lay items out group by group (ascending item id inside a group, so the tie rule
    # carries over) and score each group as a contiguous column slice.
    order = np.argsort(groups, kind="stable")
    group_sizes = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
    widths = torch.from_numpy(np.minimum(top_l, group_sizes).astype(np.int64))
    offsets = torch.cumsum(widths, 0) - widths
    total = int(widths.sum())
    n_rows = hi - lo
    # int32 ids: the lists are the largest thing UnKD keeps (users × G × L).
    out = torch.full((n_rows, total), -1, dtype=torch.int32)
    out_scores = torch.zeros((n_rows, total), dtype=torch.float32) if with_scores else None

    # Unobserved items per (user, group): group size minus the user's training items in it.
    seen_per_group = np.zeros((n_rows, n_groups), dtype=np.int64)
    coo = train[lo:hi].tocoo()
    np.add.at(seen_per_group, (coo.row, groups[coo.col]), 1)
    lengths = torch.from_numpy(
        np.minimum(group_sizes[None, :] - seen_per_group, widths.numpy()[None, :])
    )

    order_t = torch.from_numpy(order).to(device)
    with torch.inference_mode():
        for start in range(lo, hi, chunk):
            if should_stop is not None and should_stop():
                raise JobCancelled(
                    f"cancelled while ranking the teacher's candidates (user {start})"
                )
            rows = np.arange(start, min(start + chunk, hi))
            scores = teacher.score(torch.from_numpy(rows))  # (b, n_items), item order
            if not bool(torch.isfinite(scores.sum(dim=1)).all()):  # cheap: see training.topk
                raise ValueError(f"teacher scores hold NaN or inf in users {rows[0]}..{rows[-1]}")
            r, c = _seen_mask_rows(train, rows)
            scores[r.to(device), c.to(device)] = -math.inf
            by_group = scores.index_select(1, order_t)  # (b, n_items), group-contiguous
            block = torch.full((len(rows), total), -1, dtype=torch.int64, device=device)
            for g in range(n_groups):  # a handful of groups, once per chunk: not per epoch
                w, g_lo = int(widths[g]), int(starts[g])
                if w == 0:
                    continue
                top = topk_rows(
                    by_group[:, g_lo : g_lo + int(group_sizes[g])], w
                )  # -1 past the end
                block[:, offsets[g] : offsets[g] + w] = torch.where(
                    top >= 0, order_t[top.clamp(min=0) + g_lo], -1
                )
            block_cpu = block.cpu()
            at = start - lo
            out[at : at + len(rows)] = block_cpu.to(torch.int32)
            if out_scores is not None:
                picked = scores.gather(1, block.clamp(min=0)).cpu()
                out_scores[at : at + len(rows)] = torch.where(block_cpu >= 0, picked, 0.0)
    return CandidateLists(out, lengths, offsets, widths, out_scores)


class CandidateCache(ProcessCache[CandidateLists]):
    """The last candidate lists built in this process, so that the trials of a tuning study
    (same teacher, data and list options, different learning rates and λ) rank the
    teacher's catalogue once: 9 s of every UnKD trial on Amazon-Beauty.

    Bounded by entries, not bytes: one Amazon-Beauty UnKD entry is 360 MB (22k users × 4
    groups × 1000 int32). The lists are read-only once built, so sharing them is safe.
    """


CANDIDATE_CACHE = CandidateCache()


def candidates_key(
    teacher_key: str, train: sp.csr_matrix, groups: np.ndarray, top_l: int, with_scores: bool
) -> tuple[object, ...]:
    """What the lists depend on besides the teacher: the training pairs' shape and count,
    the grouping (hashed) and the list options."""
    digest = hashlib.blake2b(np.ascontiguousarray(groups).tobytes(), digest_size=16).hexdigest()
    return (teacher_key, train.shape, train.nnz, digest, top_l, with_scores)


def sample_ranks(lengths: torch.Tensor, mu: float, generator: torch.Generator) -> torch.Tensor:
    """Draw ranks r in [0, n) with P(r) ∝ exp(-r/mu), one per entry of `lengths` (n >= 1).

    Inverse CDF of the truncated geometric law: with q = exp(-1/mu),
    F(r) = (1 - q^(r+1)) / (1 - q^n), so r = floor(log(1 - U (1 - q^n)) / log q).
    """
    q = math.exp(-1.0 / mu)
    n = lengths.to(torch.float64)
    u = torch.rand(lengths.shape, generator=generator, dtype=torch.float64)
    r = torch.floor(torch.log1p(-u * (1.0 - q**n)) / math.log(q)).to(torch.int64)
    return torch.minimum(r, lengths.to(torch.int64) - 1).clamp_(min=0)


def rank_probabilities(n: int, mu: float) -> np.ndarray:
    """The exact law sample_ranks draws from, for a list of length n (for tests and docs)."""
    w = np.exp(-np.arange(n) / mu)
    return w / w.sum()
