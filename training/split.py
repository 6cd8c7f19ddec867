"""Train/valid/test splits of (deduplicated) interactions, vectorised over users.

Per-user hold-out protocol (random and temporal):
- user u with n_u interactions holds out h_u = round(holdout * n_u) of them (half up),
  capped at n_u - 1 so that every user keeps at least one training interaction. With
  the default holdout 0.2 that means users with fewer than 3 interactions keep all of
  them in train (round(0.2 * 2) = 0).
- which interactions: a seeded random choice (`split_random`) or the user's latest by
  timestamp (`split_temporal`, ties broken by file order: a later row counts as later).
- the users with held-out interactions are shuffled (seeded) and split half/half: the
  first floor(m/2) are validation users, the rest test users, so test gets the odd one.
  All of a user's held-out interactions go to that user's side, so valid and test users
  are disjoint.

Every function returns (train, valid, test), each (n_split, 2) int64 [user, item], in
the input order of the rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from training.errors import DataError

SPLIT_VALUES = ("train", "valid", "test")


class Splits(NamedTuple):
    train: np.ndarray  # (n_train, 2) int64 [user, item]
    valid: np.ndarray  # (n_valid, 2) int64
    test: np.ndarray  # (n_test, 2) int64


def _pairs(user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    if user_idx.shape != item_idx.shape or user_idx.ndim != 1:
        raise ValueError(
            f"user_idx {user_idx.shape} and item_idx {item_idx.shape} must be equal 1-d"
        )
    if len(user_idx) and (user_idx.min() < 0 or item_idx.min() < 0):
        raise ValueError("user_idx and item_idx must be dense non-negative ids")
    return np.stack([user_idx, item_idx], axis=1)


def _check_holdout(holdout: float) -> None:
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout={holdout} must be in (0, 1)")


def holdout_counts(n_per_user: np.ndarray, holdout: float) -> np.ndarray:
    """(n_users,) interactions each user holds out: round-half-up(holdout * n), at most n - 1."""
    n = np.asarray(n_per_user, dtype=np.int64)
    h = np.floor(holdout * n + 0.5).astype(np.int64)
    return np.clip(h, 0, np.maximum(n - 1, 0))


def _split_by_order(pairs: np.ndarray, order: np.ndarray, holdout: float, seed: int) -> Splits:
    """Hold out, for each user, the first h_u rows of `order`, which lists rows grouped by
    user (ascending) and, within a user, in the order they should be held out."""
    users = pairs[:, 0]
    n_users = int(users.max()) + 1 if len(users) else 0
    counts = np.bincount(users, minlength=n_users)
    starts = np.cumsum(counts) - counts  # first position of each user in `order`
    pos = np.arange(len(order)) - starts[users[order]]  # rank of the row within its user
    held = np.zeros(len(pairs), dtype=bool)
    held[order] = pos < holdout_counts(counts, holdout)[users[order]]

    # Held-out users: a seeded shuffle, then half to valid and the rest to test.
    rng = np.random.default_rng([seed, 1])  # its own stream: independent of the row choice
    held_users = np.unique(users[held])
    shuffled = rng.permutation(held_users)
    is_valid_user = np.zeros(n_users, dtype=bool)
    is_valid_user[shuffled[: len(shuffled) // 2]] = True
    to_valid = held & is_valid_user[users]
    to_test = held & ~is_valid_user[users]
    return Splits(pairs[~held], pairs[to_valid], pairs[to_test])


def split_random(
    user_idx: np.ndarray, item_idx: np.ndarray, *, holdout: float = 0.2, seed: int = 0
) -> Splits:
    """Per-user random hold-out (see module docstring).

    Args:
        user_idx, item_idx: (n,) dense ids of deduplicated interactions.
    Returns:
        Splits(train, valid, test), each (n_split, 2) int64 [user, item].
    """
    _check_holdout(holdout)
    pairs = _pairs(user_idx, item_idx)
    rng = np.random.default_rng([seed, 0])
    key = rng.random(len(pairs))
    order = np.lexsort((key, pairs[:, 0]))  # by user, then random
    return _split_by_order(pairs, order, holdout, seed)


def split_temporal(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    timestamp: np.ndarray | None,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    source: str = "<data>",
) -> Splits:
    """Per-user temporal hold-out: each user's latest interactions are held out.

    Args:
        user_idx, item_idx: (n,) dense ids; timestamp: (n,) numbers.
        source: named in errors (the file the data came from).
    Raises:
        DataError naming the 'timestamp' field when it is missing or not finite.
    """
    _check_holdout(holdout)
    pairs = _pairs(user_idx, item_idx)
    if timestamp is None:
        raise DataError(f"{source}: temporal split needs a 'timestamp' field, and there is none")
    ts = np.asarray(timestamp, dtype=np.float64)
    if ts.shape != (len(pairs),):
        raise DataError(f"{source}: field 'timestamp' has {ts.shape} values for {len(pairs)} rows")
    if not np.isfinite(ts).all():
        row = int(np.argmin(np.isfinite(ts)))
        raise DataError(
            f"{source}: field 'timestamp' is not finite at row {row + 1}: {float(ts[row])}"
        )
    # Latest first: sort by -timestamp, and among equal times the later row first.
    order = np.lexsort((-np.arange(len(pairs)), -ts, pairs[:, 0]))
    return _split_by_order(pairs, order, holdout, seed)


def split_given(
    user_idx: np.ndarray, item_idx: np.ndarray, split: np.ndarray, *, source: str = "<data>"
) -> Splits:
    """Use a split column exactly as given.

    Args:
        split: (n,) str, each "train", "valid" or "test".
    Raises:
        DataError naming the first row with another value.
    """
    pairs = _pairs(user_idx, item_idx)
    split = np.asarray(split).astype(str)
    if split.shape != (len(pairs),):
        raise DataError(f"{source}: field 'split' has {split.shape} values for {len(pairs)} rows")
    bad = ~np.isin(split, SPLIT_VALUES)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{source}: row {row + 1}: field 'split' value {str(split[row])!r} is not one of {SPLIT_VALUES}"
        )
    return Splits(*(pairs[split == name] for name in SPLIT_VALUES))
