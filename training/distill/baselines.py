"""The standard distillers the reports compare UnKD against. All are teacher-agnostic and
use the teacher only through its scorer: its ranking (and, for CD, the scores of the items
it ranked, kept beside the lists)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.distill.base import Distiller, KDBatch, bpr_loss, pair_scores
from training.distill.ranking import CandidateLists, sample_ranks
from training.models.lookup import Lookup
from training.progress import ShouldStop
from training.sampling import TrainingPairs, draw_unobserved


def _single_list(
    d: Distiller, top_l: int, should_stop: ShouldStop | None, with_scores: bool = False
) -> CandidateLists:
    """The teacher's top-L unobserved items over the whole catalogue (one 'group')."""
    return d.candidates(np.zeros(d.n_items, dtype=np.int64), top_l, should_stop, with_scores)


class RankingDistillation(Distiller):
    """RD (Tang & Wang, KDD 2018): the teacher's top-K unobserved items are extra positives,
    weighted by rank w_r ∝ exp(-r/λ). With a BPR student they enter as weighted BPR
    positives against uniformly drawn negatives, so scores stay on the BPR scale."""

    name = "rd"

    def prepare(self, should_stop: ShouldStop | None = None) -> None:
        opts = self.cfg.rd
        self.cands = _single_list(self, opts.top_k, should_stop)
        k = int(self.cands.widths[0])
        w = torch.exp(-torch.arange(k, dtype=torch.float32) / opts.rank_lambda)
        self.rank_weight = w / w.sum() * k  # mean weight 1: comparable to the BPR term

    def sample_epoch(self, epoch: int, generator: torch.Generator) -> KDBatch:
        k = int(self.cands.widths[0])
        u = torch.arange(self.n_users).repeat_interleave(k)
        r = torch.arange(k).repeat(self.n_users)
        i = self.cands.items[u, r].long()
        keep = i >= 0
        u, r, i = u[keep], r[keep], i[keep]
        j = torch.randint(0, self.n_items, u.shape, generator=generator)
        return {"u": u, "i": i, "j": j, "w": self.rank_weight[r]}

    def loss(self, emb: Lookup, batch: KDBatch) -> torch.Tensor:
        return bpr_loss(emb, batch["u"], batch["i"], batch["j"], batch["w"])

    def candidate_bytes(self) -> int:
        return self.cands.nbytes()


class CollaborativeDistillation(Distiller):
    """CD (Lee et al., 2019): items drawn from the teacher's ranking with P(r) ∝ exp(-r/λ),
    soft labels σ(t(u,i)/T), binary cross-entropy on the student's score."""

    name = "cd"

    def prepare(self, should_stop: ShouldStop | None = None) -> None:
        self.cands = _single_list(self, self.cfg.cd.top_l, should_stop, with_scores=True)

    def sample_epoch(self, epoch: int, generator: torch.Generator) -> KDBatch:
        opts = self.cfg.cd
        u = torch.arange(self.n_users).repeat_interleave(opts.samples)
        n = self.cands.lengths[u, 0]
        keep = n >= 1
        u, n = u[keep], n[keep]
        r = sample_ranks(n, opts.rank_lambda, generator)
        i = self.cands.items[u, r].long()
        if self.cands.scores is None:
            raise RuntimeError("CD's candidate lists were ranked without the teacher's scores")
        label = torch.sigmoid(
            self.cands.scores[u, r] / opts.temperature
        )  # t(u, i), kept at prepare
        return {"u": u, "i": i, "y": label}

    def loss(self, emb: Lookup, batch: KDBatch) -> torch.Tensor:
        s = pair_scores(emb, batch["u"], batch["i"])
        return F.binary_cross_entropy_with_logits(s, batch["y"])

    def candidate_bytes(self) -> int:
        return self.cands.nbytes()


class RelaxedRankingDistillation(Distiller):
    """RRD (DE-RRD, Kang et al., CIKM 2020): K 'interesting' items drawn from the teacher's
    top ranks (rank-discounted, without replacement, kept in teacher order) and L
    'uninteresting' ones from the rest of the catalogue; a Plackett–Luce loss keeps the
    interesting items on top, in the teacher's order, and ignores the order of the rest.

    Uninteresting items are drawn uniformly from the items that are neither training items
    of the user nor in its top_l list (vectorised rejection, training.sampling), which
    avoids a full per-user ranking."""

    name = "rrd"

    def prepare(self, should_stop: ShouldStop | None = None) -> None:
        opts = self.cfg.rrd
        self.cands = _single_list(self, opts.top_l, should_stop)
        self.train_pairs = TrainingPairs(self.train)
        width = int(self.cands.widths[0])
        self.log_p = -torch.arange(width, dtype=torch.float32) / opts.rank_lambda  # (top_l,)

    def sample_epoch(self, epoch: int, generator: torch.Generator) -> KDBatch:
        opts = self.cfg.rrd
        width = int(self.cands.widths[0])
        k = min(opts.interesting, width)
        # Gumbel top-k: K ranks without replacement with P ∝ exp(-r/λ); invalid ranks excluded.
        gumbel = -torch.log(-torch.log(torch.rand((self.n_users, width), generator=generator)))
        keys = self.log_p.unsqueeze(0) + gumbel
        keys[torch.arange(width).unsqueeze(0) >= self.cands.lengths[:, :1]] = -torch.inf
        ranks = torch.topk(keys, k, dim=1).indices.sort(dim=1).values  # teacher order
        interesting = torch.gather(self.cands.items, 1, ranks).long()
        users = torch.arange(self.n_users)
        keep = self.cands.lengths[:, 0] >= k
        # Uninteresting: unobserved and below the top ranks the interesting ones come from.
        boring = draw_unobserved(
            self.train_pairs,
            users.unsqueeze(1),
            (self.n_users, opts.uninteresting),
            generator,
            also_excluded=self.cands.items[:, :width].long(),
        )
        return {"u": users[keep], "pos": interesting[keep], "neg": boring[keep]}

    def loss(self, emb: Lookup, batch: KDBatch) -> torch.Tensor:
        pu = emb.user(batch["u"]).unsqueeze(1)  # (b, 1, d)
        s_pos = (pu * emb.item(batch["pos"])).sum(-1)  # (b, K)
        s_neg = (pu * emb.item(batch["neg"])).sum(-1)  # (b, L)
        # log Σ over {pos_k, ..., pos_K} ∪ neg: reverse cumulative logsumexp, then add the negatives.
        tail = torch.logcumsumexp(s_pos.flip(1), dim=1).flip(1)
        denom = torch.logaddexp(tail, torch.logsumexp(s_neg, dim=1, keepdim=True))
        return -(s_pos - denom).sum(1).mean()

    def candidate_bytes(self) -> int:
        return self.cands.nbytes()
