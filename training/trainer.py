"""The training loop shared by teachers and students: BPR on the data, plus an optional
distillation term, Adam, early stopping on validation NDCG@20, best checkpoint kept.

    loss = BPR(u, i, j) + decay/2 · (|p_u|² + |q_i|² + |q_j|²) + λ_KD · L_KD
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from training.config import OptimConfig
from training.defaults import decay_of
from training.distill.base import Distiller, KDBatch
from training.errors import JobCancelled, TrainingDivergedError
from training.models.base import Ranker
from training.progress import ProgressCallback, ProgressEvent, ShouldStop
from training.sampling import TrainingPairs, draw_unobserved
from training.scoring import EmbeddingScorer
from training.validation import VALID_K, scorer_validation

logger = logging.getLogger(__name__)

# An epoch of a large job runs for minutes: a cancel is honoured every this many batches.
CANCEL_CHECK_BATCHES = 16


@dataclass
class FitResult:
    user_emb: np.ndarray  # (n_users, d) float32, best epoch
    item_emb: np.ndarray  # (n_items, d) float32
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    sample_seconds: list[float] = field(default_factory=list)
    # With max_head_share: whether the kept epoch's validation head share is under it.
    cap_met: bool | None = None

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.mean(self.epoch_seconds)) if self.epoch_seconds else 0.0


def validation_metrics(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    k: int = VALID_K,
    chunk: int = 2048,
    head_items: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@k and NDCG@k of embeddings on the validation split (training.validation).

    Args:
        head_items: (n_items,) bool, the head popularity group: adds head_share@k, the
            share of recommended slots that go to it.
    """
    scorer = EmbeddingScorer(user_emb, item_emb, device=user_emb.device)
    return scorer_validation(scorer, train, valid, k=k, chunk=chunk, head_items=head_items)


def _kd_slices(batch: KDBatch, n_batches: int, generator: torch.Generator) -> list[KDBatch]:
    """Shuffle the epoch's distillation samples and cut them into n_batches slices.

    `batch` is emptied as it goes: each array is dropped once its slices are cut, so the
    peak holds one array twice, not all of them.
    """
    n = next(iter(batch.values())).shape[0]
    perm = torch.randperm(n, generator=generator)
    size = math.ceil(n / n_batches) if n else 0
    slices: list[KDBatch] = [{} for _ in range(n_batches)]
    for key in list(batch):
        t = batch.pop(key)[perm]
        for b in range(n_batches):
            slices[b][key] = t[b * size : (b + 1) * size]
        del t
    return slices


def fit(
    model: Ranker,
    train_pairs: np.ndarray,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    cfg: OptimConfig,
    *,
    device: torch.device,
    distiller: Distiller | None = None,
    lambda_kd: float = 0.0,
    on_progress: ProgressCallback | None = None,
    should_stop: ShouldStop | None = None,
    stage: str = "train",
    head_items: np.ndarray | None = None,
    max_head_share: float | None = None,
) -> FitResult:
    """Train `model` and return its best-epoch embeddings.

    The best epoch is the one with the highest validation NDCG@20; with max_head_share, the
    highest among the checks whose validation head share is at most that (a student must
    not expose the head group more than its teacher); if none is, the best NDCG overall.
    Training stops after `patience` checks that improve neither the kept epoch nor the best
    NDCG seen (training.calibration makes a student meet the cap after training).

    Args:
        train_pairs: (n_train, 2) int64 [user, item] training interactions.
        train, valid: (n_users, n_items) CSR of the training and validation splits.
        head_items: (n_items,) bool head-group mask: validation also reports head_share@20.
        max_head_share: the cap on validation head_share@20 (needs head_items).
    Raises:
        JobCancelled: should_stop() returned True at an epoch boundary.
        TrainingDivergedError: the loss became NaN or infinite.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    pairs = torch.from_numpy(np.asarray(train_pairs, dtype=np.int64))
    n_train = len(pairs)
    n_batches = max(1, math.ceil(n_train / cfg.batch_size))
    # Negatives re-drawn where they hit a training item of the user (MovieLens: 6 % of pairs).
    positives = TrainingPairs(train)
    # A large MF table reads rows with sparse gradients: SparseAdam touches only the rows of a
    # batch, so a step costs O(batch × d) however large the catalogue. A small MF table
    # (training.models.mf.DENSE_MAX_PARAMS) and LightGCN train dense, with Adam.
    sparse = model.sparse
    opt_cls = torch.optim.SparseAdam if sparse else torch.optim.Adam
    opt = opt_cls(list(model.parameters()), lr=cfg.lr)
    decay = decay_of(cfg, train)  # a number, or the density rule for "auto"

    if max_head_share is not None and head_items is None:
        raise ValueError("max_head_share needs head_items (the head group's mask)")
    capped = max_head_share
    best_ndcg, best_epoch, bad = -1.0, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    # Without a cap every check is eligible, so met_cap turns True at the first one.
    met_cap = False
    peak_ndcg = -1.0  # the best validation NDCG of any check, under the cap or not
    fallback_ndcg, fallback_epoch = -1.0, 0
    fallback_state: dict[str, torch.Tensor] | None = None
    result = FitResult(np.empty(0), np.empty(0), 0, 0)
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        if should_stop is not None and should_stop():
            raise JobCancelled(f"cancelled before epoch {epoch}")
        t0 = time.perf_counter()
        model.train()
        # The last epoch's samples go before this epoch's are drawn: at 1M users they are
        # ~1 GB, and holding both set the job's memory peak (bench/scale.py).
        perm = neg = idx = kd = None  # idx and kd are views of the last epoch's arrays
        kd_slices: list[KDBatch] = []
        perm = torch.randperm(n_train, generator=gen)
        neg = draw_unobserved(positives, pairs[:, 0], (n_train,), gen)
        if distiller is not None:
            kd_slices = _kd_slices(distiller.sample_epoch(epoch, gen), n_batches, gen)
        t_sampled = time.perf_counter()

        total = 0.0
        for b in range(n_batches):
            if b and b % CANCEL_CHECK_BATCHES == 0 and should_stop is not None and should_stop():
                raise JobCancelled(f"cancelled in epoch {epoch}, batch {b}/{n_batches}")
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            u, i, j = (pairs[idx, 0].to(device), pairs[idx, 1].to(device), neg[idx].to(device))
            emb = model.lookup()
            pu, pi, pj = emb.user(u), emb.item(i), emb.item(j)
            loss = -F.logsigmoid((pu * pi).sum(-1) - (pu * pj).sum(-1)).mean()
            if model.propagates:  # LightGCN: decay the layer-0 (ego) rows, not the propagated ones
                ego = model.ego_lookup()
                pu, pi, pj = ego.user(u), ego.item(i), ego.item(j)
            reg = pu.square().sum() + pi.square().sum() + pj.square().sum()
            loss = loss + decay * 0.5 * reg / len(idx)
            if distiller is not None and kd_slices and len(next(iter(kd_slices[b].values()))):
                kd = {
                    key: t.to(device, torch.int64 if t.dtype == torch.int32 else t.dtype)
                    for key, t in kd_slices[b].items()
                }
                loss = loss + lambda_kd * distiller.loss(emb, kd)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        mean_loss = total / n_batches
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"loss became {mean_loss} at epoch {epoch} (try a lower lr)"
            )
        epoch_s = time.perf_counter() - t0
        result.epoch_seconds.append(epoch_s)
        result.sample_seconds.append(t_sampled - t0)

        row: dict[str, Any] = {"epoch": epoch, "loss": mean_loss, "seconds": epoch_s}
        stop = False
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            model.eval()
            with torch.no_grad():
                user_emb, item_emb = model.embeddings()
                metrics = validation_metrics(
                    user_emb, item_emb, train, valid, head_items=head_items
                )
            row.update({f"valid_{k}": v for k, v in metrics.items()})
            ndcg = metrics[f"ndcg@{VALID_K}"]
            eligible = capped is None or metrics[f"head_share@{VALID_K}"] <= capped
            # Patience counts checks that improve neither the kept epoch nor the best NDCG seen:
            # a student still getting more accurate (a random start is under any cap at first,
            # a warm one may be above it for a while) keeps training.
            improved = ndcg > peak_ndcg
            peak_ndcg = max(peak_ndcg, ndcg)
            if eligible and (not met_cap or ndcg > best_ndcg):
                best_ndcg, best_epoch = ndcg, epoch
                best_state = copy.deepcopy(model.state_dict())
                met_cap, improved = True, True
            elif not met_cap and ndcg > fallback_ndcg:  # nothing under the cap yet
                fallback_ndcg, fallback_epoch = ndcg, epoch
                fallback_state = copy.deepcopy(model.state_dict())
            bad = 0 if improved else bad + 1
            # Patience ends the run whether or not a check met the cap: waiting for the cap
            # trained every default job that never met it for the whole budget (400 epochs).
            stop = bad >= cfg.patience
        result.history.append(row)
        logger.info(
            "%s epoch %d/%d loss %.4f %s",
            stage,
            epoch,
            cfg.epochs,
            mean_loss,
            {k: round(v, 4) for k, v in row.items() if k.startswith("valid_")},
        )
        if on_progress is not None:
            on_progress(
                ProgressEvent(
                    stage=stage,
                    epoch=epoch,
                    epochs=cfg.epochs,
                    loss=mean_loss,
                    metrics={k: v for k, v in row.items() if k.startswith("valid_")},
                    elapsed_s=time.perf_counter() - started,
                )
            )
        if stop:
            break

    if capped is not None:
        result.cap_met = best_state is not None
    if best_state is None and fallback_state is not None:
        logger.warning(
            "%s: no validation check met head_share@%d <= %.4f; keeping the best NDCG (epoch %d)",
            stage,
            VALID_K,
            capped,
            fallback_epoch,
        )
        best_state, best_epoch = fallback_state, fallback_epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        user_emb, item_emb = model.embeddings()
    result.user_emb = user_emb.detach().cpu().numpy().astype(np.float32)
    result.item_emb = item_emb.detach().cpu().numpy().astype(np.float32)
    result.best_epoch, result.epochs_run = best_epoch, len(result.history)
    return result
