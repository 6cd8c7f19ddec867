"""Splits and dataset preparation: the per-user protocols, a given split used as is,
de-duplication, iterated filters, dense ids, and the errors of prepare_dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.dataset import Dataset
from training.errors import DataError
from training.formats import RawInteractions, write_interactions
from training.prepare import load_dataset, prepare_dataset
from training.split import holdout_counts, split_given, split_random, split_temporal


def _interactions(
    n_users: int = 400, n_items: int = 300, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicated pairs with very different user activity (1 to ~80 interactions)."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(1 + rng.geometric(1 / 15, n_users), n_items)
    users = np.repeat(np.arange(n_users), counts)
    items = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts])
    return users, items


def _as_set(*arrays: np.ndarray) -> set[tuple[int, int]]:
    return {tuple(p) for a in arrays for p in a.tolist()}


def test_random_split_partitions_the_input():
    users, items = _interactions()
    train, valid, test = split_random(users, items)
    assert len(train) + len(valid) + len(test) == len(users)
    assert _as_set(train, valid, test) == _as_set(np.stack([users, items], 1))
    for part in (train, valid, test):
        assert part.dtype == np.int64 and part.shape[1] == 2


def test_random_split_is_seeded():
    users, items = _interactions()
    a, b, c = (
        split_random(users, items, seed=3),
        split_random(users, items, seed=3),
        split_random(users, items, seed=4),
    )
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.test, c.test)


def test_random_split_holds_out_about_a_fifth_of_each_user():
    users, items = _interactions()
    train, valid, test = split_random(users, items, holdout=0.2)
    n = np.bincount(users)
    held = np.bincount(np.concatenate([valid[:, 0], test[:, 0]]), minlength=len(n))
    np.testing.assert_array_equal(held, holdout_counts(n, 0.2))
    big = n >= 10
    assert np.all(np.abs(held[big] / n[big] - 0.2) <= 0.05 + 1e-9)
    assert abs(held.sum() / n.sum() - 0.2) < 0.02
    # Users with fewer than 3 interactions keep them all in train; everyone keeps one.
    assert np.all(held[n < 3] == 0)
    assert np.all(np.bincount(train[:, 0], minlength=len(n)) >= 1)


def test_random_split_sends_each_user_to_one_side_half_and_half():
    users, items = _interactions()
    _, valid, test = split_random(users, items)
    v_users, t_users = set(valid[:, 0].tolist()), set(test[:, 0].tolist())
    assert not v_users & t_users
    assert abs(len(v_users) - len(t_users)) <= 1
    assert len(v_users) > 100


def test_holdout_rule():
    np.testing.assert_array_equal(
        holdout_counts(np.array([0, 1, 2, 3, 5, 7, 8, 10]), 0.2), [0, 0, 0, 1, 1, 1, 2, 2]
    )
    np.testing.assert_array_equal(holdout_counts(np.array([1, 2, 3]), 0.9), [0, 1, 2])


def test_temporal_split_holds_out_each_users_latest():
    users, items = _interactions()
    rng = np.random.default_rng(1)
    ts = rng.permutation(len(users)).astype(float)  # distinct times
    train, valid, test = split_temporal(users, items, ts, holdout=0.2, seed=0)
    when = {(u, i): t for u, i, t in zip(users.tolist(), items.tolist(), ts.tolist(), strict=True)}
    latest_train = {}
    for u, i in train.tolist():
        latest_train[u] = max(latest_train.get(u, -1), when[(u, i)])
    held = np.concatenate([valid, test])
    assert len(held) > 0
    for u, i in held.tolist():
        assert when[(u, i)] > latest_train[u]
    np.testing.assert_array_equal(
        np.bincount(held[:, 0], minlength=users.max() + 1), holdout_counts(np.bincount(users), 0.2)
    )
    assert not set(valid[:, 0].tolist()) & set(test[:, 0].tolist())


def test_temporal_split_needs_timestamps():
    users, items = _interactions()
    with pytest.raises(DataError, match="'timestamp'"):
        split_temporal(users, items, None, source="log.csv")
    with pytest.raises(DataError, match="'timestamp'"):
        split_temporal(users, items, np.full(len(users), np.nan))


def test_given_split_is_used_exactly():
    users, items = _interactions()
    labels = np.random.default_rng(2).choice(["train", "valid", "test"], len(users))
    parts = split_given(users, items, labels)
    for name, part in zip(("train", "valid", "test"), parts, strict=True):
        np.testing.assert_array_equal(part, np.stack([users, items], 1)[labels == name])
    with pytest.raises(DataError, match="row 2: field 'split' value 'dev'"):
        split_given(users[:2], items[:2], np.array(["train", "dev"]))


# -- prepare_dataset -----------------------------------------------------------------------
def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_prepare_uses_a_given_split_column_as_is(tmp_path: Path):
    rng = np.random.default_rng(0)
    n = 500
    raw = RawInteractions(
        user=np.char.add("u", rng.integers(0, 50, n).astype(str)),
        item=np.char.add("i", rng.integers(0, 80, n).astype(str)),
        split=rng.choice(["train", "valid", "test"], n, p=[0.7, 0.15, 0.15]),
    )
    path = write_interactions(raw, tmp_path / "log.csv")
    ds = prepare_dataset(path)
    assert ds.info["split"] == "given"
    # Expected content: per pair, the earliest split it appears in (train < valid < test).
    rank = {"train": 0, "valid": 1, "test": 2}
    best: dict[tuple[str, str], str] = {}
    for u, i, s in zip(raw.user.tolist(), raw.item.tolist(), raw.split.tolist(), strict=True):
        if (u, i) not in best or rank[s] < rank[best[(u, i)]]:
            best[(u, i)] = s
    for name in ("train", "valid", "test"):
        got = {(ds.user_ids[u], ds.item_ids[i]) for u, i in ds.split(name).tolist()}
        assert got == {pair for pair, s in best.items() if s == name}, name


def test_prepare_deduplicates_keeping_the_first(tmp_path: Path):
    # The first (a, x) row is the oldest; if the later duplicate were kept, x would be
    # a's latest interaction and the temporal split would hold it out instead of y.
    rows = "a,x,1\na,y,5\na,x,9\na,z,2\na,w,3\nb,x,2\n"
    path = _write(tmp_path, "log.csv", "user,item,timestamp\n" + rows)
    ds = prepare_dataset(path, split="temporal")
    assert ds.info["dropped"]["duplicates"] == 1
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 5
    held = np.concatenate([ds.valid, ds.test])
    assert [(ds.user_ids[u], ds.item_ids[i]) for u, i in held.tolist()] == [("a", "y")]


def test_prepare_filters_until_stable(tmp_path: Path):
    # Dropping item z (1 user) leaves user c with 1 item; dropping c leaves item w with 1 user.
    rows = ["a,x", "a,y", "b,x", "b,y", "c,z", "c,w", "d,w", "d,x"]
    path = _write(tmp_path, "log.csv", "user,item\n" + "\n".join(rows) + "\n")
    ds = prepare_dataset(path, min_user_interactions=2, min_item_interactions=2, holdout=0.5)
    all_pairs = np.concatenate([ds.train, ds.valid, ds.test])
    assert np.bincount(all_pairs[:, 0]).min() >= 2 and np.bincount(all_pairs[:, 1]).min() >= 2
    assert sorted(ds.user_ids.tolist()) == ["a", "b"] and sorted(ds.item_ids.tolist()) == ["x", "y"]
    assert ds.info["filters"]["rounds"] >= 3
    assert ds.info["dropped"]["filtered_users"] == 2 and ds.info["dropped"]["filtered_items"] == 2


def test_prepare_maps_ids_in_sorted_order_and_keeps_the_content(tmp_path: Path):
    users, items = _interactions(120, 90)
    raw = RawInteractions(
        user=np.char.add("u", users.astype(str)), item=np.char.add("i", items.astype(str))
    )
    ds = prepare_dataset(write_interactions(raw, tmp_path / "log.tsv"), seed=5)
    assert ds.user_ids.tolist() == sorted(ds.user_ids.tolist())
    assert ds.item_ids.tolist() == sorted(ds.item_ids.tolist())
    got = {
        (ds.user_ids[u], ds.item_ids[i])
        for u, i in np.concatenate([ds.train, ds.valid, ds.test]).tolist()
    }
    assert got == set(zip(raw.user.tolist(), raw.item.tolist(), strict=True))
    assert ds.info["source"] == "log.tsv" and ds.info["seed"] == 5 and ds.info["split"] == "random"


def test_prepare_temporal(tmp_path: Path):
    lines = [f"u{u},i{i},{100 * u + i}" for u in range(30) for i in range(10)]
    path = _write(tmp_path, "log.csv", "user,item,timestamp\n" + "\n".join(lines) + "\n")
    ds = prepare_dataset(path, split="temporal")
    held = np.concatenate([ds.valid, ds.test])
    # Each user's two latest items (i8, i9) are held out.
    assert set(ds.item_ids[held[:, 1]].tolist()) == {"i8", "i9"} and len(held) == 60


def test_prepare_temporal_without_timestamp_names_the_field(tmp_path: Path):
    path = _write(tmp_path, "log.csv", "user,item\na,x\n")
    with pytest.raises(DataError, match=r"log\.csv.*'timestamp'"):
        prepare_dataset(path, split="temporal")


def test_prepare_without_test_interactions_fails(tmp_path: Path):
    path = _write(tmp_path, "given.csv", "user,item,split\na,x,train\nb,y,valid\n")
    with pytest.raises(DataError, match=r"given\.csv.*no test interactions"):
        prepare_dataset(path)
    few = _write(tmp_path, "few.csv", "user,item\na,x\na,y\nb,x\n")  # nobody has 3 interactions
    with pytest.raises(DataError, match=r"few\.csv.*no test interactions"):
        prepare_dataset(few)


def test_prepare_with_nothing_left_fails(tmp_path: Path):
    path = _write(tmp_path, "log.csv", "user,item\na,x\nb,y\n")
    with pytest.raises(DataError, match=r"log\.csv.*no interactions left.*min_user_interactions=5"):
        prepare_dataset(path, min_user_interactions=5)


def test_prepare_refuses_bad_options(tmp_path: Path):
    path = _write(tmp_path, "log.csv", "user,item\na,x\n")
    with pytest.raises(DataError, match="split='sideways'"):
        prepare_dataset(path, split="sideways")
    with pytest.raises(DataError, match="no 'split' field"):
        prepare_dataset(path, split="given")


def test_load_dataset_takes_a_file_or_an_artifact(tmp_path: Path):
    users, items = _interactions(60, 50)
    raw = RawInteractions(user=users.astype(str), item=items.astype(str))
    path = write_interactions(raw, tmp_path / "log.parquet")
    ds = load_dataset(path)
    assert isinstance(ds, Dataset) and ds.info["format"] == "parquet"
    ds.save(tmp_path / "artifact")
    assert load_dataset(tmp_path / "artifact").fingerprint == ds.fingerprint
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing")


def test_ml100k_prepares_to_the_published_size(ml100k_path: Path):
    ds = prepare_dataset(ml100k_path)
    assert (ds.n_users, ds.n_items) == (943, 1682)
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 100_000
    assert ds.info["format"] == "recbole" and ds.info["dropped"]["duplicates"] == 0
