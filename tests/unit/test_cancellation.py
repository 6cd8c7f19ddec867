"""Cancellation reaches the long loops: inside an epoch (every few batches) and inside the
teacher's candidate generation (every few user chunks), not only between epochs (issue 8).

Batches are counted by a global optimiser step hook and candidate chunks by a teacher scorer
that counts its calls, so the tests do not depend on how fit() or prepare() are written.
A should_stop that turns True after N calls must end the work well before it would end
by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from training.config import DistillConfig, OptimConfig
from training.dataset import Dataset
from training.distill import build_distiller
from training.distill.base import Distiller
from training.errors import JobCancelled
from training.models import MF
from training.scoring import EmbeddingScorer
from training.trainer import fit

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is ~50x faster than two contended ones on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StopAfter:
    """should_stop: False for the first `n` calls, True from then on; counts its calls."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


@contextmanager
def counting_steps() -> Iterator[list[int]]:
    """Counts optimiser steps (one per training batch) of every optimiser while active."""
    steps = [0]

    def hook(optimizer, args, kwargs):
        steps[0] += 1

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield steps
    finally:
        handle.remove()


def _fit(ds: Dataset, cfg: OptimConfig, should_stop=None):
    torch.manual_seed(0)
    model = MF(ds.n_users, ds.n_items, 8)
    return fit(
        model, ds.train, ds.csr("train"), ds.csr("valid"), cfg, device=CPU, should_stop=should_stop
    )


SMALL_BATCHES = OptimConfig(epochs=3, batch_size=16, lr=0.01, eval_every=1, patience=10, seed=0)


@pytest.fixture(scope="module")
def steps_per_epoch(tiny_dataset) -> int:
    with counting_steps() as steps:
        _fit(tiny_dataset, SMALL_BATCHES.model_copy(update={"epochs": 1}))
    assert steps[0] >= 50, "the fixture needs many batches per epoch"
    return steps[0]


def test_fit_cancelled_before_the_first_epoch_runs_no_batch(tiny_dataset):
    with counting_steps() as steps, pytest.raises(JobCancelled):
        _fit(tiny_dataset, SMALL_BATCHES, should_stop=StopAfter(0))
    assert steps[0] == 0


def test_fit_cancelled_later_runs_fewer_batches_than_the_whole_job(tiny_dataset, steps_per_epoch):
    """Today's guarantee (between epochs): a stop after 2 checks ends the 3-epoch job early."""
    with counting_steps() as steps, pytest.raises(JobCancelled):
        _fit(tiny_dataset, SMALL_BATCHES, should_stop=StopAfter(2))
    assert steps[0] < 3 * steps_per_epoch


def test_fit_stops_inside_an_epoch(tiny_dataset, steps_per_epoch):
    """should_stop turns True at its 3rd call: with a check every few batches the first epoch
    (~175 batches of 16) never finishes."""
    stop = StopAfter(2)
    with counting_steps() as steps, pytest.raises(JobCancelled):
        _fit(tiny_dataset, SMALL_BATCHES, should_stop=stop)
    assert steps[0] < steps_per_epoch, (
        f"{steps[0]} batches ran after a stop request at check {stop.n + 1}; "
        f"an epoch is {steps_per_epoch} batches"
    )


# -- candidate generation ------------------------------------------------------------------
N_USERS, N_ITEMS, DIM = 5000, 60, 4  # several user chunks whatever the chunk size (~1024)


class CountingScorer(EmbeddingScorer):
    """The embedding teacher scorer, counting the blocks it scores."""

    def __init__(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
        super().__init__(user_emb, item_emb)
        self.calls = 0

    def score(self, users: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().score(users)


def _candidate_problem() -> tuple[sp.csr_matrix, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(N_USERS), 5)
    cols = rng.integers(0, N_ITEMS, size=len(rows))
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))
    train.sum_duplicates()
    train.data[:] = 1.0
    t_user = torch.from_numpy(rng.normal(size=(N_USERS, DIM)).astype(np.float32))
    t_item = torch.from_numpy(rng.normal(size=(N_ITEMS, DIM)).astype(np.float32))
    return train, t_user, t_item


def _distiller() -> tuple[Distiller, CountingScorer]:
    """A UnKD distiller over a teacher scorer that counts the user blocks it scores."""
    train, t_user, t_item = _candidate_problem()
    scorer = CountingScorer(t_user, t_item)
    d = build_distiller(DistillConfig(method="unkd", unkd={"top_l": 20}), scorer, train, CPU)
    assert d is not None
    return d, scorer


def test_candidate_generation_stops_before_its_last_user_chunk():
    full, full_scorer = _distiller()
    full.prepare()
    assert full_scorer.calls >= 3, "the fixture needs several user chunks"
    stop = StopAfter(1)  # the 2nd check says stop
    d, scorer = _distiller()
    with pytest.raises(JobCancelled):
        d.prepare(should_stop=stop)
    assert stop.calls >= 2, "should_stop was not consulted inside candidate generation"
    assert scorer.calls < full_scorer.calls, (
        f"cancelled candidate generation scored {scorer.calls} of {full_scorer.calls} user chunks"
    )
