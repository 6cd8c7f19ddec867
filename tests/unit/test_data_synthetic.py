"""The synthetic generator: seeded, sized as documented, long-tailed, and driven by both
exposure (skew) and the true preferences it reports."""

from __future__ import annotations

import numpy as np
import pytest

from training.synthetic import SYNTHETIC_DEFAULTS, generate_synthetic

SMALL = {"n_users": 300, "n_items": 200, "dim": 8, "skew": 1.0, "interactions_per_user": 20}


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate_synthetic(**SMALL, seed=1), generate_synthetic(**SMALL, seed=1)
    c = generate_synthetic(**SMALL, seed=2)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.truth.item_factors, b.truth.item_factors)
    assert a.fingerprint != c.fingerprint
    assert not np.array_equal(a.truth.user_factors, c.truth.user_factors)


def test_shapes_ids_and_split(tiny_dataset):
    ds = tiny_dataset
    assert ds.truth.user_factors.shape == (ds.n_users, 8)
    assert ds.truth.item_factors.shape == (ds.n_items, 8)
    assert ds.user_ids[0] == "0" and ds.item_ids[-1] == str(ds.n_items - 1)
    pairs = np.concatenate([ds.train, ds.valid, ds.test])
    assert len(np.unique(pairs[:, 0] * ds.n_items + pairs[:, 1])) == len(pairs)  # no duplicates
    assert not set(ds.valid[:, 0].tolist()) & set(ds.test[:, 0].tolist())
    assert abs((len(ds.valid) + len(ds.test)) / len(pairs) - 0.2) < 0.03
    assert ds.info["split"] == "random" and ds.info["generator"]["skew"] == 1.0


def test_defaults_are_sized_for_a_two_minute_pipeline():
    ds = generate_synthetic()
    stats = ds.statistics(n_groups=4)
    assert ds.info["generator"]["n_users"] == SYNTHETIC_DEFAULTS["n_users"]
    assert 2000 <= stats["users"] <= 3000 and 1000 <= stats["items"] <= 2000
    assert 80_000 <= stats["interactions"] <= 120_000
    sizes = [g["items"] for g in stats["popularity_groups"]]
    assert sizes == sorted(sizes)  # head has fewest items
    assert sizes[0] <= 0.05 * stats["items"] and sizes[-1] >= 0.5 * stats["items"]


def test_long_tail_head_group_much_smaller_than_tail(tiny_dataset):
    sizes = np.bincount(tiny_dataset.groups(4), minlength=4)
    assert sizes[0] * 4 <= sizes[-1]


@pytest.mark.parametrize("seed", [0, 1])
def test_more_skew_means_a_longer_tail(seed):
    def head_items(skew: float) -> int:
        ds = generate_synthetic(**{**SMALL, "skew": skew}, seed=seed)
        return int((ds.groups(4) == 0).sum())

    assert head_items(0.0) > head_items(1.0) > head_items(2.0)


def test_interactions_follow_the_true_preferences(tiny_dataset):
    ds = tiny_dataset
    scores = ds.truth.user_factors @ ds.truth.item_factors.T
    observed = scores[ds.train[:, 0], ds.train[:, 1]].mean()
    rng = np.random.default_rng(0)
    random_pairs = scores[
        rng.integers(0, ds.n_users, 5000), rng.integers(0, ds.n_items, 5000)
    ].mean()
    assert observed > random_pairs + 0.3


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="dim"):
        generate_synthetic(**{**SMALL, "dim": 1})
    with pytest.raises(ValueError, match="skew"):
        generate_synthetic(**{**SMALL, "skew": -1.0})
