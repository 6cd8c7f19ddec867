"""Reading an interactions file into RawInteractions; every problem is a DataError.

Delimited text (csv, tsv, recbole, movielens) goes through pyarrow's C++ parser with every
column read as text, then numbers are converted so that a bad value can be named with its
line. "lines" is a plain line loop. Text files are checked for UTF-8 first (text.py).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from training.errors import DataError
from training.formats.detect import detect_format
from training.formats.schema import FORMATS, SPLIT_VALUES, RawInteractions, check_file, find_columns
from training.formats.text import check_utf8, first_line, line_locator, line_of_text

logger = logging.getLogger(__name__)

Locate = Callable[[int], str]  # row index -> "line N" / "row N"


# -- columns -------------------------------------------------------------------------------
def _first_invalid_utf8(col: pa.ChunkedArray) -> tuple[int, bytes] | None:
    """(row, bytes) of the first value that is not UTF-8 (error path: a Python loop)."""
    for row, value in enumerate(pc.cast(col, pa.large_binary()).to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return row, value[exc.start : exc.end]
    return None


def _text(col: pa.ChunkedArray, field: str, path: Path, locate: Locate) -> pa.ChunkedArray:
    """`col` as strings with surrounding whitespace stripped.

    Raises:
        DataError naming the row of the first value that is not UTF-8 (a Parquet binary
        column holds any bytes), or the column's type when it is not text at all.
    """
    try:
        return pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        kind = col.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            bad = _first_invalid_utf8(col)
            if bad is not None:
                raise DataError(
                    f"{path}: {locate(bad[0])}: field {field!r} holds {bad[1]!r}, which is not valid UTF-8"
                ) from None
        raise DataError(f"{path}: field {field!r} is not text ({kind}): {exc}") from None


def _to_str(col: pa.ChunkedArray, field: str, path: Path, locate: Locate) -> np.ndarray:
    return np.asarray(_text(col, field, path, locate).to_numpy(zero_copy_only=False)).astype(str)


def _to_float(col: pa.ChunkedArray, field: str, path: Path, locate: Locate) -> np.ndarray:
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return np.asarray(pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64()), dtype=np.float64)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = _text(col, field, path, locate)
    try:
        return np.asarray(
            pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if field == "timestamp":  # ISO dates ("2020-01-31 10:00:00") become epoch seconds
        try:
            return np.asarray(
                pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64()), dtype=np.float64
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    values = col.to_pylist()
    for i, v in enumerate(values):
        try:
            float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: {locate(i)}: field {field!r} value {v!r} is not a number"
            ) from None
    raise DataError(f"{path}: field {field!r} could not be converted to numbers")


def _to_split(col: pa.ChunkedArray, path: Path, locate: Locate) -> np.ndarray:
    values = np.char.lower(_to_str(col, "split", path, locate))
    bad = ~np.isin(values, SPLIT_VALUES)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{path}: {locate(i)}: field 'split' value {str(values[i])!r} is not one of {SPLIT_VALUES}"
        )
    return values


def _from_table(table: pa.Table, path: Path, fmt: str, locate: Locate) -> RawInteractions:
    names = list(table.column_names)
    cols = find_columns(names)
    for role in ("user", "item"):
        if role not in cols:
            raise DataError(f"{path}: no {role} column; columns found: {names}")
    if table.num_rows == 0:
        raise DataError(f"{path}: empty file (no interactions)")
    user = _to_str(table[cols["user"]], "user", path, locate)
    item = _to_str(table[cols["item"]], "item", path, locate)
    rating = _to_float(table[cols["rating"]], "rating", path, locate) if "rating" in cols else None
    ts = (
        _to_float(table[cols["timestamp"]], "timestamp", path, locate)
        if "timestamp" in cols
        else None
    )
    split = _to_split(table[cols["split"]], path, locate) if "split" in cols else None
    return RawInteractions(user, item, rating, ts, split, source=str(path), format=fmt)


# -- files ---------------------------------------------------------------------------------
def _read_delimited(
    path: Path,
    fmt: str,
    delimiter: str,
    header: bool,
    names: list[str] | None = None,
    quoting: bool = True,
) -> RawInteractions:
    data: bytes | None = None
    transform: Callable[[bytes], bytes] | None = None
    if delimiter == "::":  # pyarrow wants one character; MovieLens ids never contain tabs
        with open(path, "rb") as fh:
            data = fh.read().replace(b"::", b"\t")
        delimiter = "\t"

        def transform(b: bytes) -> bytes:
            return b.replace(b"::", b"\t")

    header_lines = 0  # lines up to and including the header; pyarrow counts blank ones too
    if header:
        header_lines, line = first_line(path)
        try:
            names = (
                next(csv.reader([line], delimiter=delimiter)) if quoting else line.split(delimiter)
            )
        except csv.Error as exc:  # binary garbage: a stray CR inside the "header"
            raise DataError(f"{path}: line {header_lines}: unreadable header ({exc})") from None
        names = [n.strip() for n in names]
    if not names:
        raise DataError(f"{path}: empty file (no interactions)")
    bad_rows: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row)
        return "skip"

    read_opts = pacsv.ReadOptions(column_names=names, skip_rows=header_lines)
    parse_opts = pacsv.ParseOptions(
        delimiter=delimiter, quote_char='"' if quoting else False, invalid_row_handler=on_invalid
    )
    # Everything is read as text first: ids must stay strings, and numbers are converted
    # afterwards so that a bad value can be reported with its line.
    conv_opts = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=False
    )
    source = pa.BufferReader(data) if data is not None else str(path)
    try:
        table = pacsv.read_csv(
            source, read_options=read_opts, parse_options=parse_opts, convert_options=conv_opts
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot parse as {fmt}: {exc}") from None
    if bad_rows:
        row = bad_rows[0]
        where = line_of_text(path, row.text, transform)
        raise DataError(
            f"{path}: {where}: expected {row.expected_columns} fields, got {row.actual_columns}: {row.text[:80]!r}"
        )
    return _from_table(table, path, fmt, line_locator(path, header_lines))


def _read_lines(path: Path) -> RawInteractions:
    users: list[str] = []
    items: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            tokens = line.split()
            if not tokens:
                continue  # a user with no interactions keeps its line number as id
            if not tokens[0].isdigit():
                raise DataError(
                    f"{path}: line {lineno}: count {tokens[0]!r} is not a non-negative integer"
                )
            count = int(tokens[0])
            if count != len(tokens) - 1:
                raise DataError(
                    f"{path}: line {lineno}: count is {count} but the line has {len(tokens) - 1} items"
                )
            users.extend([str(lineno - 1)] * count)
            items.extend(tokens[1:])
    if not users:
        raise DataError(f"{path}: empty file (no interactions)")
    return RawInteractions(np.array(users), np.array(items), source=str(path), format="lines")


def _check_parquet_text(table: pa.Table, path: Path) -> None:
    """DataError naming the column and row of the first string that is not UTF-8.

    Parquet stores any bytes in a string column and pyarrow trusts them until a value is
    converted, so the columns are validated here, once, in C++.
    """
    try:
        names = table.column_names
    except UnicodeDecodeError as exc:  # the footer can hold any bytes as a name too
        raise DataError(f"{path}: a column name is not valid UTF-8: {exc.object[:80]!r}") from None
    for name, col in zip(names, table.columns, strict=True):
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
        except pa.ArrowInvalid as exc:
            bad = _first_invalid_utf8(col)
            if bad is None:
                raise DataError(f"{path}: column {name!r} is corrupt: {exc}") from None
            raise DataError(
                f"{path}: row {bad[0] + 1}: column {name!r} holds {bad[1]!r}, which is not valid UTF-8"
            ) from None


def _read_parquet(path: Path) -> RawInteractions:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:  # garbage, a truncated or corrupt footer
        raise DataError(f"{path}: cannot read as parquet: {exc}") from None
    _check_parquet_text(table, path)
    return _from_table(table, path, "parquet", lambda i: f"row {i + 1}")


def read_interactions(path: str | Path, fmt: str = "auto") -> RawInteractions:
    """Read an interactions file into RawInteractions (one entry per row, string ids).

    Args:
        path: the file.
        fmt: one of FORMATS, or "auto" to detect from the suffix, name or first line.
    Raises:
        DataError naming the file and the line or field at fault, bytes that are not
        UTF-8 in a text format included.
    """
    path = Path(path)
    check_file(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS} or 'auto'")
    if fmt != "parquet":
        check_utf8(path)  # before any parser: pyarrow and the line loop would not name the line
    if fmt == "csv":
        raw = _read_delimited(path, fmt, ",", header=True)
    elif fmt in ("tsv", "recbole"):
        raw = _read_delimited(path, fmt, "\t", header=True)
    elif fmt == "movielens":
        delim = "::" if "::" in first_line(path)[1] else "\t"
        raw = _read_delimited(
            path,
            fmt,
            delim,
            header=False,
            names=["user", "item", "rating", "timestamp"],
            quoting=False,
        )
    elif fmt == "parquet":
        raw = _read_parquet(path)
    else:
        raw = _read_lines(path)
    logger.debug("read %d interactions from %s (%s)", len(raw), path, fmt)
    return raw
