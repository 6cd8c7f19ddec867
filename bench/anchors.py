"""The rows to beat: benfred/implicit's ALS and BPR, tuned the way we tune our own models.

Each anchor gets the same budget as every model of ours in bench/quality.py: `trials`
configurations drawn by Optuna's TPE sampler, chosen on validation NDCG@20, then refitted
with every seed and reported on test. The first configurations tried are the library's own
default and, for ALS, our ALS teacher's defaults (training.config.ALSOptions), so an anchor
is never weaker than what either would give; only the library's own knobs are searched, over
the ranges below.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from threadpoolctl import threadpool_limits

from training.dataset import Dataset
from training.evaluation import evaluate_embeddings
from training.scoring import EmbeddingScorer
from training.validation import VALID_K, scorer_validation

# name: (low, high, log, integer); the first trial is implicit's default configuration.
SPACES: dict[str, dict[str, tuple[float, float, bool, bool]]] = {
    "als": {
        "regularization": (1e-3, 1e3, True, False),
        "alpha": (0.5, 100.0, True, False),
        "iterations": (5, 50, False, True),
    },
    "bpr": {
        "learning_rate": (1e-3, 0.2, True, False),
        "regularization": (1e-5, 0.1, True, False),
        "iterations": (50, 400, False, True),
    },
}
LIBRARY_DEFAULTS: dict[str, dict[str, float]] = {
    "als": {"regularization": 0.01, "alpha": 1.0, "iterations": 15},
    "bpr": {"learning_rate": 0.01, "regularization": 0.01, "iterations": 100},
}


@dataclass
class Anchor:
    kind: str  # "als" or "bpr"
    dim: int
    params: dict[str, float]
    valid_ndcg: float
    trial_seconds: list[float]

    @property
    def label(self) -> str:
        return f"implicit {self.kind.upper()}-{self.dim}"


def fit(
    kind: str, dim: int, params: dict[str, Any], train: Any, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """implicit's model on the CPU: (user factors, item factors) as float32 arrays."""
    import implicit.cpu.als
    import implicit.cpu.bpr

    cls = (
        implicit.cpu.als.AlternatingLeastSquares
        if kind == "als"
        else implicit.cpu.bpr.BayesianPersonalizedRanking
    )
    p = dict(params)
    p["iterations"] = int(p["iterations"])
    with threadpool_limits(1, "blas"):  # implicit asks for single-threaded BLAS
        model = cls(factors=dim, random_state=seed, **p)
        model.fit(train.astype(np.float32), show_progress=False)
    return np.asarray(model.user_factors, dtype=np.float32), np.asarray(
        model.item_factors, dtype=np.float32
    )


def valid_ndcg(ds: Dataset, user: np.ndarray, item: np.ndarray) -> tuple[float, float]:
    """Validation NDCG@20 and head share@20, measured exactly as for our models."""
    train, valid = ds.csr("train"), ds.csr("valid")
    head = np.asarray(ds.groups(4)) == 0
    scorer = EmbeddingScorer(torch.from_numpy(user), torch.from_numpy(item), torch.device("cpu"))
    m = scorer_validation(scorer, train, valid, head_items=head)
    return m[f"ndcg@{VALID_K}"], m[f"head_share@{VALID_K}"]


def tune(kind: str, dim: int, ds: Dataset, trials: int, seed: int = 0) -> Anchor:
    """`trials` configurations by TPE (same sampler settings as training.tuning), best on validation."""
    import time

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train = ds.csr("train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(2, min(10, trials // 3))
        )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(LIBRARY_DEFAULTS[kind])
    if kind == "als":
        from training.config import ALSOptions

        ours = ALSOptions()
        study.enqueue_trial(
            {
                "regularization": ours.regularization,
                "alpha": ours.alpha,
                "iterations": ours.iterations,
            }
        )
    seconds: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        params: dict[str, float] = {}
        for name, (low, high, log, integer) in SPACES[kind].items():
            params[name] = (
                trial.suggest_int(name, int(low), int(high), log=log)
                if integer
                else trial.suggest_float(name, low, high, log=log)
            )
        t0 = time.perf_counter()
        user, item = fit(kind, dim, params, train, seed)
        ndcg, _ = valid_ndcg(ds, user, item)
        seconds.append(time.perf_counter() - t0)
        return ndcg

    study.optimize(objective, n_trials=trials)
    logging.getLogger(__name__).info("%s-%d: best %s", kind, dim, study.best_params)
    return Anchor(kind, dim, dict(study.best_params), float(study.best_value), seconds)


def test_report(anchor: Anchor, ds: Dataset, seed: int) -> dict[str, Any]:
    """The anchor's chosen configuration refitted with `seed`, reported on test."""
    user, item = fit(anchor.kind, anchor.dim, anchor.params, ds.csr("train"), seed)
    return evaluate_embeddings(ds, user, item, split="test")
