"""Business filters on an answer (exclude, include, groups) and how wide a search must be.

A request's filters resolve, once, against the served bundle into a `Filters`: the banned
items (exclude ids that the catalogue knows), the allowed items (include ids, popularity
groups, or both: their intersection) and the ids it did not know. Each answer row then
carries a `RowQuery` into the batched search (service.serving.bundle).

How wide the search is (`search_width`), and what it costs: the answer must hold k items
whenever k qualify, so a plain top-k is never trimmed.

- No allow-list: search k + 1 + |banned| items (banned = exclude ids, plus the user's
  training items when exclude_seen). At most |banned| of them are dropped, so k + 1 stay:
  exact, and the extra one shows whether an item tied at the k-th score may lie beyond the
  search (service.serving.ranking). Cost: a faiss heap of that width. On 100k items at
  dim 10, one query costs 0.31 ms up to a width of about 200, 0.57 ms at 1000, 1.3 ms at
  3000 (the scan of the catalogue is the same; the heap grows).
- An allow-list A of at most EXACT_SCAN_ITEMS items (an include list, the head group) is
  scored exactly: |A| x d multiply-adds over the allowed rows, then a partition; cheaper
  than any search of the catalogue (0.03 ms for 351 items at dim 10).
- A larger allow-list holding a share f = |A| / n of the items: search
  (k + 1 + |banned|) / f x WIDEN_SLACK. If allowed items were spread evenly over the
  ranking that finds about twice the items needed. A row that still comes up short (the
  user's best items lie outside A) is scored exactly over A, so the answer stays exact;
  the row then pays the search and the scan (1.2 ms over 100k x 10, ~4 searches).
- Any width above MAX_SEARCH_WIDTH goes straight to the exact scan: beyond it the heap
  costs more than scoring every allowed item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

EXACT_SCAN_ITEMS = 4096
WIDEN_SLACK = 2.0
MAX_SEARCH_WIDTH = 2048
NO_ITEMS = np.zeros(0, dtype=np.int64)
SHOWN_IDS = 10  # ids quoted in an error message
# Item sets up to this size are sorted and merged in Python: numpy 2's unique (a hash table)
# releases the GIL, and a thread that gives up the GIL while the other serving thread wants
# it waits for it up to the switch interval (5 ms); the event loop and the search thread
# each did so once per filtered request (docs/service.md, "Waiting on the GIL").
SMALL_SET = 256


def sorted_unique(values: np.ndarray | Sequence[int]) -> np.ndarray:
    """(m,) sorted unique int64 of some item indices (np.unique, in Python when small)."""
    arr = np.asarray(values, dtype=np.int64)
    if len(arr) > SMALL_SET:
        return np.unique(arr)
    return np.array(sorted(set(arr.tolist())), dtype=np.int64) if len(arr) else NO_ITEMS


def sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) sorted unique int64 of two arrays of item indices (np.union1d, in Python when
    small)."""
    if len(a) + len(b) > SMALL_SET:
        return np.union1d(a, b).astype(np.int64, copy=False)
    return sorted_unique(np.concatenate([a, b]))


class FilterError(ValueError):
    """A filter the request cannot have; `field` names it, `value` is what was sent."""

    def __init__(self, field: str, message: str, value: object) -> None:
        super().__init__(message)
        self.field, self.message, self.value = field, message, value


@dataclass(frozen=True)
class Allowed:
    """The items an answer may hold.

    Attributes:
        idx: (m,) int64 allowed items, ascending.
        mask: (n_items,) bool of the same items; None when idx is small enough to be scored
            exactly (no search ever needs to test a hit against it).
        groups: the popularity groups allowed.
        include: the include list (known ids, ascending) when there is one, else None.
    """

    idx: np.ndarray
    mask: np.ndarray | None
    groups: tuple[int, ...]
    include: np.ndarray | None = None


@dataclass(frozen=True)
class RowQuery:
    """One answer row beyond a user's plain top-k; the search thread turns it into a query
    vector (so a fold-in or the first similar-items request never runs on the event loop).

    Attributes:
        banned: sorted int64 items never returned (exclude ids; the history; the item itself).
        allowed: the allow-list, or None for every item.
        history: (s,) int64 items to fold into a user vector (by-history); None: the user's.
        item: rank items by cosine to this one (similar items); None: by inner product.
    """

    banned: np.ndarray = field(default_factory=lambda: NO_ITEMS)
    allowed: Allowed | None = None
    history: np.ndarray | None = None
    item: int | None = None

    @property
    def only_banned(self) -> bool:
        """A user's own query that only bans items: it rides the plain rows' shared search."""
        return self.allowed is None and self.history is None and self.item is None


@dataclass(frozen=True)
class Filters:
    """A request's filters resolved against the served catalogue."""

    banned: np.ndarray = field(
        default_factory=lambda: NO_ITEMS
    )  # sorted unique int64: known exclude ids
    allowed: Allowed | None = None
    unknown: dict[str, list[str]] = field(default_factory=dict)  # field -> ids not in the catalogue

    @property
    def active(self) -> bool:
        return len(self.banned) > 0 or self.allowed is not None

    def query(
        self,
        *,
        history: np.ndarray | None = None,
        item: int | None = None,
        also_banned: np.ndarray | None = None,
    ) -> RowQuery:
        """The RowQuery of one row under these filters; `also_banned` joins the exclude ids."""
        banned = self.banned if also_banned is None else sorted_union(self.banned, also_banned)
        return RowQuery(banned, self.allowed, history, item)


NO_FILTERS = Filters()


def search_width(n_items: int, k: int, n_banned: int, allowed_size: int | None) -> int | None:
    """How many items to search for one row (module docstring), or None: score it exactly.

    Args:
        n_banned: items the row may not return (an upper bound is fine).
        allowed_size: |A|, or None when every item is allowed.
    """
    need = k + 1 + n_banned
    if allowed_size is None:
        width = need
    elif allowed_size <= EXACT_SCAN_ITEMS:
        return None
    else:
        width = math.ceil(need * n_items / allowed_size * WIDEN_SLACK)
    if width > MAX_SEARCH_WIDTH:
        return None
    return min(width, n_items)


def qualifying_hits(hits: np.ndarray, banned: np.ndarray, allowed: Allowed | None) -> np.ndarray:
    """(w,) bool: the hits of a search row that are not banned and are allowed.

    Args:
        hits: (w,) int64 item indices, -1 for no hit (the caller drops those).
        banned: sorted int64.
    """
    ok = np.ones(len(hits), dtype=bool)
    if len(banned):
        pos = np.minimum(np.searchsorted(banned, hits), len(banned) - 1)
        ok &= banned[pos] != hits
    if allowed is not None and allowed.mask is not None:
        ok &= allowed.mask[np.maximum(hits, 0)]
    elif allowed is not None:  # small allow-lists are scanned, not searched; kept for safety
        ok &= np.isin(hits, allowed.idx)
    return ok


def _shown(ids: Sequence[str]) -> str:
    more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return ", ".join(repr(i) for i in ids[:SHOWN_IDS]) + more


class Catalogue(Protocol):
    """What resolving filters reads of a served bundle (service.serving.bundle.ServingBundle;
    a protocol, because the bundle itself searches with the Filters made here)."""

    n_groups: int

    def item_indices(self, external_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]: ...

    def allowed_groups(self, groups: tuple[int, ...]) -> Allowed | None: ...

    def allowed_items(self, include: np.ndarray, groups: tuple[int, ...] | None) -> Allowed: ...


def resolve_filters(
    bundle: Catalogue,
    exclude: Sequence[str] | None,
    include: Sequence[str] | None,
    groups: Sequence[int] | None,
) -> Filters:
    """Map a request's filters onto the bundle's items.

    Unknown exclude ids are ignored (they can't be recommended anyway) and reported;
    unknown include ids are reported when some are known, and refused when none is (an
    allow-list of nothing is a client error, not an empty shelf).

    Raises:
        FilterError: a group number outside 0 .. n_groups-1, or an include list with no
            known id.
    """
    if not exclude and not include and not groups:
        return NO_FILTERS
    unknown: dict[str, list[str]] = {}
    banned = NO_ITEMS
    if exclude:
        idx, missing = bundle.item_indices(exclude)
        banned = sorted_unique(idx)
        if missing:
            unknown["exclude"] = missing
    group_set: tuple[int, ...] | None = None
    if groups:
        bad = sorted({g for g in groups if not 0 <= g < bundle.n_groups})
        if bad:
            raise FilterError(
                "groups",
                f"no popularity group {bad}: groups are 0 (head) .. {bundle.n_groups - 1} (tail)",
                bad,
            )
        group_set = tuple(sorted(set(groups)))
    allowed = None
    if include:
        idx, missing = bundle.item_indices(include)
        if len(idx) == 0:
            raise FilterError(
                "include",
                f"none of the include ids is in the served catalogue: {_shown(missing)}",
                list(include),
            )
        if missing:
            unknown["include"] = missing
        allowed = bundle.allowed_items(sorted_unique(idx), group_set)
    elif group_set is not None:
        allowed = bundle.allowed_groups(group_set)
    return Filters(banned, allowed, unknown)
