"""Interaction files in, interaction files out.

Formats (the `fmt` names):
- "csv", "tsv": delimited text with a header. User and item columns are found by name
  (user, user_id, userId, uid, item, item_id, itemId, movie_id, ...); rating, timestamp
  and split columns are optional.
- "parquet": the same column names, read with pyarrow.
- "recbole": RecBole atomic `.inter` files, a tab-separated header of `name:type` fields
  (`user_id:token item_id:token rating:float timestamp:float`, optional `split:token`).
- "movielens": `u.data` (tab-separated, no header: user item rating timestamp) or
  `ratings.dat` (the same fields separated by `::`).
- "lines": one line per user, `count item item ...`; the user's external id is the
  0-based line number as a string. A blank line is a user without interactions.

External ids always stay strings (surrounding whitespace is stripped). Delimited files
are parsed by pyarrow in C++, so ml-100k reads in milliseconds; only "lines" is parsed
line by line. Every problem is a DataError naming the file and the line or field.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from training.errors import DataError

logger = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "parquet", "recbole", "movielens", "lines")
SPLIT_VALUES = ("train", "valid", "test")

# Column names are compared after lower-casing, dropping a RecBole ":type" suffix and
# removing "_", "-", "." and spaces, so "userId", "user_id:token" and "User ID" all match.
_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "users", "customer", "customerid", "visitorid", "reviewerid"),
    "item": (
        "item",
        "itemid",
        "iid",
        "items",
        "movie",
        "movieid",
        "product",
        "productid",
        "asin",
        "trackid",
        "songid",
    ),
    "rating": ("rating", "ratings", "score", "stars", "preference"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date", "unixtime", "eventtime"),
    "split": ("split",),
}
_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass
class RawInteractions:
    """Interactions as read from a file, one entry per row, ids still external strings.

    user, item: (n,) str; rating, timestamp: (n,) float64 or None;
    split: (n,) str in {"train", "valid", "test"} or None.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None
    split: np.ndarray | None = None
    source: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user).astype(str)
        self.item = np.asarray(self.item).astype(str)
        n = len(self.user)
        for name in ("item", "rating", "timestamp", "split"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise DataError(
                    f"{self.source or '<memory>'}: field {name!r} has {len(arr)} values, user has {n}"
                )
        if self.rating is not None:
            self.rating = np.asarray(self.rating, dtype=np.float64)
        if self.timestamp is not None:
            self.timestamp = np.asarray(self.timestamp, dtype=np.float64)
        if self.split is not None:
            self.split = np.asarray(self.split).astype(str)

    def __len__(self) -> int:
        return len(self.user)


def _norm(name: str) -> str:
    base = name.strip().split(":", 1)[0].lower()
    return re.sub(r"[\s_\-.]", "", base)


def _find_columns(names: list[str]) -> dict[str, str]:
    """Map each role (user, item, ...) to the first column whose normalised name is an alias."""
    found: dict[str, str] = {}
    normed = [_norm(n) for n in names]
    for role, aliases in _ALIASES.items():
        for alias in aliases:  # alias order is the priority when several columns match
            if alias in normed:
                found[role] = names[normed.index(alias)]
                break
    return found


# -- format detection ---------------------------------------------------------------------
def _first_line(path: Path) -> tuple[int, str]:
    """(1-based line number, text) of the first non-blank line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                return lineno, raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    raise DataError(f"{path}: empty file (no interactions)")


def _head(path: Path, n: int = 20) -> list[str]:
    """The first n non-blank lines (for sniffing the format)."""
    out: list[str] = []
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                out.append(raw.decode("utf-8-sig", errors="replace").rstrip("\r\n"))
                if len(out) == n:
                    break
    return out


def _looks_like_lines(lines: list[str]) -> bool:
    """Every sniffed line reads `count item ...` with a matching count."""
    for line in lines:
        tokens = line.split()
        if not (tokens and tokens[0].isdigit() and int(tokens[0]) == len(tokens) - 1):
            return False
    return bool(lines)


_FORMAT_BY_SUFFIX = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".inter": "recbole",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "lines",
}


def _format_by_name(path: Path) -> str | None:
    """The format a file's name or suffix announces, if any."""
    name, suffix = path.name.lower(), path.suffix.lower()
    if suffix in _FORMAT_BY_SUFFIX:
        return _FORMAT_BY_SUFFIX[suffix]
    if name in ("u.data", "ratings.dat") or suffix in (".data", ".dat"):
        return "movielens"
    return None


def detect_format(path: Path) -> str:
    """Pick the format of `path` from its suffix or name, else from its first line."""
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    by_name = _format_by_name(path)
    if by_name is not None and by_name != "lines":  # ".txt" is too common to trust on reading
        return by_name
    head = _head(path)
    line = head[0] if head else _first_line(path)[1]
    if "::" in line:
        return "movielens"
    if "\t" in line:
        fields = line.split("\t")
        if any(":" in f and f.split(":", 1)[1].strip() in _RECBOLE_TYPES for f in fields):
            return "recbole"
        if {"user", "item"} <= _find_columns(fields).keys():
            return "tsv"
        if _looks_like_lines(head):
            return "lines"
        if len(fields) in (3, 4) and all(re.fullmatch(r"[\w.\-]+", f.strip()) for f in fields):
            return "movielens"
        return "tsv"
    if "," in line:
        return "csv"
    if _looks_like_lines(head):
        return "lines"
    raise DataError(
        f"{path}: cannot detect the format from its name or first line {line[:80]!r}; "
        f"pass fmt= one of {FORMATS}"
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an interactions file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (no interactions)")


# -- locating a bad row (error path only, so a plain line loop is fine) --------------------
def _line_locator(path: Path, header_lines: int) -> Callable[[int], str]:
    """Return row index -> "line N", skipping the header and blank lines as pyarrow does."""

    def locate(row: int) -> str:
        seen = -1
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if lineno <= header_lines or not raw.strip(b"\r\n"):
                    continue
                seen += 1
                if seen == row:
                    return f"line {lineno}"
        return f"row {row + 1}"

    return locate


def _line_of_text(path: Path, text: str, transform: Callable[[bytes], bytes] | None) -> str:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            raw = raw.rstrip(b"\r\n")
            if transform is not None:
                raw = transform(raw)
            if raw.decode("utf-8", errors="replace") == text:
                return f"line {lineno}"
    return "a line"


# -- reading -------------------------------------------------------------------------------
def _to_str(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    col = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    return np.asarray(col.to_numpy(zero_copy_only=False)).astype(str)


def _to_float(
    col: pa.ChunkedArray, field: str, path: Path, locate: Callable[[int], str]
) -> np.ndarray:
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return np.asarray(pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64()), dtype=np.float64)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.utf8_trim_whitespace(col)
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


def _to_split(col: pa.ChunkedArray, path: Path, locate: Callable[[int], str]) -> np.ndarray:
    values = np.char.lower(_to_str(col))
    bad = ~np.isin(values, SPLIT_VALUES)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{path}: {locate(i)}: field 'split' value {str(values[i])!r} is not one of {SPLIT_VALUES}"
        )
    return values


def _from_table(
    table: pa.Table, path: Path, fmt: str, locate: Callable[[int], str]
) -> RawInteractions:
    names = list(table.column_names)
    cols = _find_columns(names)
    for role in ("user", "item"):
        if role not in cols:
            raise DataError(f"{path}: no {role} column; columns found: {names}")
    if table.num_rows == 0:
        raise DataError(f"{path}: empty file (no interactions)")
    try:
        user, item = _to_str(table[cols["user"]]), _to_str(table[cols["item"]])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: user/item columns are not text: {exc}") from None
    rating = _to_float(table[cols["rating"]], "rating", path, locate) if "rating" in cols else None
    ts = (
        _to_float(table[cols["timestamp"]], "timestamp", path, locate)
        if "timestamp" in cols
        else None
    )
    split = _to_split(table[cols["split"]], path, locate) if "split" in cols else None
    return RawInteractions(user, item, rating, ts, split, source=str(path), format=fmt)


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
        header_lines, line = _first_line(path)
        try:
            names = next(csv.reader([line], delimiter=delimiter)) if quoting else line.split(delimiter)
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
        where = _line_of_text(path, row.text, transform)
        raise DataError(
            f"{path}: {where}: expected {row.expected_columns} fields, got {row.actual_columns}: {row.text[:80]!r}"
        )
    return _from_table(table, path, fmt, _line_locator(path, header_lines))


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


def read_interactions(path: str | Path, fmt: str = "auto") -> RawInteractions:
    """Read an interactions file into RawInteractions (one entry per row, string ids).

    Args:
        path: the file.
        fmt: one of FORMATS, or "auto" to detect from the suffix, name or first line.
    Raises:
        DataError naming the file and the line or field at fault.
    """
    path = Path(path)
    _check_file(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS} or 'auto'")
    if fmt == "csv":
        raw = _read_delimited(path, fmt, ",", header=True)
    elif fmt in ("tsv", "recbole"):
        raw = _read_delimited(path, fmt, "\t", header=True)
    elif fmt == "movielens":
        delim = "::" if "::" in _first_line(path)[1] else "\t"
        raw = _read_delimited(
            path,
            fmt,
            delim,
            header=False,
            names=["user", "item", "rating", "timestamp"],
            quoting=False,
        )
    elif fmt == "parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: cannot read as parquet: {exc}") from None
        raw = _from_table(table, path, fmt, lambda i: f"row {i + 1}")
    else:
        raw = _read_lines(path)
    logger.debug("read %d interactions from %s (%s)", len(raw), path, fmt)
    return raw


# -- writing -------------------------------------------------------------------------------
def _format_for_path(path: Path) -> str:
    by_name = _format_by_name(path)
    if by_name is not None:
        return by_name
    raise DataError(
        f"{path}: cannot tell the format from the file name; pass fmt= one of {FORMATS}"
    )


def _table(raw: RawInteractions, fields: tuple[str, ...]) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    for f in fields:
        value = getattr(raw, f)
        if value is not None:
            cols[f] = pa.array(
                value, type=pa.float64() if f in ("rating", "timestamp") else pa.string()
            )
    return pa.table(cols)


def _write_text(
    table: pa.Table, path: Path, delimiter: str, header: list[str] | None, allow_quotes: bool
) -> None:
    buf = io.BytesIO()
    if header is not None:
        buf.write((delimiter.join(header) + "\n").encode())
    try:
        # Unquoted when possible: RecBole and MovieLens tools do not expect quotes.
        opts = pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
        pacsv.write_csv(table, buf, opts)
    except pa.ArrowInvalid as exc:
        if not allow_quotes:
            raise DataError(
                f"{path}: a value contains the delimiter, a quote or a newline: {exc}"
            ) from None
        buf = io.BytesIO()
        if header is not None:
            buf.write((delimiter.join(header) + "\n").encode())
        pacsv.write_csv(
            table,
            buf,
            pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="needed"),
        )
    path.write_bytes(buf.getvalue())


def _dropped(raw: RawInteractions, path: Path, fmt: str, kept: tuple[str, ...]) -> None:
    lost = [
        f for f in ("rating", "timestamp", "split") if f not in kept and getattr(raw, f) is not None
    ]
    if lost:
        logger.warning(
            "%s: format %r cannot hold %s; those fields are not written", path, fmt, lost
        )


def _write_lines(raw: RawInteractions, path: Path) -> None:
    users = raw.user
    # The user id *is* the line number, so only canonical non-negative integers fit.
    canonical = np.char.isdigit(users) & (
        (np.char.str_len(users) == 1) | ~np.char.startswith(users, "0")
    )
    if not canonical.all():
        bad = str(users[int(np.argmin(canonical))])
        raise DataError(
            f"{path}: format 'lines' needs user ids 0, 1, 2, ... (line numbers); got user {bad!r}"
        )
    if np.any(np.char.find(raw.item, " ") >= 0) or np.any(np.char.find(raw.item, "\t") >= 0):
        raise DataError(f"{path}: format 'lines' cannot hold item ids containing whitespace")
    uid = users.astype(np.int64)
    order = np.argsort(uid, kind="stable")  # keeps each user's items in input order
    counts = np.bincount(uid, minlength=int(uid.max()) + 1 if len(uid) else 0)
    starts = np.concatenate([[0], np.cumsum(counts)])
    items = raw.item[order]
    with open(path, "w", encoding="utf-8") as fh:
        for u in range(len(counts)):
            row = items[starts[u] : starts[u + 1]]
            fh.write(" ".join([str(counts[u]), *row.tolist()]) + "\n")


def write_interactions(raw: RawInteractions, path: str | Path, fmt: str = "auto") -> Path:
    """Write `raw` to `path` in format `fmt` ("auto": from the suffix or name).

    Fields a format cannot hold are dropped with a warning ("lines" keeps only user and
    item; "movielens" has no split). "movielens" needs rating and timestamp.
    """
    path = Path(path)
    if fmt == "auto":
        fmt = _format_for_path(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS} or 'auto'")
    path.parent.mkdir(parents=True, exist_ok=True)
    all_fields = ("user", "item", "rating", "timestamp", "split")
    if fmt in ("csv", "tsv"):
        table = _table(raw, all_fields)
        _write_text(
            table, path, "," if fmt == "csv" else "\t", table.column_names, allow_quotes=True
        )
    elif fmt == "parquet":
        pq.write_table(_table(raw, all_fields), path)
    elif fmt == "recbole":
        table = _table(raw, all_fields)
        types = {
            "user": "user_id:token",
            "item": "item_id:token",
            "rating": "rating:float",
            "timestamp": "timestamp:float",
            "split": "split:token",
        }
        _write_text(table, path, "\t", [types[c] for c in table.column_names], allow_quotes=False)
    elif fmt == "movielens":
        if raw.rating is None or raw.timestamp is None:
            raise DataError(f"{path}: format 'movielens' needs rating and timestamp fields")
        fields = ("user", "item", "rating", "timestamp")
        _dropped(raw, path, fmt, fields)
        colons = path.name.lower() == "ratings.dat" or path.suffix.lower() == ".dat"
        if colons and (
            np.any(np.char.find(raw.user, ":") >= 0) or np.any(np.char.find(raw.item, ":") >= 0)
        ):
            raise DataError(f"{path}: '::'-separated MovieLens ids cannot contain ':'")
        _write_text(_table(raw, fields), path, "\t", None, allow_quotes=False)
        if colons:
            path.write_bytes(path.read_bytes().replace(b"\t", b"::"))
    else:
        _dropped(raw, path, fmt, ("user", "item"))
        _write_lines(raw, path)
    return path
