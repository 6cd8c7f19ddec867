"""Teacher candidate lists in shards of users, on disk, read back by memory map.

A large distillation job ranks its teacher's candidates in shards of consecutive users
(worker/fanout.py spreads them over workers). Each shard is a directory written once:

    <root>/shard-00003/items.npy     (rows, sum_g L_g) int32, -1 = none
                       lengths.npy   (rows, G) int64
                       scores.npy    (rows, sum_g L_g) float32, CD only
                       meta.json     lo, hi, offsets, widths, fingerprint; written last

built in a hidden temp directory beside it and renamed into place, so a shard directory
that exists is complete, a worker killed mid-shard leaves only a temp directory, and a
second writer of the same shard (a redelivery) loses the rename and discards its copy.

`read_shards` stacks them without copying the lists: `items` (and `scores`) become a
`ShardedRows`, a list of np.memmap one per shard that answers the reads the UnKD, RD and CD
samplers make each epoch (`items[u, cols]` for index tensors u, cols) by gathering those
entries from the shards' pages. The process keeps `lengths` ((n_users, G) int64, small) and
the gathered batch; the lists stay in the page cache, which the kernel can drop, so a
worker's own memory no longer grows with users × L. RRD reads the whole list tensor each
epoch (torch.gather over all users, and the lists as excluded items), so its lists are
read into memory (`mmap=False` in CandidateOptions): sharding still spreads its ranking.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
import torch

from training.config import DistillConfig
from training.distill.ranking import CandidateLists, candidates_key
from training.popularity import item_popularity, popularity_groups

META = "meta.json"


@dataclass(frozen=True)
class CandidateOptions:
    """What a method's lists are ranked with, as its distiller asks for them in prepare().

    Args:
        groups: (n_items,) group of each item (zeros: one list over the catalogue).
        top_l: list length per (user, group).
        with_scores: keep the teacher's score of each listed item (CD).
        mmap: the distiller reads rows only, so the lists may stay on disk (not RRD).
    """

    groups: np.ndarray
    top_l: int
    with_scores: bool
    mmap: bool


def candidate_options(cfg: DistillConfig, train: sp.csr_matrix) -> CandidateOptions | None:
    """The lists cfg.method's distiller ranks (training.distill: UnKD.prepare, _single_list),
    or None for `none`. `cfg` must be resolved (training.defaults.resolve)."""
    n_items = train.shape[1]
    single = np.zeros(n_items, dtype=np.int64)
    if cfg.method == "unkd":
        pop = item_popularity(train.tocoo().col, n_items)
        groups = np.asarray(popularity_groups(pop, cfg.unkd.groups))
        return CandidateOptions(groups, cfg.unkd.list_length, False, True)
    if cfg.method == "rd":
        return CandidateOptions(single, cfg.rd.top_k, False, True)
    if cfg.method == "cd":
        return CandidateOptions(single, cfg.cd.top_l, True, True)
    if cfg.method == "rrd":
        return CandidateOptions(single, cfg.rrd.top_l, False, False)
    return None


def fingerprint(teacher_key: str, train: sp.csr_matrix, opts: CandidateOptions) -> str:
    """Names the lists: teacher, training data, grouping and list options (candidates_key)."""
    key = candidates_key(teacher_key, train, opts.groups, opts.top_l, opts.with_scores)
    return hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class ShardPlan:
    """Users 0..n_users-1 cut into shards of `shard_users` consecutive users."""

    n_users: int
    shard_users: int

    def __post_init__(self) -> None:
        if self.shard_users < 1 or self.n_users < 1:
            raise ValueError(
                f"shard_users={self.shard_users} and n_users={self.n_users} must be >= 1"
            )

    @property
    def n_shards(self) -> int:
        return -(-self.n_users // self.shard_users)

    def users(self, index: int) -> tuple[int, int]:
        """(lo, hi): the users of shard `index`."""
        if not 0 <= index < self.n_shards:
            raise IndexError(f"shard {index} of {self.n_shards}")
        lo = index * self.shard_users
        return lo, min(lo + self.shard_users, self.n_users)


def shard_dir(root: Path, index: int) -> Path:
    return Path(root) / f"shard-{index:05d}"


def shard_meta(root: Path, index: int) -> dict[str, Any] | None:
    """The shard's meta.json, or None while the shard is not written."""
    try:
        return cast(dict[str, Any], json.loads((shard_dir(root, index) / META).read_text()))
    except FileNotFoundError:
        return None


def write_shard(
    root: Path,
    index: int,
    lists: CandidateLists,
    *,
    lo: int,
    fp: str,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Write one shard (rows of users lo.. of `lists`) once; False if it was already there.

    The parent `root` must exist: a root removed meanwhile (its job ended) raises
    FileNotFoundError instead of being created again.
    """
    arrays = {"items": lists.items.numpy(), "lengths": lists.lengths.numpy()}
    if lists.scores is not None:
        arrays["scores"] = lists.scores.numpy()
    meta = {
        "index": index,
        "lo": lo,
        "hi": lo + int(lists.items.shape[0]),
        "fingerprint": fp,
        "offsets": lists.offsets.tolist(),
        "widths": lists.widths.tolist(),
        "with_scores": lists.scores is not None,
        **(extra or {}),
    }
    return write_arrays(root, index, arrays, meta)


def write_arrays(
    root: Path, index: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> bool:
    """Shard `index` under `root` as <name>.npy files and meta.json, written once: built in a
    hidden temp directory, made durable, then renamed into place. False if it was already
    there (another writer got there first). `root` must exist (see write_shard)."""
    final = shard_dir(root, index)
    if final.is_dir():
        return False
    tmp = Path(root) / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, values in arrays.items():
            np.save(tmp / f"{name}.npy", values)
        (tmp / META).write_text(json.dumps(meta))
        for f in tmp.iterdir():  # durable before visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, final)  # atomic; fails when another writer got there first
        except OSError:
            if final.is_dir():
                return False
            raise
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class ShardedRows:
    """A (n_users, width) array kept as per-shard memory maps, read by gathering.

    Supports the reads the row samplers make, `rows[u, c]` with integer index tensors u
    and c (broadcast together), returning a torch tensor; each shard's np.memmap serves
    its users' entries, so only the pages holding them are read. Slices and whole-array
    reads are refused: they would copy the lists this class keeps on disk.
    """

    def __init__(self, parts: list[np.ndarray], starts: list[int]) -> None:
        if not parts or len(parts) != len(starts):
            raise ValueError(f"{len(parts)} parts and {len(starts)} starts")
        self.parts = parts
        self.starts = np.asarray(starts, dtype=np.int64)
        self.n_rows = int(self.starts[-1] + parts[-1].shape[0])
        self._torch_dtype = torch.from_numpy(np.empty(0, dtype=parts[0].dtype)).dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.n_rows, int(self.parts[0].shape[1])))

    @property
    def dtype(self) -> torch.dtype:
        return self._torch_dtype

    def numel(self) -> int:
        return self.n_rows * int(self.parts[0].shape[1])

    def element_size(self) -> int:
        return int(self.parts[0].dtype.itemsize)

    def __getitem__(self, key: object) -> torch.Tensor:
        if not (
            isinstance(key, tuple)
            and len(key) == 2
            and all(isinstance(k, torch.Tensor) for k in key)
        ):
            raise TypeError(
                "ShardedRows supports rows[u, c] with index tensors only (no slices: "
                "they would read the whole lists into memory)"
            )
        u_t, c_t = torch.broadcast_tensors(*cast(tuple[torch.Tensor, torch.Tensor], key))
        u, c = u_t.reshape(-1).numpy(), c_t.reshape(-1).numpy()
        if u.size and (u.min() < 0 or u.max() >= self.n_rows):
            raise IndexError(f"user index out of range 0..{self.n_rows - 1}")
        shard = np.searchsorted(self.starts, u, side="right") - 1
        out = np.empty(u.shape, dtype=self.parts[0].dtype)
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(len(self.parts) + 1))
        for s, part in enumerate(self.parts):
            pick = order[bounds[s] : bounds[s + 1]]
            if pick.size:
                out[pick] = part[u[pick] - self.starts[s], c[pick]]
        return torch.from_numpy(out).reshape(u_t.shape)


def read_shards(root: Path, plan: ShardPlan, fp: str, *, mmap: bool = True) -> CandidateLists:
    """The full lists from the shards of `plan` under `root`, all of fingerprint `fp`.

    mmap=True: items and scores stay on disk (ShardedRows over np.load(mmap_mode="r"));
    False: read into one in-memory tensor each, as teacher_candidates returns them.

    Raises:
        FileNotFoundError: a shard is missing; ValueError: a shard of other lists or rows.
    """
    items: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    starts: list[int] = []
    meta: dict[str, Any] | None = None
    for i in range(plan.n_shards):
        meta = shard_meta(root, i)
        if meta is None:
            raise FileNotFoundError(f"candidate shard {i} of {plan.n_shards} missing under {root}")
        lo, hi = plan.users(i)
        if meta["fingerprint"] != fp or (meta["lo"], meta["hi"]) != (lo, hi):
            raise ValueError(
                f"shard {i} under {root} holds users {meta['lo']}..{meta['hi']} of "
                f"lists {meta['fingerprint']}; expected {lo}..{hi} of {fp}"
            )
        d = shard_dir(root, i)
        items.append(np.load(d / "items.npy", mmap_mode="r" if mmap else None))
        lengths.append(np.load(d / "lengths.npy"))
        if meta["with_scores"]:
            scores.append(np.load(d / "scores.npy", mmap_mode="r" if mmap else None))
        starts.append(lo)
    assert meta is not None  # plan.n_shards >= 1
    offsets = torch.tensor(meta["offsets"], dtype=torch.int64)
    widths = torch.tensor(meta["widths"], dtype=torch.int64)
    length_t = torch.from_numpy(np.concatenate(lengths))
    if not mmap:
        return CandidateLists(
            torch.from_numpy(np.concatenate(items)),
            length_t,
            offsets,
            widths,
            torch.from_numpy(np.concatenate(scores)) if scores else None,
        )
    # Duck-typed for the row samplers (UnKD, RD, CD), which only index items[u, cols].
    item_rows = cast(torch.Tensor, ShardedRows(items, starts))
    score_rows = cast(torch.Tensor, ShardedRows(scores, starts)) if scores else None
    return CandidateLists(item_rows, length_t, offsets, widths, score_rows)


@dataclass(frozen=True)
class PrecomputedCandidates:
    """Lists ranked before the job's training (by shards): pipelines.distill_student uses
    them instead of ranking the teacher in its own process."""

    lists: CandidateLists
    options: CandidateOptions
