"""UnKD (Chen et al., WSDM 2023): distil the teacher's ranking only within popularity groups.

For every (user, group) the teacher ranks the group's unobserved items; each epoch draws
pairs of ranks r1 != r2 with P(r) ∝ exp(-r/mu) and makes the better-ranked item the
positive. Every pair compares two items of similar popularity, so the student learns the
teacher's within-stratum ranking and never its popularity-inflated cross-stratum preference.
"""

from __future__ import annotations

import logging

import torch

from training.defaults import unkd_pairs_per_user
from training.distill.base import Distiller, KDBatch, bpr_loss
from training.distill.ranking import CandidateLists, sample_ranks
from training.models.lookup import Lookup
from training.progress import ShouldStop

logger = logging.getLogger(__name__)


def group_budget(pairs_per_user: int, n_groups: int, epoch: int) -> torch.Tensor:
    """Split N pairs per user equally over G groups: (N,) group id of each pair slot.

    When G does not divide N the remainder goes to different groups on successive epochs,
    so over time every group gets N/G pairs per user.
    """
    slots = torch.arange(pairs_per_user) % n_groups
    return (slots + epoch) % n_groups


SAMPLE_BLOCK_USERS = 65536  # users drawn at once: bounds the epoch's scratch arrays


def sample_unkd_pairs(
    cands: CandidateLists, pairs_per_user: int, mu: float, epoch: int, generator: torch.Generator
) -> KDBatch:
    """Draw the epoch's (u, i, j) pairs for every user, in blocks of SAMPLE_BLOCK_USERS users.

    Each block's scratch arrays (pair slots, ranks, their uniforms) are freed before the
    next, so only the returned pairs grow with users. A dataset of at most one block draws
    exactly what a single draw over all users would.

    Returns:
        {"u", "i", "j"}: (n_pairs,) each, int64 (one block) or int32 (several);
        (u, g) with fewer than two candidates give none.
    """
    n_users = cands.lengths.shape[0]
    if n_users <= SAMPLE_BLOCK_USERS:
        return _sample_block(cands, torch.arange(n_users), pairs_per_user, mu, epoch, generator)
    # Several blocks: each is copied into int32 arrays sized for every slot (ids < 2^31),
    # half the memory of int64 and no second copy for a concatenation; the trainer widens
    # each batch to int64 as it uses it.
    out = {key: torch.empty(n_users * pairs_per_user, dtype=torch.int32) for key in ("u", "i", "j")}
    at = 0
    for lo in range(0, n_users, SAMPLE_BLOCK_USERS):
        users = torch.arange(lo, min(n_users, lo + SAMPLE_BLOCK_USERS))
        part = _sample_block(cands, users, pairs_per_user, mu, epoch, generator)
        n = len(part["u"])
        for key, values in part.items():
            out[key][at : at + n] = values
        at += n
    return {key: t[:at] for key, t in out.items()}


def _sample_block(
    cands: CandidateLists,
    users: torch.Tensor,
    pairs_per_user: int,
    mu: float,
    epoch: int,
    generator: torch.Generator,
) -> KDBatch:
    n_groups = cands.lengths.shape[1]
    slot_group = group_budget(pairs_per_user, n_groups, epoch)  # (N,)
    u = users.repeat_interleave(pairs_per_user)  # (len(users) * N,)
    g = slot_group.repeat(len(users))
    n = cands.lengths[u, g]
    keep = n >= 2
    u, g, n = u[keep], g[keep], n[keep]

    r1 = sample_ranks(n, mu, generator)
    r2 = sample_ranks(n, mu, generator)
    clash = r1 == r2
    while bool(clash.any()):  # redraw both ranks of a collision: i.i.d. given r1 != r2
        r1[clash] = sample_ranks(n[clash], mu, generator)
        r2[clash] = sample_ranks(n[clash], mu, generator)
        clash = r1 == r2
    base = cands.offsets[g]
    pos = cands.items[u, base + torch.minimum(r1, r2)].long()
    neg = cands.items[u, base + torch.maximum(r1, r2)].long()
    return {"u": u, "i": pos, "j": neg}


class UnKD(Distiller):
    name = "unkd"

    def prepare(self, should_stop: ShouldStop | None = None) -> None:
        opts = self.cfg.unkd
        self.cands = self.candidates(self.groups, opts.list_length, should_stop)
        logger.info(
            "UnKD candidates: %d users x %s per group (%.1f MB)",
            self.n_users,
            self.cands.widths.tolist(),
            self.cands.nbytes() / 2**20,
        )

    def sample_epoch(self, epoch: int, generator: torch.Generator) -> KDBatch:
        opts = self.cfg.unkd
        pairs = opts.pairs_per_user  # "auto" is resolved by training.defaults before training
        if pairs == "auto":
            pairs = unkd_pairs_per_user(self.train, opts.groups)
        return sample_unkd_pairs(self.cands, pairs, opts.mu, epoch, generator)

    def loss(self, emb: Lookup, batch: KDBatch) -> torch.Tensor:
        return bpr_loss(emb, batch["u"], batch["i"], batch["j"])

    def candidate_bytes(self) -> int:
        return self.cands.nbytes()
