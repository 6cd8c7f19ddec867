"""Text files at the byte level: the UTF-8 check, the first lines, where a bad row sits.

Text formats must be UTF-8. `check_utf8` runs before any parser sees a text file, so
undecodable bytes (a PNG uploaded as "lines", a latin-1 export) are reported with their
line and byte offset instead of surfacing as a UnicodeDecodeError or a pyarrow conversion
error without a line.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path

from training.errors import DataError

_CHUNK = 1 << 20  # bytes read at a time: memory stays flat whatever the file's size


def _line_at(path: Path, offset: int) -> int:
    """1-based number of the line holding byte `offset` (error path only)."""
    line, done = 1, 0
    with open(path, "rb") as fh:
        while done < offset:
            chunk = fh.read(min(_CHUNK, offset - done))
            if not chunk:
                break
            line += chunk.count(b"\n")
            done += len(chunk)
    return line


def _not_utf8(path: Path, offset: int, bad: bytes) -> DataError:
    return DataError(
        f"{path}: line {_line_at(path, offset)}, byte offset {offset}: {bad[:8]!r} is not "
        "valid UTF-8; text interaction files must be UTF-8 (binary data only as Parquet)"
    )


def check_utf8(path: Path) -> None:
    """Raise DataError naming the line and byte offset of the first bytes that are not UTF-8.

    One pass in 1 MiB chunks; an all-ASCII chunk (the common case) costs one `isascii`.
    """
    offset = 0  # of the current chunk's first byte
    carry = b""  # a character cut in two by the previous chunk's end
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            if not carry and chunk.isascii():
                offset += len(chunk)
                continue
            data, start = carry + chunk, offset - len(carry)
            try:
                _, used = codecs.utf_8_decode(data, "strict", False)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, start + exc.start, data[exc.start : exc.end]) from None
            carry = data[used:]
            offset += len(chunk)
    if carry:  # the file ends inside a character
        raise _not_utf8(path, offset - len(carry), carry)


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        check_utf8(path)  # raises, naming the line and offset of the first bad bytes
        raise DataError(f"{path}: not UTF-8 text") from None


def first_line(path: Path) -> tuple[int, str]:
    """(1-based line number, text) of the first non-blank line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                return lineno, _decode(raw, path)
    raise DataError(f"{path}: empty file (no interactions)")


def head(path: Path, n: int = 20) -> list[str]:
    """The first n non-blank lines (for sniffing the format)."""
    out: list[str] = []
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                out.append(_decode(raw, path))
                if len(out) == n:
                    break
    return out


# -- locating a bad row (error path only, so a plain line loop is fine) --------------------
def line_locator(path: Path, header_lines: int) -> Callable[[int], str]:
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


def line_of_text(path: Path, text: str, transform: Callable[[bytes], bytes] | None) -> str:
    """ "line N" of the first line that reads `text` once `transform`ed, else "a line"."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            raw = raw.rstrip(b"\r\n")
            if transform is not None:
                raw = transform(raw)
            if raw.decode("utf-8", errors="replace") == text:
                return f"line {lineno}"
    return "a line"
