"""Interaction formats: every format round-trips, "auto" detects it, ids stay strings, and
each kind of bad input fails with a DataError naming the file and the line or field."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from training.errors import DataError
from training.formats import (
    FORMATS,
    RawInteractions,
    detect_format,
    read_interactions,
    write_interactions,
)

# Formats that hold every field, and a file name "auto" must recognise for each format.
FULL_FORMATS = ("csv", "tsv", "parquet", "recbole")
FILE_NAMES = {
    "csv": "log.csv",
    "tsv": "log.tsv",
    "parquet": "log.parquet",
    "recbole": "ml.inter",
    "movielens": "u.data",
    "lines": "train.txt",
}


def _raw(
    n: int = 300, seed: int = 0, split: bool = True, numeric_users: bool = False
) -> RawInteractions:
    rng = np.random.default_rng(seed)
    # Leading zeros and letters: ids must never be parsed to numbers.
    users = (
        rng.integers(0, 40, n).astype(str)
        if numeric_users
        else np.char.add("007u", rng.integers(0, 40, n).astype(str))
    )
    items = np.char.add("0", rng.integers(0, 90, n).astype(str))
    return RawInteractions(
        user=users,
        item=items,
        rating=rng.integers(1, 11, n) / 2.0,
        timestamp=rng.integers(8.7e8, 8.9e8, n).astype(np.float64) + rng.random(n).round(3),
        split=rng.choice(["train", "valid", "test"], n) if split else None,
        source="memory",
    )


def _assert_same(a: RawInteractions, b: RawInteractions, fields: tuple[str, ...]) -> None:
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        assert y is not None, f"field {f} was lost"
        assert x.dtype.kind == y.dtype.kind, f
        np.testing.assert_array_equal(x, y, err_msg=f)


@pytest.mark.parametrize("fmt", FULL_FORMATS)
def test_full_formats_round_trip_every_field(tmp_path: Path, fmt: str):
    raw = _raw()
    path = write_interactions(raw, tmp_path / FILE_NAMES[fmt], fmt)
    back = read_interactions(path, fmt)
    _assert_same(raw, back, ("user", "item", "rating", "timestamp", "split"))
    assert back.format == fmt and back.source == str(path)
    assert back.user[0].startswith("007")  # a string, zeros kept


@pytest.mark.parametrize("fmt", FULL_FORMATS)
def test_full_formats_round_trip_without_optional_fields(tmp_path: Path, fmt: str):
    raw = RawInteractions(user=np.array(["a", "b", "a"]), item=np.array(["x", "x", "y"]))
    back = read_interactions(write_interactions(raw, tmp_path / FILE_NAMES[fmt], fmt), fmt)
    _assert_same(raw, back, ("user", "item"))
    assert back.rating is None and back.timestamp is None and back.split is None


@pytest.mark.parametrize("name", ["u.data", "ratings.dat"])
def test_movielens_round_trips_both_layouts(tmp_path: Path, name: str):
    raw = _raw(split=False)
    path = write_interactions(raw, tmp_path / name, "movielens")
    first = path.read_text().splitlines()[0]
    assert ("::" in first) == (name == "ratings.dat")
    back = read_interactions(path, "movielens")
    _assert_same(raw, back, ("user", "item", "rating", "timestamp"))


def test_lines_round_trip_keeps_each_users_items_in_order(tmp_path: Path):
    raw = _raw(split=False, numeric_users=True)
    path = write_interactions(raw, tmp_path / "train.txt", "lines")
    back = read_interactions(path, "lines")
    order, back_order = (
        np.argsort(raw.user.astype(int), kind="stable"),
        np.argsort(back.user.astype(int), kind="stable"),
    )
    np.testing.assert_array_equal(raw.user[order], back.user[back_order])
    np.testing.assert_array_equal(raw.item[order], back.item[back_order])
    assert back.rating is None and back.split is None


def test_lines_user_id_is_the_line_number_and_blank_lines_count(tmp_path: Path):
    path = tmp_path / "data.txt"
    path.write_text("2 a b\n\n1 c\n0\n1 a\n")
    raw = read_interactions(path, "lines")
    assert raw.user.tolist() == ["0", "0", "2", "4"]
    assert raw.item.tolist() == ["a", "b", "c", "a"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_auto_detects_each_format_from_name(tmp_path: Path, fmt: str):
    raw = _raw(split=False, numeric_users=True)
    path = write_interactions(raw, tmp_path / FILE_NAMES[fmt], fmt)
    assert detect_format(path) == fmt
    assert read_interactions(path).format == fmt


@pytest.mark.parametrize("fmt", ["csv", "tsv", "recbole", "parquet", "movielens", "lines"])
def test_auto_detects_each_format_from_content(tmp_path: Path, fmt: str):
    raw = _raw(split=False, numeric_users=True)
    named = write_interactions(raw, tmp_path / FILE_NAMES[fmt], fmt)
    anonymous = tmp_path / "upload.bin"
    anonymous.write_bytes(named.read_bytes())
    assert detect_format(anonymous) == fmt


def test_ratings_dat_is_detected_by_its_separator(tmp_path: Path):
    path = tmp_path / "upload.bin"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    raw = read_interactions(path)
    assert raw.format == "movielens"
    assert raw.item.tolist() == ["1193", "661"] and raw.rating.tolist() == [5.0, 3.0]


@pytest.mark.parametrize(
    "header",
    [
        "userId,movieId,rating,timestamp",
        "user_id,item_id,rating,timestamp",
        "uid,itemId,score,time",
        "User ID,Item ID,Rating,Timestamp",
    ],
)
def test_csv_recognises_common_column_names(tmp_path: Path, header: str):
    path = tmp_path / "ratings.csv"
    path.write_text(f"{header}\n01,10,4.5,100\n02,11,3,200\n")
    raw = read_interactions(path)
    assert raw.user.tolist() == ["01", "02"] and raw.item.tolist() == ["10", "11"]
    assert raw.rating.tolist() == [4.5, 3.0] and raw.timestamp.tolist() == [100.0, 200.0]


def test_iso_timestamps_become_epoch_seconds(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\na,x,1970-01-01 00:01:40\nb,y,1970-01-02\n")
    assert read_interactions(path).timestamp.tolist() == [100.0, 86400.0]


def test_split_values_are_normalised_and_kept(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,split\na,x,train\na,y, Test\nb,x,VALID\n")
    assert read_interactions(path).split.tolist() == ["train", "test", "valid"]


def test_ml100k_reads_fast_and_complete(ml100k_path: Path):
    read_interactions(ml100k_path)  # warm the file cache and imports
    t0 = time.perf_counter()
    raw = read_interactions(ml100k_path)
    elapsed = time.perf_counter() - t0
    assert raw.format == "recbole" and len(raw) == 100_000
    assert len(np.unique(raw.user)) == 943 and len(np.unique(raw.item)) == 1682
    assert elapsed < 1.0, f"reading ml-100k took {elapsed:.2f}s"


# -- bad input -----------------------------------------------------------------------------
def _error(path: Path, fmt: str = "auto") -> str:
    with pytest.raises(DataError) as exc:
        read_interactions(path, fmt)
    msg = str(exc.value)
    assert str(path) in msg, msg
    return msg


def test_missing_user_column_lists_the_columns_found(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("person,item,rating\na,x,1\n")
    msg = _error(path)
    assert "user" in msg and "person" in msg and "rating" in msg


def test_missing_item_column_is_named(tmp_path: Path):
    path = tmp_path / "log.tsv"
    path.write_text("user\tthing\na\tx\n")
    msg = _error(path)
    assert "no item column" in msg and "thing" in msg


@pytest.mark.parametrize("content", ["", "\n\n", "user,item\n"])
def test_empty_file(tmp_path: Path, content: str):
    path = tmp_path / "log.csv"
    path.write_text(content)
    assert "empty" in _error(path)


def test_bad_split_value_names_line_and_value(tmp_path: Path):
    path = tmp_path / "log.csv"
    # Blank line 3 must not shift the line count.
    path.write_text("user,item,split\na,x,train\n\nb,y,test\nc,z,training\nd,w,bogus\n")
    msg = _error(path)
    assert "line 5" in msg and "'training'" in msg and "split" in msg


def test_bad_split_value_in_parquet_names_the_row(tmp_path: Path):
    raw = RawInteractions(
        user=np.array(["a", "b"]), item=np.array(["x", "y"]), split=np.array(["train", "val"])
    )
    path = write_interactions(raw, tmp_path / "log.parquet")
    msg = _error(path)
    assert "row 2" in msg and "'val'" in msg


def test_unparseable_line_is_named(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating\na,x,1\nb,y\nc,z,3\n")
    msg = _error(path)
    assert "line 3" in msg and "expected 3 fields" in msg


def test_unparseable_ratings_dat_line_is_named(tmp_path: Path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::5::978300760\n1::11::3\n")
    assert "line 2" in _error(path)


def test_non_numeric_rating_names_line_and_field(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating\na,x,1\nb,y,abc\n")
    msg = _error(path)
    assert "line 3" in msg and "'rating'" in msg and "'abc'" in msg


def test_unknown_format(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("user,item\na,x\n")
    msg = _error(path, fmt="xml")
    assert "'xml'" in msg and "csv" in msg


def test_undetectable_format(tmp_path: Path):
    path = tmp_path / "notes.bin"
    path.write_text("hello world\n")
    assert "cannot detect" in _error(path)


def test_lines_count_mismatch_names_the_line(tmp_path: Path):
    path = tmp_path / "train.txt"
    path.write_text("2 a b\n3 a b\n")
    msg = _error(path, fmt="lines")
    assert "line 2" in msg and "3" in msg


def test_missing_file_and_directory(tmp_path: Path):
    assert "not found" in _error(tmp_path / "nope.csv")
    assert "directory" in _error(tmp_path)


def test_write_refuses_what_a_format_cannot_hold(tmp_path: Path):
    with pytest.raises(DataError, match="needs user ids"):
        write_interactions(_raw(split=False), tmp_path / "train.txt", "lines")
    with pytest.raises(DataError, match="needs rating and timestamp"):
        write_interactions(
            RawInteractions(user=np.array(["1"]), item=np.array(["2"])), tmp_path / "u.data"
        )
    with pytest.raises(DataError, match="unknown format"):
        write_interactions(_raw(), tmp_path / "x.csv", "xml")


def test_u_data_whose_first_line_looks_like_a_count_line_is_still_movielens(tmp_path: Path):
    path = tmp_path / "upload.bin"
    # "3 a b c" would be a valid "lines" row; the following lines are not.
    path.write_text("3\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    assert detect_format(path) == "movielens"
    one_line = tmp_path / "one.bin"
    one_line.write_text("3 10 11 12\n1 10\n")
    assert detect_format(one_line) == "lines"


@pytest.mark.parametrize(("prefix", "bad_line"), [(b"\xef\xbb\xbf", 4), (b"\n\n", 6)])
def test_byte_order_mark_and_leading_blank_lines(tmp_path: Path, prefix: bytes, bad_line: int):
    path = tmp_path / "log.csv"
    path.write_bytes(prefix + b"user,item,split\na,x,train\n\nb,y,nope\n")
    msg = _error(path)
    assert f"line {bad_line}" in msg and "'nope'" in msg


def test_ids_with_delimiters_and_quotes(tmp_path: Path):
    raw = RawInteractions(
        user=np.array(["a,b", 'say "hi"', "c"]), item=np.array(["x\ty", "1", "2"])
    )
    back = read_interactions(write_interactions(raw, tmp_path / "log.csv"))
    _assert_same(raw, back, ("user", "item"))
    with pytest.raises(DataError, match="delimiter"):
        write_interactions(raw, tmp_path / "log.inter")  # RecBole readers do not unquote
