"""Which format a file is in: from its suffix or name, else from its first lines."""

from __future__ import annotations

import re
from pathlib import Path

from training.errors import DataError
from training.formats.schema import FORMATS, RECBOLE_TYPES, check_file, find_columns, format_by_name
from training.formats.text import first_line, head


def _looks_like_lines(lines: list[str]) -> bool:
    """Every sniffed line reads `count item ...` with a matching count."""
    for line in lines:
        tokens = line.split()
        if not (tokens and tokens[0].isdigit() and int(tokens[0]) == len(tokens) - 1):
            return False
    return bool(lines)


def detect_format(path: Path) -> str:
    """Pick the format of `path` from its suffix or name, else from its first line.

    Raises:
        DataError when the content fits no format, or its first lines are not UTF-8.
    """
    path = Path(path)
    check_file(path)
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    by_name = format_by_name(path)
    if by_name is not None and by_name != "lines":  # ".txt" is too common to trust on reading
        return by_name
    lines = head(path)
    line = lines[0] if lines else first_line(path)[1]
    if "::" in line:
        return "movielens"
    if "\t" in line:
        fields = line.split("\t")
        if any(":" in f and f.split(":", 1)[1].strip() in RECBOLE_TYPES for f in fields):
            return "recbole"
        if {"user", "item"} <= find_columns(fields).keys():
            return "tsv"
        if _looks_like_lines(lines):
            return "lines"
        if len(fields) in (3, 4) and all(re.fullmatch(r"[\w.\-]+", f.strip()) for f in fields):
            return "movielens"
        return "tsv"
    if "," in line:
        return "csv"
    if _looks_like_lines(lines):
        return "lines"
    raise DataError(
        f"{path}: cannot detect the format from its name or first line {line[:80]!r}; "
        f"pass fmt= one of {FORMATS}"
    )
