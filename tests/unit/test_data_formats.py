"""Interaction formats: every format round-trips, "auto" detects it, ids stay strings, and
each kind of bad input fails with a DataError naming the file and the line or field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.errors import DataError
from training.formats import (
    FORMATS,
    RawInteractions,
    detect_format,
    read_interactions,
    write_interactions,
)
from training.formats.text import _CHUNK

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


def test_ml100k_reads_complete(ml100k_path: Path):
    raw = read_interactions(ml100k_path)
    assert raw.format == "recbole" and len(raw) == 100_000
    assert len(np.unique(raw.user)) == 943 and len(np.unique(raw.item)) == 1682
    assert raw.rating is not None and set(np.unique(raw.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}


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


# -- bytes that are not UTF-8 ----------------------------------------------------------------
# A PNG's signature and the start of its IHDR chunk, then binary: what a fuzzer uploads.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))
# Per text format: a file name, latin-1 text ("café") on the 3rd data line, and that line.
LATIN1 = {
    "csv": ("log.csv", b"user,item,rating\nu1,i1,1\nu2,i2,2\ncaf\xe9,i3,3\nu4,i4,4\n", 4),
    "tsv": ("log.tsv", b"user\titem\nu1\ti1\nu2\ti2\ncaf\xe9\ti3\n", 4),
    "recbole": ("ml.inter", b"user_id:token\titem_id:token\nu1\ti1\nu2\ti2\ncaf\xe9\ti3\n", 4),
    "movielens": ("u.data", b"1\t10\t5\t100\n2\t11\t3\t200\n3\tcaf\xe9\t4\t300\n", 3),
    "lines": ("train.txt", b"2 a b\n1 c\n1 caf\xe9\n", 3),
}
TEXT_FORMATS = [(fmt, name) for fmt, (name, _, _) in LATIN1.items()] + [
    ("movielens", "ratings.dat")
]


@pytest.mark.parametrize("fmt", ["auto", "explicit"])
@pytest.mark.parametrize(("text_fmt", "name"), TEXT_FORMATS)
def test_binary_file_in_a_text_format_names_line_one(
    tmp_path: Path, text_fmt: str, name: str, fmt: str
):
    path = tmp_path / name
    path.write_bytes(PNG)
    msg = _error(path, text_fmt if fmt == "explicit" else "auto")
    assert "line 1, byte offset 0: b'\\x89' is not valid UTF-8" in msg, msg


@pytest.mark.parametrize("fmt", ["auto", "explicit"])
@pytest.mark.parametrize("text_fmt", sorted(LATIN1))
def test_latin1_mid_file_names_its_line_and_offset(tmp_path: Path, text_fmt: str, fmt: str):
    name, content, line = LATIN1[text_fmt]
    path = tmp_path / name
    path.write_bytes(content)
    msg = _error(path, text_fmt if fmt == "explicit" else "auto")
    offset = content.index(b"\xe9")
    assert f"line {line}, byte offset {offset}: " + r"b'\xe9'" in msg, msg


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_latin1_row_with_a_field_too_many_is_caught_before_pyarrow(tmp_path: Path):
    """pyarrow's invalid-row handler cannot decode such a row ("Exception ignored" on stderr)."""
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,item\nu1,i1\ncaf\xe9,i2,extra\n")
    assert "line 3, byte offset 19" in _error(path)


def test_latin1_ratings_dat_names_its_line(tmp_path: Path):
    path = tmp_path / "ratings.dat"
    path.write_bytes(b"1::10::5::978300760\n2::caf\xe9::3::978300761\n")
    assert "line 2, byte offset 26" in _error(path, "movielens")


def test_undetectable_binary_names_the_bytes_not_the_format(tmp_path: Path):
    path = tmp_path / "upload.bin"
    path.write_bytes(PNG)
    msg = _error(path)
    assert "not valid UTF-8" in msg and "cannot detect" not in msg


def test_utf8_is_checked_across_read_chunks(tmp_path: Path):
    """A character cut by a read boundary is fine; a bad byte past the first chunk is found."""
    filler = b"1 a\n" * (_CHUNK // 4)  # exactly one chunk of ASCII lines
    path = tmp_path / "train.txt"
    path.write_bytes(filler[:-4] + "1 aé\n".encode())  # "é" = 0xc3 | 0xa9 across the boundary
    assert path.read_bytes()[_CHUNK - 1 : _CHUNK + 1] == "é".encode()
    assert read_interactions(path, "lines").item[-1] == "aé"
    path.write_bytes(filler + filler + b"1 caf\xe9\n" + b"1 a\n")
    line, offset = 2 * (_CHUNK // 4) + 1, 2 * _CHUNK + 5
    assert f"line {line}, byte offset {offset}" in _error(path, "lines")
    path.write_bytes(filler + b"1 caf\xc3")  # the file ends inside a character
    assert f"byte offset {_CHUNK + 5}: " + r"b'\xc3'" in _error(path, "lines")


def test_parquet_garbage_and_undecodable_strings(tmp_path: Path):
    path = tmp_path / "log.parquet"
    path.write_bytes(PNG)
    assert "cannot read as parquet" in _error(path)
    path.write_bytes(b"PAR1" + PNG + b"PAR1")  # magic bytes around garbage
    assert "cannot read as parquet" in _error(path)
    # Parquet stores any bytes in a string column; pyarrow only trusts them.
    user = pa.array([b"u1", b"u2", b"caf\xe9"], type=pa.binary()).view(pa.string())
    pq.write_table(pa.table({"user": user, "item": ["x", "y", "z"]}), path)
    assert "row 3: column 'user' holds b'\\xe9', which is not valid UTF-8" in _error(path)
    binary = pa.array([b"u1", b"\xff"], type=pa.binary())
    pq.write_table(pa.table({"user": ["u1", "u2"], "item": binary}), path)
    assert "row 2: field 'item' holds b'\\xff'" in _error(path)
    pq.write_table(pa.table({"userQ": ["u1"], "item": ["x"]}), path)
    path.write_bytes(path.read_bytes().replace(b"userQ", b"user\xe9"))  # in the footer
    assert "a column name is not valid UTF-8" in _error(path)
