"""The built-in synthetic long-tail dataset, with known true preferences.

Generative model (all seeded, vectorised over users in chunks):
- True preference score(u, i) = user_factors[u] @ item_factors[i] (SyntheticTruth).
  Coordinate 0 is a shared "quality" axis: item_factors[:, 0] = q_i ~ N(0, quality_std²)
  and user_factors[:, 0] ~ N(1, 0.25²), so some items are better for almost everyone.
  The other dim - 1 coordinates are personal taste, N(0, 1/sqrt(dim - 1)) each, so the
  taste part of a score has unit variance.
- Exposure: the catalogue is put in a random order (independent of quality) and item at
  exposure rank r (1-based) has propensity e_i ∝ r^(-skew). skew = 0 is uniform
  exposure; skew = 1 is Zipf-like, a strong long tail.
- An interaction happens when an item is exposed and preferred: user u consumes k_u
  distinct items drawn without replacement with weight e_i · exp(score(u, i) / temperature)
  (Gumbel top-k), so observed popularity mixes true quality with exposure bias.
- Activity k_u ~ interactions_per_user · Gamma(2, 1/2) (mean 1), rounded and clipped to
  [5, n_items // 2]: a few heavy users, many light ones, every user splittable.
- Split: the per-user random hold-out protocol of `training.split.split_random`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from training.dataset import Dataset, SyntheticTruth
from training.split import split_random

logger = logging.getLogger(__name__)

# Sized so that an MF teacher (dim 100) plus three MF students (dim 10) train in under two
# minutes on two CPU cores, with a clear long tail (few head-group items).
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_users": 2500,
    "n_items": 1500,
    "dim": 32,
    "skew": 1.0,
    "interactions_per_user": 40,
    "seed": 0,
}

MIN_ACTIVITY = 5
_CHUNK_CELLS = 4_000_000  # user-chunk size * n_items: bounds the dense score block (~32 MB)


def _factors(rng: np.random.Generator, n: int, dim: int, axis0: np.ndarray) -> np.ndarray:
    f = rng.standard_normal((n, dim)) / (dim - 1) ** 0.25
    f[:, 0] = axis0
    return f.astype(np.float32)


def _draw_items(
    scores: np.ndarray,
    log_exposure: np.ndarray,
    k: np.ndarray,
    temperature: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel top-k per row: rows of `scores` (b, n_items) each draw k[row] distinct items.

    Returns (rows, items), both (k.sum(),) int64.
    """
    b, n_items = scores.shape
    keys = log_exposure[None, :] + scores / temperature + rng.gumbel(size=(b, n_items))
    kmax = int(k.max())
    if kmax < n_items:
        top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax]
    else:
        top = np.tile(np.arange(n_items), (b, 1))
    # Order each row's candidates by key so the first k[row] are that row's top-k.
    top = np.take_along_axis(
        top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1
    )
    keep = np.arange(kmax)[None, :] < k[:, None]
    rows = np.broadcast_to(np.arange(b)[:, None], top.shape)[keep]
    return rows.astype(np.int64), top[keep].astype(np.int64)


def generate_synthetic(
    *,
    n_users: int = SYNTHETIC_DEFAULTS["n_users"],
    n_items: int = SYNTHETIC_DEFAULTS["n_items"],
    dim: int = SYNTHETIC_DEFAULTS["dim"],
    skew: float = SYNTHETIC_DEFAULTS["skew"],
    interactions_per_user: float = SYNTHETIC_DEFAULTS["interactions_per_user"],
    seed: int = SYNTHETIC_DEFAULTS["seed"],
    name: str = "synthetic",
    holdout: float = 0.2,
    temperature: float = 0.5,
    quality_std: float = 0.5,
) -> Dataset:
    """Generate a long-tailed interaction dataset with known true preferences.

    Returns:
        Dataset with ids "0".."n-1", the per-user random split, and
        truth = SyntheticTruth(user_factors (n_users, dim), item_factors (n_items, dim)).
    """
    if n_users < 2 or n_items < 2 * MIN_ACTIVITY:
        raise ValueError(
            f"n_users={n_users} must be >= 2 and n_items={n_items} >= {2 * MIN_ACTIVITY}"
        )
    if dim < 2:
        raise ValueError(f"dim={dim} must be >= 2 (coordinate 0 is the quality axis)")
    if skew < 0 or temperature <= 0 or interactions_per_user <= 0:
        raise ValueError(
            f"skew={skew} must be >= 0, temperature={temperature} and "
            f"interactions_per_user={interactions_per_user} > 0"
        )
    rng = np.random.default_rng(seed)
    user_f = _factors(rng, n_users, dim, 1.0 + 0.25 * rng.standard_normal(n_users))
    item_f = _factors(rng, n_items, dim, quality_std * rng.standard_normal(n_items))
    exposure_rank = rng.permutation(n_items) + 1  # random w.r.t. quality
    log_exposure = -skew * np.log(exposure_rank.astype(np.float64))
    activity = np.rint(interactions_per_user * rng.gamma(2.0, 0.5, size=n_users)).astype(np.int64)
    activity = np.clip(activity, MIN_ACTIVITY, n_items // 2)

    chunk = max(1, _CHUNK_CELLS // n_items)
    users, items = [], []
    for start in range(0, n_users, chunk):  # a loop over memory-sized blocks, not users
        stop = min(n_users, start + chunk)
        scores = user_f[start:stop].astype(np.float64) @ item_f.T.astype(np.float64)
        rows, cols = _draw_items(scores, log_exposure, activity[start:stop], temperature, rng)
        users.append(rows + start)
        items.append(cols)
    user_idx, item_idx = np.concatenate(users), np.concatenate(items)

    splits = split_random(user_idx, item_idx, holdout=holdout, seed=seed)
    params = {
        "n_users": n_users,
        "n_items": n_items,
        "dim": dim,
        "skew": float(skew),
        "interactions_per_user": float(interactions_per_user),
        "seed": seed,
        "temperature": float(temperature),
        "quality_std": float(quality_std),
    }
    info = {
        "source": "synthetic",
        "format": "synthetic",
        "split": "random",
        "seed": seed,
        "holdout": float(holdout),
        "generator": params,
        "exposure": "propensity ∝ rank^-skew over a random item order; "
        "P(pick) ∝ exposure · exp(score / temperature), k_u picks without replacement",
        "interactions": int(len(user_idx)),
    }
    logger.debug(
        "synthetic %s: %d users, %d items, %d interactions", name, n_users, n_items, len(user_idx)
    )
    return Dataset(
        name=name,
        user_ids=np.arange(n_users).astype(str),
        item_ids=np.arange(n_items).astype(str),
        train=splits.train,
        valid=splits.valid,
        test=splits.test,
        info=info,
        truth=SyntheticTruth(user_factors=user_f, item_factors=item_f),
    )
