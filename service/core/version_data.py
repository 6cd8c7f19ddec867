"""The rows of a dataset version under its split rule: `grow` (temporal) or `append`.

Pure numpy over training's Dataset (no Redis, no store): service/core/versions.py reads the
root, the segments or the parent's dataset and calls one of them. The rules (module doc of
versions.py): rows in time order (the root's train, valid, test, then each segment in stream
order), unknown external ids appended after the known ones in order of first appearance, a
pair kept at its first occurrence, the root's truth kept only while the id sets are the
root's. `grow` splits every row anew (temporal, with the root's holdout and seed); `append`
keeps the parent's split of every parent row and puts each new pair in train.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.dataset import Dataset
from training.split import split_temporal

if TYPE_CHECKING:
    from service.core.event_segments import Segment

DEFAULT_HOLDOUT = 0.2
DEFAULT_SEED = 0


class IdMap:
    """External ids to dense ids; ids it has not seen are appended in order of first use."""

    def __init__(self, known: np.ndarray) -> None:
        self.ids: list[str] = [str(x) for x in known]
        self.index = {x: k for k, x in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def dense(self, external: np.ndarray) -> np.ndarray:
        """(n,) int64 dense ids of `external` ((n,) str), new ones appended."""
        if len(external) == 0:
            return np.zeros(0, dtype=np.int64)
        uniq, first, inverse = np.unique(
            np.asarray(external, dtype=str), return_index=True, return_inverse=True
        )
        codes = np.empty(len(uniq), dtype=np.int64)
        for j in np.argsort(first, kind="stable"):  # first appearance decides new ids' order
            x = str(uniq[j])
            k = self.index.get(x)
            if k is None:
                k = self.index[x] = len(self.ids)
                self.ids.append(x)
            codes[j] = k
        out: np.ndarray = codes[inverse.ravel()]
        return out


def keep_first(pairs: np.ndarray, n_items: int) -> np.ndarray:
    """Indices (ascending) of the rows of `pairs` ((n, 2) int64) that are a pair's first."""
    _, first = np.unique(pairs[:, 0] * max(1, n_items) + pairs[:, 1], return_index=True)
    out: np.ndarray = np.sort(first)
    return out


def grow(
    root_dir: Path,
    history: Sequence[Segment],
    segment: Segment,
    *,
    name: str,
) -> tuple[Dataset, dict[str, Any]]:
    """The dataset of a version: the root at `root_dir`, the segments of the versions up to
    its parent (`history`, oldest first) and the new `segment`.

    Returns:
        (the version's Dataset, {"new_users", "new_items", "new_pairs"}: what `segment`
        added to the parent: ids appended, pairs kept after de-duplication).
    """
    root = Dataset.load(root_dir)
    users, items = IdMap(root.user_ids), IdMap(root.item_ids)
    parts = [np.concatenate([root.train, root.valid, root.test])]
    for seg in history:
        parts.append(np.stack([users.dense(seg.user_ids), items.dense(seg.item_ids)], axis=1))
    parent_users, parent_items = len(users), len(items)
    parent_rows = sum(len(p) for p in parts)
    parts.append(np.stack([users.dense(segment.user_ids), items.dense(segment.item_ids)], axis=1))
    rows = np.concatenate(parts).astype(np.int64).reshape(-1, 2)
    kept = keep_first(rows, len(items))
    pairs = rows[kept]

    holdout = root.info.get("holdout") or DEFAULT_HOLDOUT
    seed = root.info.get("seed")
    seed = DEFAULT_SEED if seed is None else int(seed)
    # Every row at one time: the tie rule (a later row counts as later) holds out each user's
    # latest rows in the order built above.
    parts_split = split_temporal(
        pairs[:, 0], pairs[:, 1], np.zeros(len(pairs)), holdout=float(holdout), seed=seed
    )
    same_ids = len(users) == root.n_users and len(items) == root.n_items
    added = {
        "new_users": len(users) - parent_users,
        "new_items": len(items) - parent_items,
        "new_pairs": int((kept >= parent_rows).sum()),
    }
    info = {
        "source": "version",
        "format": "events",
        "split": "temporal",
        "seed": seed,
        "holdout": float(holdout),
        "root": {k: root.info.get(k) for k in ("source", "format", "split")},
        "segments": len(history) + 1,
        "interactions": int(len(pairs)),
        **added,
    }
    dataset = Dataset(
        name=name,
        user_ids=np.asarray(users.ids, dtype=str),
        item_ids=np.asarray(items.ids, dtype=str),
        train=parts_split.train,
        valid=parts_split.valid,
        test=parts_split.test,
        info=info,
        truth=root.truth if same_ids else None,
    )
    return dataset, added


def append(parent_dir: Path, segment: Segment, *, name: str) -> tuple[Dataset, dict[str, Any]]:
    """The dataset of an "append" version: the parent at `parent_dir` (a root or a version of
    either rule) with every parent row in the split it has there, and every pair of the new
    `segment` the parent lacks (first occurrence kept) appended to train.

    The ids extend the parent's in order of first appearance, as `grow` extends them when it
    rebuilds the lineage, so a later temporal version lines up with this one.

    Returns:
        (the version's Dataset, {"new_users", "new_items", "new_pairs"}) as `grow`.
    """
    parent = Dataset.load(parent_dir)
    users, items = IdMap(parent.user_ids), IdMap(parent.item_ids)
    old = np.concatenate([parent.train, parent.valid, parent.test])
    new = np.stack([users.dense(segment.user_ids), items.dense(segment.item_ids)], axis=1)
    rows = np.concatenate([old, new]).astype(np.int64).reshape(-1, 2)
    kept = keep_first(rows, len(items))
    fresh = rows[kept[kept >= len(old)]]
    added = {
        "new_users": len(users) - parent.n_users,
        "new_items": len(items) - parent.n_items,
        "new_pairs": len(fresh),
    }
    info = dict(parent.info)
    root_info = info.get("root") if info.get("source") == "version" else None
    if not isinstance(root_info, dict):  # the parent is the root itself
        root_info = {k: info.get(k) for k in ("source", "format", "split")}
    holdout = info.get("holdout") or DEFAULT_HOLDOUT
    seed = info.get("seed")
    info = {
        "source": "version",
        "format": "events",
        "split": "append",
        "seed": DEFAULT_SEED if seed is None else int(seed),
        "holdout": float(holdout),
        "root": root_info,
        "segments": int(info.get("segments", 0) or 0) + 1,
        "interactions": int(len(old) + len(fresh)),
        **added,
    }
    same_ids = len(users) == parent.n_users and len(items) == parent.n_items
    dataset = Dataset(
        name=name,
        user_ids=np.asarray(users.ids, dtype=str),
        item_ids=np.asarray(items.ids, dtype=str),
        train=np.concatenate([parent.train, fresh]),
        valid=parent.valid,
        test=parent.test,
        info=info,
        truth=parent.truth if same_ids else None,
    )
    return dataset, added
