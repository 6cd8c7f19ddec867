"""The trainer's epoch selection under a head-share cap (a student must not expose the
head group more than its teacher) and its negatives (never a training item of the user)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from training.config import OptimConfig
from training.dataset import Dataset
from training.models import build_model
from training.sampling import TrainingPairs, draw_unobserved
from training.trainer import fit

CPU = torch.device("cpu")


def _fit(ds: Dataset, **kw: object):  # type: ignore[no-untyped-def]
    cfg = OptimConfig(epochs=12, eval_every=1, patience=50, lr=0.02, batch_size=512, seed=0)
    model = build_model("mf", ds.n_users, ds.n_items, 8, ds.csr("train"), device=CPU)
    head = np.asarray(ds.groups(4)) == 0
    return fit(
        model, ds.train, ds.csr("train"), ds.csr("valid"), cfg, device=CPU, head_items=head, **kw
    )


def test_validation_reports_head_share(tiny_dataset: Dataset) -> None:
    res = _fit(tiny_dataset)
    shares = [row["valid_head_share@20"] for row in res.history]
    assert all(0.0 <= s <= 1.0 for s in shares) and len(set(shares)) > 1


def test_cap_picks_the_best_epoch_under_it(tiny_dataset: Dataset) -> None:
    free = _fit(tiny_dataset)
    shares = sorted(row["valid_head_share@20"] for row in free.history)
    cap = shares[len(shares) // 2]  # about half the checks are under it
    capped = _fit(tiny_dataset, max_head_share=cap)
    under = [r for r in capped.history if r["valid_head_share@20"] <= cap]
    best = max(under, key=lambda r: r["valid_ndcg@20"])
    assert capped.best_epoch == best["epoch"]
    chosen = next(r for r in capped.history if r["epoch"] == capped.best_epoch)
    assert chosen["valid_head_share@20"] <= cap


def test_unreachable_cap_keeps_the_best_ndcg_and_says_so(
    tiny_dataset: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="training.trainer")
    res = _fit(tiny_dataset, max_head_share=-1.0)
    best = max(res.history, key=lambda r: r["valid_ndcg@20"])
    assert res.best_epoch == best["epoch"]
    assert "no validation check met head_share@20" in caplog.text


def test_cap_needs_the_head_mask(tiny_dataset: Dataset) -> None:
    cfg = OptimConfig(epochs=1)
    model = build_model(
        "mf", tiny_dataset.n_users, tiny_dataset.n_items, 4, tiny_dataset.csr("train"), device=CPU
    )
    with pytest.raises(ValueError, match="head_items"):
        fit(
            model,
            tiny_dataset.train,
            tiny_dataset.csr("train"),
            tiny_dataset.csr("valid"),
            cfg,
            device=CPU,
            max_head_share=0.5,
        )


def test_negatives_are_never_training_items(tiny_dataset: Dataset) -> None:
    train = tiny_dataset.csr("train")
    pairs = TrainingPairs(train)
    users = torch.from_numpy(tiny_dataset.train[:, 0].astype(np.int64))
    neg = draw_unobserved(pairs, users, tuple(users.shape), torch.Generator().manual_seed(0))
    hits = np.asarray(train[users.numpy().copy(), neg.numpy().copy()]).ravel()
    assert hits.sum() == 0
    # the check itself: every training pair is found
    items = torch.from_numpy(tiny_dataset.train[:, 1].astype(np.int64))
    assert bool(pairs.contains(users, items).all())


def _expected_stop(history: list[dict[str, float]], cap: float, patience: int) -> int:
    """When the documented rule ends a capped run, replayed over an uncapped run's checks:
    `patience` checks in a row that improve neither the best NDCG under the cap nor the best
    NDCG of any check, counted once some check met the cap."""
    best_capped, peak, bad, met = -1.0, -1.0, 0, False
    for row in history:
        ndcg, under = row["valid_ndcg@20"], row["valid_head_share@20"] <= cap
        improved = ndcg > peak
        peak = max(peak, ndcg)
        if under and (not met or ndcg > best_capped):
            best_capped, met, improved = ndcg, True, True
        bad = 0 if improved else bad + 1
        if met and bad >= patience:
            return int(row["epoch"])
    return int(history[-1]["epoch"])


def test_patience_spares_a_student_still_getting_more_accurate(tiny_dataset: Dataset) -> None:
    # A random start is under any cap at first: if checks above the cap counted against the
    # patience while NDCG still rose, the run would stop with the first, weakest epochs.
    free = _fit(tiny_dataset)
    first = free.history[0]["valid_head_share@20"]
    later = [r for r in free.history[1:] if r["valid_head_share@20"] > first]
    assert later, "the fixture's head share should rise above its first check's"
    cfg = OptimConfig(epochs=12, eval_every=1, patience=2, lr=0.02, batch_size=512, seed=0)
    model = build_model(
        "mf", tiny_dataset.n_users, tiny_dataset.n_items, 8, tiny_dataset.csr("train"), device=CPU
    )
    head = np.asarray(tiny_dataset.groups(4)) == 0
    capped = fit(
        model,
        tiny_dataset.train,
        tiny_dataset.csr("train"),
        tiny_dataset.csr("valid"),
        cfg,
        device=CPU,
        head_items=head,
        max_head_share=first,
    )
    assert capped.epochs_run == _expected_stop(free.history, first, patience=2)
    # Same trajectory as the free run up to the stop, so the kept epoch is the best under the cap.
    under = [r for r in capped.history if r["valid_head_share@20"] <= first]
    assert capped.best_epoch == max(under, key=lambda r: r["valid_ndcg@20"])["epoch"]


def test_patience_ends_a_run_whose_cap_is_never_met(tiny_dataset: Dataset) -> None:
    """A cap no check meets no longer holds the run to the epoch budget (it trained default
    jobs for all 400 epochs): patience ends it where the same run without a cap ends."""
    cfg = OptimConfig(epochs=40, eval_every=1, patience=2, lr=0.05, batch_size=512, seed=0)
    head = np.asarray(tiny_dataset.groups(4)) == 0

    def run(cap: float | None):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)  # the same start for both runs
        model = build_model(
            "mf",
            tiny_dataset.n_users,
            tiny_dataset.n_items,
            8,
            tiny_dataset.csr("train"),
            device=CPU,
        )
        return fit(
            model,
            tiny_dataset.train,
            tiny_dataset.csr("train"),
            tiny_dataset.csr("valid"),
            cfg,
            device=CPU,
            head_items=head,
            max_head_share=cap,
        )

    free, never = run(None), run(-1.0)
    assert free.epochs_run < cfg.epochs, "the fixture should stop by patience"
    assert never.epochs_run == free.epochs_run and never.cap_met is False
    assert free.cap_met is None
