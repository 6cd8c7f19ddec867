"""Popularity groups (equal interaction mass, head -> tail, unseen items in the tail)
and the head/tail split, checked as invariants on long-tailed counts."""

from __future__ import annotations

import numpy as np
import pytest

from training.popularity import head_tail_split, item_popularity, popularity_groups


def _long_tail(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pop = rng.zipf(1.6, n).clip(max=2000).astype(np.int64)
    pop[rng.choice(n, n // 10, replace=False)] = 0  # items unseen in training
    return pop


def test_item_popularity_counts_training_interactions():
    assert item_popularity(np.array([2, 0, 2, 2]), 4).tolist() == [1, 0, 3, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_groups", [2, 4, 7])
def test_groups_hold_equal_mass_within_one_item(seed, n_groups):
    pop = _long_tail(seed=seed)
    groups = popularity_groups(pop, n_groups)
    assert groups.shape == pop.shape and set(np.unique(groups)) <= set(range(n_groups))
    mass = np.bincount(groups, weights=pop, minlength=n_groups)
    assert mass.sum() == pop.sum()
    # Every cut lands at most one item past the ideal boundary.
    assert np.all(np.abs(mass - pop.sum() / n_groups) <= pop.max())


def test_groups_are_ordered_head_to_tail_and_unseen_items_are_tail():
    pop = _long_tail()
    groups = popularity_groups(pop, 4)
    for g in range(3):
        if (groups == g).any() and (groups == g + 1).any():
            assert pop[groups == g].min() >= pop[groups == g + 1].max()
    assert np.all(groups[pop == 0] == 3)
    sizes = np.bincount(groups, minlength=4)
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3]


def test_groups_of_dataset_match_its_training_popularity(tiny_dataset):
    pop = np.bincount(tiny_dataset.train[:, 1], minlength=tiny_dataset.n_items)
    np.testing.assert_array_equal(tiny_dataset.popularity(), pop)
    np.testing.assert_array_equal(tiny_dataset.groups(4), popularity_groups(pop, 4))


def test_degenerate_group_inputs():
    assert popularity_groups(np.zeros(5, dtype=np.int64), 4).tolist() == [3] * 5
    assert popularity_groups(np.array([3, 1, 2]), 1).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="n_groups=0"):
        popularity_groups(np.array([1]), 0)


@pytest.mark.parametrize("head_mass", [0.5, 0.8, 0.95])
def test_head_is_the_smallest_prefix_reaching_the_mass(head_mass):
    pop = _long_tail()
    head = head_tail_split(pop, head_mass)
    total = pop.sum()
    assert pop[head].sum() >= head_mass * total
    assert pop[head].sum() - pop[head].min() < head_mass * total  # one item fewer is not enough
    assert pop[head].min() >= pop[~head].max()


def test_head_tail_of_uniform_and_empty_popularity():
    assert head_tail_split(np.full(10, 3), 0.8).sum() == 8
    assert not head_tail_split(np.zeros(4, dtype=np.int64)).any()
