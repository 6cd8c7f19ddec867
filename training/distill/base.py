"""The contract every distiller follows, so the trainer runs them all through one loop."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from training.config import DistillConfig
from training.distill.ranking import (
    CANDIDATE_CACHE,
    CandidateLists,
    candidates_key,
    teacher_candidates,
)
from training.models.lookup import Lookup
from training.progress import ShouldStop
from training.scoring import TeacherScorer

KDBatch = dict[str, torch.Tensor]  # tensors sharing their first dimension (one row per sample)


class Distiller(ABC):
    """Teacher knowledge as an extra loss term for the student.

    prepare() runs once (the teacher's rankings, in user chunks); sample_epoch() draws the
    epoch's samples for all users at once; loss() scores one slice of them. No Python loop
    over users, groups or pairs anywhere in an epoch.

    The teacher is used only through its scorer (training.scoring.TeacherScorer), a block
    of users at a time, so any teacher (mf, lightgcn, als, ease) can be distilled.
    """

    name: str = ""

    def __init__(
        self,
        cfg: DistillConfig,
        teacher: TeacherScorer,
        train: sp.csr_matrix,
        groups: np.ndarray,
        device: torch.device,
        cache_key: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache_key = cache_key  # names the teacher: candidate lists shared in-process
        self.teacher = teacher
        self.train = train
        self.groups = groups
        self.device = device
        self.n_users, self.n_items = train.shape

    @abstractmethod
    def prepare(self, should_stop: ShouldStop | None = None) -> None:
        """One-off work before the first epoch (teacher candidate lists, in user chunks;
        should_stop is checked between chunks and raises JobCancelled)."""

    @abstractmethod
    def sample_epoch(self, epoch: int, generator: torch.Generator) -> KDBatch:
        """All of this epoch's samples; the trainer slices them across its mini-batches."""

    @abstractmethod
    def loss(self, emb: Lookup, batch: KDBatch) -> torch.Tensor:
        """Scalar loss of one slice of samples, reading the student's rows through `emb`."""

    def candidate_bytes(self) -> int:
        """Memory held by precomputed teacher rankings (for the benchmarks)."""
        return 0

    def candidates(
        self,
        groups: np.ndarray,
        top_l: int,
        should_stop: ShouldStop | None,
        with_scores: bool = False,
    ) -> CandidateLists:
        """The teacher's top-L unobserved items per (user, group), from the process's cache
        when this teacher (cache_key) was ranked with the same options before."""

        def build() -> CandidateLists:
            return teacher_candidates(
                self.teacher,
                self.train,
                groups,
                top_l,
                with_scores=with_scores,
                should_stop=should_stop,
            )

        if self.cache_key is None:
            return build()
        key = candidates_key(self.cache_key, self.train, groups, top_l, with_scores)
        return CANDIDATE_CACHE.get_or_build(key, build)


def pair_scores(emb: Lookup, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """s(u, i) for aligned index tensors of any shape (u broadcast against i)."""
    return (emb.user(u) * emb.item(i)).sum(-1)


def bpr_loss(
    emb: Lookup,
    u: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean of -log σ(s(u,i) - s(u,j)), optionally weighted per row."""
    pu = emb.user(u)  # read once, used for both items
    diff = (pu * emb.item(i)).sum(-1) - (pu * emb.item(j)).sum(-1)
    loss = -F.logsigmoid(diff)
    if weight is not None:
        loss = loss * weight
    return loss.mean()
