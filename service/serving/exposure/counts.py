"""Exposure counts, pure logic: the counters of a span, an answer batch aggregated into them,
the window's buckets and the figures of a span (no Redis, no threads).

Window: the 10-s buckets that began within the last 600 s, the current one included, so
between 590 and 600 s of answers; an answer counts in the bucket during which it was
flushed (at most exposure_flush_s after it was answered).

Figures (as the offline report defines them, METRICS.md C and D, over served answers):
head share = slots of group 0 / slots; group share = slots of g / slots; ARP = mean over
non-empty answers of the mean training popularity of their items (an answer with no item
counts in `requests`, not in ARP); coverage = distinct items
shown / n_items; Gini = RecBole's Gini index of the items' counts (training.metrics_popularity,
the report's own function); latency p50/p99 from a histogram of 20 geometric bins per decade
(10 µs .. 100 s), each reported at its bin's geometric centre (within 6 % of the true value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.serving.schemas import ExposureGroup, ExposureLatency, ExposureScope
from training.metrics_popularity import gini_index

WINDOW_S = 600
BUCKET_S = 10
# Latency histogram: bin 0 is below 10 µs, bin i in 1..140 is [EDGES[i-1], EDGES[i]), bin 141
# is 100 s and above.
LATENCY_EDGES_S = 1e-5 * 10.0 ** (np.arange(0, 7 * 20 + 1) / 20.0)
LATENCY_BINS = len(LATENCY_EDGES_S) + 1


@dataclass
class Counts:
    """Exposure counters of one model over some span (a flush, a bucket, a window).

    Attributes:
        requests: answers (lists) counted.
        slots: filled slots (items shown).
        groups: (G,) int64 slots per popularity group.
        lists: answers with at least one item (ARP's denominator).
        pop_mean_sum: sum over those answers of their items' mean training popularity.
        latency: (LATENCY_BINS,) int64 histogram of answer latencies.
        items: (n_items,) int64 count of each item, or None where not read (the counters of a hash).
    """

    requests: int
    slots: int
    groups: np.ndarray
    lists: int
    pop_mean_sum: float
    latency: np.ndarray
    items: np.ndarray | None = None

    @classmethod
    def zero(cls, n_groups: int, n_items: int | None = None) -> Counts:
        items = np.zeros(n_items, dtype=np.int64) if n_items is not None else None
        zeros = np.zeros(n_groups, dtype=np.int64)
        return cls(0, 0, zeros, 0, 0.0, np.zeros(LATENCY_BINS, dtype=np.int64), items)

    def add(self, other: Counts) -> None:
        """Add `other` into self (groups beyond self's G are dropped; items padded or cut)."""
        self.requests += other.requests
        self.slots += other.slots
        g = min(len(self.groups), len(other.groups))
        self.groups[:g] += other.groups[:g]
        self.lists += other.lists
        self.pop_mean_sum += other.pop_mean_sum
        self.latency += other.latency
        if self.items is not None and other.items is not None:
            m = min(len(self.items), len(other.items))
            self.items[:m] += other.items[:m]

    def fields(self) -> dict[str, int]:
        """The integer counters as hash fields (zeros left out): requests, slots, lists,
        g:<group>, lat:<bin>."""
        out = {"requests": self.requests, "slots": self.slots, "lists": self.lists}
        out.update({f"g:{g}": int(n) for g, n in enumerate(self.groups.tolist()) if n})
        out.update({f"lat:{b}": int(n) for b, n in enumerate(self.latency.tolist()) if n})
        return {k: v for k, v in out.items() if v}

    @classmethod
    def from_hash(cls, raw: dict[Any, Any], n_groups: int) -> Counts:
        """The counters of one Redis hash (fields of `fields()` and pop_mean_sum; bytes or str)."""
        out = cls.zero(n_groups)
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            text = value.decode() if isinstance(value, bytes) else str(value)
            if name == "pop_mean_sum":
                out.pop_mean_sum = float(text)
                continue
            kind, _, index = name.partition(":")
            n = int(text)
            if kind == "requests":
                out.requests = n
            elif kind == "slots":
                out.slots = n
            elif kind == "lists":
                out.lists = n
            elif kind == "g" and int(index) < n_groups:
                out.groups[int(index)] = n
            elif kind == "lat" and int(index) < LATENCY_BINS:
                out.latency[int(index)] = n
        return out

    def item_pairs(self) -> bytes:
        """The non-zero item counts as little-endian u32 (item, count) pairs (ADD_ITEMS_LUA)."""
        if self.items is None:
            return b""
        nz = np.flatnonzero(self.items)
        pairs = np.empty((len(nz), 2), dtype="<u4")
        pairs[:, 0] = nz
        pairs[:, 1] = np.minimum(self.items[nz], 2**32 - 1)
        return pairs.tobytes()


def latency_bins(seconds: np.ndarray) -> np.ndarray:
    """(n,) int64 histogram bin of each latency (see LATENCY_EDGES_S)."""
    return np.searchsorted(LATENCY_EDGES_S, np.asarray(seconds, dtype=np.float64), side="right")


def latency_quantile_ms(hist: np.ndarray, q: float) -> float | None:
    """The q-quantile (nearest rank) of a latency histogram, in ms, at its bin's geometric
    centre; None for an empty histogram."""
    total = int(hist.sum())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    b = int(np.searchsorted(np.cumsum(hist), rank))
    if b == 0:
        return float(LATENCY_EDGES_S[0] * 1e3)
    if b >= len(LATENCY_EDGES_S):
        return float(LATENCY_EDGES_S[-1] * 1e3)
    return float(math.sqrt(LATENCY_EDGES_S[b - 1] * LATENCY_EDGES_S[b]) * 1e3)


def aggregate(
    answers: Sequence[tuple[np.ndarray, float]],
    groups: np.ndarray,
    popularity: np.ndarray,
    n_groups: int,
) -> Counts:
    """The counts of some answers of one model.

    Args:
        answers: (items, latency_s) per HTTP answer; items (k,) for one list or (n, k) for n
            lists, int64 item indices, -1 for an empty slot.
        groups: (n_items,) popularity group of each item.
        popularity: (n_items,) training interactions of each item.
        n_groups: G, the bundle's number of popularity groups.
    """
    n_items = len(groups)
    rows = [np.atleast_2d(items) for items, _ in answers]
    n_rows = sum(r.shape[0] for r in rows)
    out = Counts.zero(n_groups, n_items)
    out.requests = n_rows
    out.latency = np.bincount(
        latency_bins(np.array([lat for _, lat in answers])), minlength=LATENCY_BINS
    )
    if n_rows == 0:
        return out
    flat = np.concatenate([r.ravel() for r in rows]).astype(np.int64, copy=False)
    row_of_slot = np.repeat(
        np.arange(n_rows), np.repeat([r.shape[1] for r in rows], [r.shape[0] for r in rows])
    )
    real = flat >= 0
    shown, row = flat[real], row_of_slot[real]
    out.slots = len(shown)
    out.items = np.bincount(shown, minlength=n_items).astype(np.int64)
    out.groups = np.bincount(groups[shown], minlength=n_groups).astype(np.int64)
    per_row = np.bincount(row, minlength=n_rows)
    pop_sum = np.bincount(row, weights=popularity[shown].astype(np.float64), minlength=n_rows)
    filled = per_row > 0
    out.lists = int(filled.sum())
    out.pop_mean_sum = float((pop_sum[filled] / per_row[filled]).sum())
    return out


def window_buckets(now: float, window_s: int = WINDOW_S, bucket_s: int = BUCKET_S) -> range:
    """The buckets (numbered time // bucket_s) that began within the last window_s, the
    current one included."""
    current = int(now // bucket_s)
    first = math.ceil((now - window_s) / bucket_s)
    return range(first, current + 1)


def decode_items(blobs: Iterable[bytes | None], n_items: int) -> np.ndarray:
    """The sum of dense big-endian u32 item-count strings: (n_items,) int64 (a missing key
    or a short string counts zeros)."""
    total = np.zeros(n_items, dtype=np.int64)
    for blob in blobs:
        if blob:
            arr = np.frombuffer(blob, dtype=">u4")[:n_items]
            total[: len(arr)] += arr
    return total


def coverage(items: np.ndarray, n_items: int) -> float | None:
    """Distinct items shown / catalogue size."""
    return float(np.count_nonzero(items) / n_items) if n_items else None


def scope_figures(
    counts: Counts, n_items: int, offline: Sequence[float | None] | None
) -> ExposureScope:
    """The contract's figures of one span. counts.items: (n_items,) summed item counts."""
    items = counts.items if counts.items is not None else np.zeros(n_items, dtype=np.int64)
    slots = counts.slots
    shares = [int(n) / slots if slots else None for n in counts.groups.tolist()]
    return ExposureScope(
        requests=counts.requests,
        slots=slots,
        head_share=shares[0] if shares else None,
        arp=counts.pop_mean_sum / counts.lists if counts.lists else None,
        coverage=coverage(items, n_items) if slots else None,
        gini=gini_index(items) if slots else None,
        distinct_items=int(np.count_nonzero(items)),
        groups=[
            ExposureGroup(
                group=g,
                share=s,
                offline_share=offline[g] if offline is not None and g < len(offline) else None,
            )
            for g, s in enumerate(shares)
        ],
        latency_ms=ExposureLatency(
            p50=latency_quantile_ms(counts.latency, 0.5),
            p99=latency_quantile_ms(counts.latency, 0.99),
        ),
    )
