"""From an interactions file to a Dataset: read, de-duplicate, filter, map ids, split.

- De-duplication: one row per (user, item). Without a given split the first row in file
  order is kept (with its rating and timestamp). With a given split the pair keeps its
  earliest split in the order train < valid < test (then the first such row), so a pair
  seen in train is never also a test positive.
- Filters: users with fewer than `min_user_interactions` and items with fewer than
  `min_item_interactions` (deduplicated) interactions are dropped, repeatedly, until
  both hold (dropping items can push a user under the limit and back).
- Ids: dense internal ids follow the sorted order of the external id strings
  (lexicographic, so "10" < "2"); `Dataset.user_ids[k]` is the external id of user k.
- Split: "auto" uses the file's split column when it has one, else "random".
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.dataset import Dataset
from training.errors import DataError
from training.formats import RawInteractions, read_interactions
from training.split import SPLIT_VALUES, split_given, split_random, split_temporal

logger = logging.getLogger(__name__)

SPLIT_PROTOCOLS = ("auto", "random", "temporal", "given")
_BIG = 1_000_000  # rows: log progress at INFO from here on


def _dedup(raw: RawInteractions, ucode: np.ndarray, icode: np.ndarray, n_items: int) -> np.ndarray:
    """Indices (ascending) of the rows kept, one per (user, item) pair."""
    key = ucode * n_items + icode
    pos = np.arange(len(key))
    if raw.split is None:
        _, first = np.unique(key, return_index=True)  # index of the first occurrence
        return np.sort(first)
    rank = np.zeros(len(key), dtype=np.int64)  # train 0 < valid 1 < test 2
    for r, value in enumerate(SPLIT_VALUES[1:], start=1):
        rank[raw.split == value] = r
    order = np.lexsort((pos, rank, key))
    k = key[order]
    is_first = np.ones(len(k), dtype=bool)
    is_first[1:] = k[1:] != k[:-1]
    return np.sort(order[is_first])


def _filter(
    ucode: np.ndarray, icode: np.ndarray, min_user: int, min_item: int
) -> tuple[np.ndarray, int]:
    """Boolean mask of rows that survive the minimum-count filters, and the rounds used."""
    keep = np.ones(len(ucode), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        u_count = np.bincount(ucode[keep], minlength=int(ucode.max(initial=-1)) + 1)
        i_count = np.bincount(icode[keep], minlength=int(icode.max(initial=-1)) + 1)
        new = keep & (u_count[ucode] >= min_user) & (i_count[icode] >= min_item)
        if (new == keep).all():
            return keep, rounds
        keep = new


def prepare_dataset(
    source: str | Path | RawInteractions,
    *,
    fmt: str = "auto",
    split: str = "auto",
    seed: int = 0,
    min_user_interactions: int = 1,
    min_item_interactions: int = 1,
    holdout: float = 0.2,
    name: str | None = None,
) -> Dataset:
    """Read an interactions file (or take RawInteractions) and build a Dataset.

    Args:
        source: a file in one of `training.formats.FORMATS`, or RawInteractions.
        split: "auto" (given if the data has a split column, else random), "random",
            "temporal" or "given".
    Raises:
        DataError when nothing remains after filtering or there is no test interaction.
    """
    if split not in SPLIT_PROTOCOLS:
        raise DataError(f"split={split!r}: expected one of {SPLIT_PROTOCOLS}")
    if min_user_interactions < 1 or min_item_interactions < 1:
        raise DataError(
            f"min_user_interactions={min_user_interactions} and "
            f"min_item_interactions={min_item_interactions} must be >= 1"
        )
    t0 = time.perf_counter()
    raw = source if isinstance(source, RawInteractions) else read_interactions(source, fmt)
    where = raw.source or "<memory>"
    file_name = Path(raw.source).name if raw.source else "<memory>"
    log = logger.info if len(raw) >= _BIG else logger.debug
    log("%s: read %d rows (%s) in %.2fs", where, len(raw), raw.format, time.perf_counter() - t0)
    if len(raw) == 0:
        raise DataError(f"{where}: no interactions")

    protocol = split
    if protocol == "auto":
        protocol = "given" if raw.split is not None else "random"
    if protocol == "given" and raw.split is None:
        raise DataError(f"{where}: split='given' but the data has no 'split' field")
    if protocol == "temporal" and raw.timestamp is None:
        raise DataError(f"{where}: split='temporal' needs a 'timestamp' field, and there is none")

    # Codes follow the sorted order of external ids; they stay sorted after filtering.
    user_ids, ucode = np.unique(raw.user, return_inverse=True)
    item_ids, icode = np.unique(raw.item, return_inverse=True)
    ucode, icode = ucode.astype(np.int64).ravel(), icode.astype(np.int64).ravel()
    rows = _dedup(raw, ucode, icode, len(item_ids))
    n_duplicates = len(raw) - len(rows)
    ucode, icode = ucode[rows], icode[rows]

    keep, rounds = _filter(ucode, icode, min_user_interactions, min_item_interactions)
    if not keep.any():
        raise DataError(
            f"{where}: no interactions left after filtering (min_user_interactions="
            f"{min_user_interactions}, min_item_interactions={min_item_interactions})"
        )
    rows, ucode, icode = rows[keep], ucode[keep], icode[keep]
    kept_users, uidx = np.unique(ucode, return_inverse=True)
    kept_items, iidx = np.unique(icode, return_inverse=True)
    uidx, iidx = uidx.ravel(), iidx.ravel()

    if protocol == "given" and raw.split is not None:
        parts = split_given(uidx, iidx, raw.split[rows], source=where)
    elif protocol == "temporal" and raw.timestamp is not None:
        ts = raw.timestamp[rows]
        parts = split_temporal(uidx, iidx, ts, holdout=holdout, seed=seed, source=where)
    else:
        parts = split_random(uidx, iidx, holdout=holdout, seed=seed)
    if len(parts.test) == 0:
        raise DataError(
            f"{where}: no test interactions after the {protocol} split "
            f"({len(rows)} interactions, {len(kept_users)} users; holdout={holdout})"
        )

    info: dict[str, Any] = {
        "source": file_name,
        "format": raw.format,
        "split": protocol,
        "seed": seed if protocol != "given" else None,
        "holdout": holdout if protocol != "given" else None,
        "filters": {
            "min_user_interactions": min_user_interactions,
            "min_item_interactions": min_item_interactions,
            "rounds": rounds,
        },
        "rows_read": len(raw),
        "dropped": {
            "duplicates": n_duplicates,
            "filtered_interactions": int((~keep).sum()),
            "filtered_users": int(len(user_ids) - len(kept_users)),
            "filtered_items": int(len(item_ids) - len(kept_items)),
        },
        "interactions": len(rows),
    }
    ds = Dataset(
        name=name or (Path(raw.source).stem if raw.source else "dataset"),
        user_ids=user_ids[kept_users],
        item_ids=item_ids[kept_items],
        train=parts.train,
        valid=parts.valid,
        test=parts.test,
        info=info,
    )
    log(
        "%s: prepared %d users, %d items, %d interactions (%d duplicates, %d filtered) in %.2fs",
        where,
        ds.n_users,
        ds.n_items,
        len(rows),
        n_duplicates,
        int((~keep).sum()),
        time.perf_counter() - t0,
    )
    return ds


def load_dataset(source: str | Path) -> Dataset:
    """A dataset artifact directory is loaded; an interactions file is prepared with defaults."""
    path = Path(source)
    if path.is_dir():
        return Dataset.load(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or dataset directory")
    return prepare_dataset(path)
