"""What an interactions file holds: the format names, RawInteractions, columns by role."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import DataError
from training.split import SPLIT_VALUES

__all__ = [
    "FORMATS",
    "SPLIT_VALUES",
    "RawInteractions",
    "check_file",
    "find_columns",
    "format_by_name",
]

FORMATS = ("csv", "tsv", "parquet", "recbole", "movielens", "lines")
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")

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

_FORMAT_BY_SUFFIX = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".inter": "recbole",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "lines",
}


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


def find_columns(names: list[str]) -> dict[str, str]:
    """Map each role (user, item, ...) to the first column whose normalised name is an alias."""
    found: dict[str, str] = {}
    normed = [_norm(n) for n in names]
    for role, aliases in _ALIASES.items():
        for alias in aliases:  # alias order is the priority when several columns match
            if alias in normed:
                found[role] = names[normed.index(alias)]
                break
    return found


def format_by_name(path: Path) -> str | None:
    """The format a file's name or suffix announces, if any."""
    name, suffix = path.name.lower(), path.suffix.lower()
    if suffix in _FORMAT_BY_SUFFIX:
        return _FORMAT_BY_SUFFIX[suffix]
    if name in ("u.data", "ratings.dat") or suffix in (".data", ".dat"):
        return "movielens"
    return None


def check_file(path: Path) -> None:
    """DataError unless `path` is a non-empty regular file."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an interactions file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (no interactions)")
