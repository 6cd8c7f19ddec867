"""Candidate lists ranked in shards of users, written once and read back by memory map,
equal the lists of one teacher_candidates call (training/distill/shards.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import ModelArtifact
from training.config import DistillConfig
from training.dataset import Dataset
from training.defaults import resolve
from training.distill.ranking import CandidateLists, rank_user_range, teacher_candidates
from training.distill.shards import (
    PrecomputedCandidates,
    ShardedRows,
    ShardPlan,
    candidate_options,
    read_shards,
    shard_dir,
    write_shard,
)
from training.distill.unkd import sample_unkd_pairs
from training.manifest import DatasetInfo, ModelManifest
from training.pipelines import distill_student
from training.popularity import item_popularity, popularity_groups
from training.scoring import EmbeddingScorer

CPU = torch.device("cpu")


def _teacher(dataset: Dataset, dim: int = 16, seed: int = 3) -> EmbeddingScorer:
    rng = np.random.default_rng(seed)
    return EmbeddingScorer(
        rng.standard_normal((dataset.n_users, dim)).astype(np.float32),
        rng.standard_normal((dataset.n_items, dim)).astype(np.float32),
        CPU,
    )


def _groups(dataset: Dataset, n_groups: int = 4) -> np.ndarray:
    train = dataset.csr("train")
    return np.asarray(
        popularity_groups(item_popularity(train.tocoo().col, dataset.n_items), n_groups)
    )


def _write_all(
    root: Path,
    teacher: EmbeddingScorer,
    dataset: Dataset,
    groups: np.ndarray,
    top_l: int,
    plan: ShardPlan,
    with_scores: bool,
) -> None:
    for i in range(plan.n_shards):
        lo, hi = plan.users(i)
        part = rank_user_range(
            teacher, dataset.csr("train"), groups, top_l, lo, hi, chunk=16, with_scores=with_scores
        )
        assert write_shard(root, i, part, lo=lo, fp="fp")


def _all_entries(
    lists: CandidateLists, n_users: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.arange(n_users).repeat_interleave(width)
    c = torch.arange(width).repeat(n_users)
    return u, c


@pytest.mark.parametrize(("n_groups", "top_l", "with_scores"), [(4, 30, False), (1, 40, True)])
def test_shards_read_by_memory_map_equal_one_process_lists(
    tiny_dataset: Dataset, tmp_path: Path, n_groups: int, top_l: int, with_scores: bool
) -> None:
    teacher = _teacher(tiny_dataset)
    groups = (
        _groups(tiny_dataset, n_groups)
        if n_groups > 1
        else np.zeros(tiny_dataset.n_items, np.int64)
    )
    full = teacher_candidates(
        teacher, tiny_dataset.csr("train"), groups, top_l, with_scores=with_scores
    )
    plan = ShardPlan(tiny_dataset.n_users, 45)  # 200 users: 5 shards, the last one short
    assert plan.n_shards == 5 and plan.users(4) == (180, 200)
    _write_all(tmp_path, teacher, tiny_dataset, groups, top_l, plan, with_scores)

    sharded = read_shards(tmp_path, plan, "fp")
    assert isinstance(sharded.items, ShardedRows)
    # Each shard stays a memory map of its file: nothing read it into the process.
    assert all(isinstance(p, np.memmap) for p in sharded.items.parts)
    assert tuple(sharded.items.shape) == tuple(full.items.shape)
    width = int(full.items.shape[1])
    u, c = _all_entries(full, tiny_dataset.n_users, width)
    assert torch.equal(sharded.items[u, c].reshape(full.items.shape), full.items)
    assert sharded.items[u, c].dtype == torch.int32
    assert torch.equal(sharded.lengths, full.lengths)
    assert torch.equal(sharded.offsets, full.offsets) and torch.equal(sharded.widths, full.widths)
    assert sharded.nbytes() == full.nbytes()
    if with_scores:
        assert full.scores is not None and sharded.scores is not None
        assert torch.equal(sharded.scores[u, c].reshape(full.scores.shape), full.scores)
    else:
        assert sharded.scores is None
    # Scattered reads in any order, with broadcasting, as the samplers make them.
    gen = torch.Generator().manual_seed(0)
    uu = torch.randint(0, tiny_dataset.n_users, (500,), generator=gen)
    cc = torch.randint(0, width, (500,), generator=gen)
    assert torch.equal(sharded.items[uu, cc], full.items[uu, cc])
    assert torch.equal(
        sharded.items[uu[:7, None], torch.arange(3)[None, :]],
        full.items[uu[:7, None], torch.arange(3)],
    )

    in_memory = read_shards(tmp_path, plan, "fp", mmap=False)  # RRD's path
    assert torch.equal(in_memory.items, full.items) and torch.equal(in_memory.lengths, full.lengths)


def test_unkd_pairs_drawn_from_shards_equal_the_in_memory_ones(
    tiny_dataset: Dataset, tmp_path: Path
) -> None:
    teacher, groups = _teacher(tiny_dataset), _groups(tiny_dataset)
    full = teacher_candidates(teacher, tiny_dataset.csr("train"), groups, 30)
    plan = ShardPlan(tiny_dataset.n_users, 64)
    _write_all(tmp_path, teacher, tiny_dataset, groups, 30, plan, False)
    sharded = read_shards(tmp_path, plan, "fp")
    for epoch in range(3):
        a = sample_unkd_pairs(full, 8, 5.0, epoch, torch.Generator().manual_seed(epoch))
        b = sample_unkd_pairs(sharded, 8, 5.0, epoch, torch.Generator().manual_seed(epoch))
        assert all(torch.equal(a[k], b[k]) for k in ("u", "i", "j"))


def test_a_shard_is_written_once_and_a_missing_or_foreign_one_is_refused(
    tiny_dataset: Dataset, tmp_path: Path
) -> None:
    teacher, groups = _teacher(tiny_dataset), _groups(tiny_dataset)
    plan = ShardPlan(tiny_dataset.n_users, 100)
    part = rank_user_range(teacher, tiny_dataset.csr("train"), groups, 10, 0, 100)
    assert write_shard(tmp_path, 0, part, lo=0, fp="fp")
    assert not write_shard(tmp_path, 0, part, lo=0, fp="other")  # a second writer loses
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"
    with pytest.raises(FileNotFoundError, match="shard 1 of 2 missing"):
        read_shards(tmp_path, plan, "fp")
    with pytest.raises(ValueError, match="expected 0..100 of other"):
        read_shards(tmp_path, plan, "other")
    with pytest.raises(FileNotFoundError):  # the job's directory is gone: never recreated
        write_shard(tmp_path / "gone", 1, part, lo=100, fp="fp")
    assert (shard_dir(tmp_path, 0) / "items.npy").is_file()


def test_sharded_rows_refuse_whole_array_reads(tiny_dataset: Dataset, tmp_path: Path) -> None:
    teacher, groups = _teacher(tiny_dataset), _groups(tiny_dataset)
    plan = ShardPlan(tiny_dataset.n_users, 100)
    _write_all(tmp_path, teacher, tiny_dataset, groups, 10, plan, False)
    rows = read_shards(tmp_path, plan, "fp").items
    with pytest.raises(TypeError, match="index tensors only"):
        rows[:, :5]
    with pytest.raises(IndexError):
        rows[torch.tensor([tiny_dataset.n_users]), torch.tensor([0])]


@pytest.mark.parametrize("method", ["unkd", "cd"])
def test_a_student_trained_on_shards_equals_the_one_trained_in_one_process(
    tiny_dataset: Dataset, tmp_path: Path, method: str
) -> None:
    train = tiny_dataset.csr("train")
    rng = np.random.default_rng(1)
    teacher = ModelArtifact(
        rng.standard_normal((tiny_dataset.n_users, 16)).astype(np.float32),
        rng.standard_normal((tiny_dataset.n_items, 16)).astype(np.float32),
        _teacher_manifest(tiny_dataset),
    )
    cfg = DistillConfig(method=method, dim=8, epochs=3, batch_size=256, seed=5)  # type: ignore[arg-type]
    one = distill_student(tiny_dataset, teacher, cfg, tmp_path / "one", device=CPU)

    opts = candidate_options(resolve(cfg, train), train)
    assert opts is not None and opts.mmap
    scorer = EmbeddingScorer(teacher.user_emb, teacher.item_emb, CPU)
    plan = ShardPlan(tiny_dataset.n_users, 60)
    root = tmp_path / "shards"
    root.mkdir()
    for i in range(plan.n_shards):
        lo, hi = plan.users(i)
        part = rank_user_range(
            scorer, train, opts.groups, opts.top_l, lo, hi, with_scores=opts.with_scores
        )
        write_shard(root, i, part, lo=lo, fp="fp")
    pre = PrecomputedCandidates(read_shards(root, plan, "fp"), opts)
    sharded = distill_student(
        tiny_dataset, teacher, cfg, tmp_path / "sharded", device=CPU, candidates=pre
    )
    assert np.array_equal(one.user_emb, sharded.user_emb)
    assert np.array_equal(one.item_emb, sharded.item_emb)


def test_precomputed_lists_of_another_method_are_refused(
    tiny_dataset: Dataset, tmp_path: Path
) -> None:
    train = tiny_dataset.csr("train")
    rng = np.random.default_rng(1)
    teacher = ModelArtifact(
        rng.standard_normal((tiny_dataset.n_users, 16)).astype(np.float32),
        rng.standard_normal((tiny_dataset.n_items, 16)).astype(np.float32),
        _teacher_manifest(tiny_dataset),
    )
    cd = candidate_options(DistillConfig(method="cd", dim=8), train)
    assert cd is not None
    lists = teacher_candidates(
        EmbeddingScorer(teacher.user_emb, teacher.item_emb, CPU), train, cd.groups, 5
    )
    cfg = DistillConfig(method="unkd", dim=8, epochs=1, batch_size=256)
    with pytest.raises(ValueError, match="not the lists method='unkd' ranks"):
        distill_student(
            tiny_dataset,
            teacher,
            cfg,
            tmp_path / "m",
            device=CPU,
            candidates=PrecomputedCandidates(lists, cd),
        )


def _teacher_manifest(dataset: Dataset) -> ModelManifest:
    return ModelManifest(
        id="t-shards",
        kind="teacher",
        model="mf",
        dim=16,
        dataset=DatasetInfo(name=dataset.name, fingerprint=dataset.fingerprint),
    )
