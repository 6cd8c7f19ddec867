"""Writing RawInteractions in any format; fields a format cannot hold are dropped with a warning."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from training.errors import DataError
from training.formats.schema import FORMATS, RawInteractions, format_by_name

logger = logging.getLogger(__name__)


def _format_for_path(path: Path) -> str:
    by_name = format_by_name(path)
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
