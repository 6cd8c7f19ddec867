"""The loaded serving bundle: top-k search for batches of users, seen-item filtering,
filtered and vector queries (service.serving.filters), and the JSON text of an answer.
The on-disk format is service.core.bundle_format.

Every list follows the tie rule of service.serving.ranking (equal scores, lower item index
first), the rule of the quality reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from json.encoder import encode_basestring_ascii
from pathlib import Path

import faiss
import numpy as np

from service.core.bundle_format import BundleFiles, ShiftColumn, read_bundle
from service.serving.coalescer import Coalescer
from service.serving.cosine import cosine_table
from service.serving.fallback import PopularityTable
from service.serving.fallback import candidates as fallback_candidates
from service.serving.fallback import debiased as debiased_list
from service.serving.fallback import popular as popular_list
from service.serving.filters import (
    EXACT_SCAN_ITEMS,
    Allowed,
    RowQuery,
    qualifying_hits,
    search_width,
    sorted_union,
)
from service.serving.foldin import FOLD_IN_LAMBDA, fold_in, mean_sq_norm
from service.serving.ranking import (
    exact_topk,
    inner_products,
    padded,
    settle_hits,
    settle_in_order,
)
from service.serving.search_path import limit_search_threads

# Users who saw more items than this are scored by the exact fallback instead of widening
# the faiss search of the whole batch to k + their history (one heavy user would make
# every user in the batch pay for a huge result heap).
SEEN_SEARCH_BUDGET = 2048


def load_bundle(
    path: Path, *, nprobe: int = 16, ef_search: int = 128, mmap: bool = False
) -> ServingBundle:
    """Read and verify a bundle (checksums, shapes) and make it searchable; `mmap` maps the
    vectors and arrays from the files (shared between processes) instead of copying them."""
    return ServingBundle(read_bundle(path, nprobe=nprobe, ef_search=ef_search, mmap=mmap))


class ServingBundle:
    """A loaded bundle: immutable once built, searched concurrently by request threads."""

    def __init__(self, files: BundleFiles) -> None:
        path, meta, index, arrays, item_emb = (
            files.path,
            files.meta,
            files.index,
            files.arrays,
            files.item_emb,
        )
        self.path = path
        self.meta = meta
        self.model_id: str = str(meta["model_id"])
        self.index = index
        self.n_users = int(meta["n_users"])
        self.n_items = int(meta["n_items"])
        self.exact = bool(meta.get("exact", True))
        self.user_emb = np.ascontiguousarray(arrays["user_emb"], dtype=np.float32)  # (n_users, d)
        # copy=False: an int64 memory map stays one (read_bundle's mmap)
        self.seen_indptr = arrays["seen_indptr"].astype(np.int64, copy=False)  # (n_users + 1,)
        self.seen_indices = arrays["seen_indices"].astype(np.int64, copy=False)  # (n_train,)
        self.item_ids: np.ndarray = arrays["item_ids"]  # (n_items,) str
        self.groups = arrays["groups"].astype(np.int64, copy=False)  # (n_items,)
        self.n_groups = int(meta.get("n_groups", int(self.groups.max(initial=0)) + 1))
        # Training interactions per item: written at publish since bundle format 2; a format-1
        # bundle holds the same counts as its seen matrix (every training pair), so count them.
        pop = files.optional.get("item_popularity")
        self.popularity_source = "bundle" if pop is not None else "seen items"
        self.item_popularity = (
            np.asarray(pop, dtype=np.int64)
            if pop is not None
            else np.bincount(self.seen_indices, minlength=self.n_items).astype(np.int64)
        )
        if item_emb is None:  # exact: the flat index already holds the vectors, view them
            flat = faiss.downcast_index(index)  # IndexFlatIP
            xb = faiss.rev_swig_ptr(flat.get_xb(), self.n_items * index.d)  # type: ignore[attr-defined]
            item_emb = xb.reshape(self.n_items, index.d)
        self.item_emb = item_emb  # (n_items, d) float32, for exact scans and fold-in
        # A student's head-shift column (service.core.bundle_format): searched like any other,
        # left out of fold-in's regression and of the cosine table. None: no such column.
        shift = ShiftColumn.of_meta(meta)
        self.shift_column = shift.column if shift is not None else None
        self.new_user_shift = shift.new_user if shift is not None else 0.0
        # Built once at load so a request does a dict lookup and string concatenation only.
        self._user_index = {uid: i for i, uid in enumerate(arrays["user_ids"].tolist())}
        self._item_index = {iid: i for i, iid in enumerate(self.item_ids.tolist())}
        # Concurrent single-row requests share one batched search (see service.serving.coalescer).
        # The search thread limits its own faiss OpenMP threads (limit_search_threads).
        self._coalescer = Coalescer(self.recommend, on_thread_start=limit_search_threads)
        self._item_json_head = [
            f'{{"item_id":{encode_basestring_ascii(iid)},"group":{g},"score":'
            for iid, g in zip(self.item_ids.tolist(), self.groups.tolist(), strict=True)
        ]
        # Fallbacks answer on the event loop (no search): their popularity order is sorted here,
        # when the bundle loads off the request path, not by the first request.
        self.popularity = PopularityTable.build(self.item_popularity, self.groups, self.n_groups)
        self._group_allowed: dict[tuple[int, ...], Allowed | None] = {}
        self.exact_scans = 0  # rows scored over every candidate (statistics, read by tests)

    # -- ids, groups, filters -------------------------------------------------------------
    def user_index(self, external_id: str) -> int | None:
        return self._user_index.get(external_id)

    def item_index(self, external_id: str) -> int | None:
        return self._item_index.get(external_id)

    def item_indices(self, external_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """(m,) int64 indices of the known ids, in request order, and the unknown ids."""
        lookup = self._item_index
        found = [lookup.get(i) for i in external_ids]
        known = np.array([i for i in found if i is not None], dtype=np.int64)
        return known, [e for e, i in zip(external_ids, found, strict=True) if i is None]

    def item_external(self, idx: int | np.ndarray) -> str | np.ndarray:
        if isinstance(idx, np.ndarray):
            return self.item_ids[idx]
        return str(self.item_ids[idx])

    def group_of(self, idx: int | np.ndarray) -> int | np.ndarray:
        if isinstance(idx, np.ndarray):
            return self.groups[idx]
        return int(self.groups[idx])

    def allowed_groups(self, groups: tuple[int, ...]) -> Allowed | None:
        """The allow-list of some popularity groups (None when that is every group); cached,
        since there are only 2^G of them."""
        if groups not in self._group_allowed:
            if len(groups) == self.n_groups:
                self._group_allowed[groups] = None
            else:
                mask = np.isin(self.groups, groups)
                idx = np.flatnonzero(mask)
                self._group_allowed[groups] = Allowed(
                    idx, mask if len(idx) > EXACT_SCAN_ITEMS else None, groups
                )
        return self._group_allowed[groups]

    def allowed_items(self, include: np.ndarray, groups: tuple[int, ...] | None) -> Allowed:
        """The allow-list of an include list (sorted unique indices), within `groups` if given."""
        if groups is not None and len(groups) < self.n_groups:
            include = include[np.isin(self.groups[include], groups)]
        mask = None
        if len(include) > EXACT_SCAN_ITEMS:
            mask = np.zeros(self.n_items, dtype=bool)
            mask[include] = True
        return Allowed(include, mask, groups or tuple(range(self.n_groups)), include)

    def seen(self, user_idx: int) -> np.ndarray:
        """(n_seen,) int64 training items of one user, sorted."""
        return self.seen_indices[self.seen_indptr[user_idx] : self.seen_indptr[user_idx + 1]]

    # -- built on first use, on the search thread --------------------------------------------
    @cached_property
    def fold_in_lambda(self) -> float:
        """FOLD_IN_LAMBDA in this model's units (mean squared norm of the learned item columns)."""
        norm = mean_sq_norm(self.item_emb, shift_column=self.shift_column)
        return FOLD_IN_LAMBDA * max(norm, 1e-12)

    @cached_property
    def _cosine(self) -> tuple[np.ndarray, faiss.IndexFlatIP]:
        """Unit-norm learned item vectors and an exact index over them (similar items): one
        more (n_items, d) float32 copy, built on the first similar-items request."""
        return cosine_table(self.item_emb, self.shift_column)

    def fallback(
        self, kind: str, k: int, banned: np.ndarray, allowed: Allowed | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A list for a user the model does not know (service.serving.fallback).

        Args:
            kind: "popular" or "debiased".
            banned: sorted int64 items never returned.
        Returns:
            (k,) float32 scores (each item's share of training interactions) and (k,) int64
            items, padded like `recommend`.
        """
        table = self.popularity
        groups = allowed.groups if allowed is not None else tuple(range(self.n_groups))
        include = allowed.include if allowed is not None else None
        per_group = fallback_candidates(table, self.groups, k, banned, groups, include)
        if kind == "popular":
            items = popular_list(table, per_group, k)
        elif kind == "debiased":
            items = debiased_list(table, per_group, groups, k)
        else:
            raise ValueError(f"fallback={kind!r}: expected 'popular' or 'debiased'")
        out_s, out_i = padded(k)
        out_s[: len(items)], out_i[: len(items)] = table.share[items], items
        return out_s, out_i

    def fold_in(self, history: np.ndarray) -> np.ndarray:
        """(d,) float32 user vector of a history of item indices (service.serving.foldin);
        with a shift column, the new-user shift in it."""
        return fold_in(
            self.item_emb, history, self.fold_in_lambda, self.shift_column, self.new_user_shift
        )

    # -- search -----------------------------------------------------------------------------
    def recommend(
        self,
        user_idx: np.ndarray,
        k: int,
        exclude_seen: bool,
        queries: Sequence[RowQuery | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for a batch of rows: users, optionally with filters or their own query.

        Plain rows (no RowQuery) share one faiss search asking for k + 1 + the largest seen
        count in the batch; rows with a RowQuery are searched as wide as their filters need
        (service.serving.filters.search_width) or scored exactly.

        Args:
            user_idx: (n,) int internal user indices; -1 for a row whose RowQuery has a vector.
            queries: None, or one RowQuery or None per row.
        Returns:
            scores (n, k) float32 best first, item_idx (n, k) int64; rows with fewer than k
            candidates are padded with -inf / -1.
        """
        users = np.asarray(user_idx, dtype=np.int64).reshape(-1).tolist()
        n = len(users)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        out_items = np.full((n, k), -1, dtype=np.int64)
        if n == 0 or k <= 0:
            return out_scores, out_items
        if queries is None:
            self._plain_rows(users, list(range(n)), k, exclude_seen, out_scores, out_items)
            return out_scores, out_items
        # Rows whose only filter is a list of banned items (a user's recent items, exclude ids)
        # join the plain rows' shared search, a little wider.
        plain = [row for row, q in enumerate(queries) if q is None or q.only_banned]
        if plain:
            extra = {r: q.banned for r in plain if (q := queries[r]) is not None}
            self._plain_rows(users, plain, k, exclude_seen, out_scores, out_items, extra)
        filtered = [
            (row, q) for row, q in enumerate(queries) if q is not None and not q.only_banned
        ]
        if filtered:
            self._query_rows(users, filtered, k, exclude_seen, out_scores, out_items)
        return out_scores, out_items

    def _plain_rows(
        self,
        users: list[int],
        rows: list[int],
        k: int,
        exclude_seen: bool,
        out_scores: np.ndarray,
        out_items: np.ndarray,
        extra: dict[int, np.ndarray] | None = None,
    ) -> None:
        """The hot path: one search for the rows, seen items dropped in plain Python.

        The search reaches one item beyond k + the row's seen count (+ its `extra` banned
        items: sorted int64 per row), so a row whose hits hold no equal scores is exact as
        faiss ordered it; a row with equal scores among its hits (rare outside tied
        embeddings) is settled by the tie rule in numpy.
        """
        indptr = self.seen_indptr
        extra = extra or {}
        bounds = [
            (int(indptr[users[r]]), int(indptr[users[r] + 1])) if exclude_seen else (0, 0)
            for r in rows
        ]
        more = [len(extra[r]) if r in extra else 0 for r in rows]
        light = [j for j, (s, e) in enumerate(bounds) if e - s + more[j] <= SEEN_SEARCH_BUDGET]
        short = [rows[j] for j, (s, e) in enumerate(bounds) if e - s + more[j] > SEEN_SEARCH_BUDGET]
        if light:
            k_search = min(
                self.n_items, k + 1 + max(bounds[j][1] - bounds[j][0] + more[j] for j in light)
            )
            sub = [users[rows[j]] for j in light]
            scores, items = self.index.search(self.user_emb[sub], k_search)  # (m, k_search)
            # Equal scores among real hits (-1 padding of an approximate index aside): one numpy
            # pass per batch finds the rows that need the tie rule.
            tied = ((scores[:, 1:] == scores[:, :-1]) & (items[:, 1:] >= 0)).any(axis=1).tolist()
            searched_all = k_search >= self.n_items
            for m, j in enumerate(light):
                row = rows[j]
                s, e = bounds[j]
                ban = extra.get(row)
                if tied[m]:  # rare outside tied embeddings: settled by the tie rule in numpy
                    ok = ~np.isin(items[m], self.seen_indices[s:e])
                    if ban is not None:
                        ok &= ~np.isin(items[m], ban)
                    settled = settle_hits(scores[m], items[m], ok, k, searched_all)
                    if settled is None:
                        short.append(row)
                    else:
                        out_scores[row], out_items[row] = settled
                    continue
                # Per-row filtering in plain Python: for the ~k + |seen| hits of a row a set
                # lookup costs a few microseconds, less than the fixed cost of numpy calls.
                hits = items[m].tolist()
                n_banned = e - s
                if e > s or ban is not None:
                    seen = set(self.seen_indices[s:e].tolist())
                    if ban is not None:
                        seen.update(ban.tolist())
                        n_banned = len(seen)
                    keep = [c for c, i in enumerate(hits) if i >= 0 and i not in seen][:k]
                else:
                    keep = [c for c, i in enumerate(hits[:k]) if i >= 0]
                out_items[row, : len(keep)] = items[m, keep]
                out_scores[row, : len(keep)] = scores[m, keep]
                if len(keep) < min(k, self.n_items - n_banned):
                    short.append(row)
                elif ban is not None and (
                    len(keep) < k or keep[-1] >= len(hits) - hits.count(-1) - 1
                ):
                    # a banned list is a filter: its row is trusted as filtered rows are
                    # (ranking.settle_in_order), else scored exactly
                    short.append(row)
        for row in short:  # rare: heavy users, ties at the cut, an approximate index came up short
            u = users[row]
            banned = self.seen(u) if exclude_seen else None
            if row in extra:
                banned = extra[row] if banned is None else sorted_union(banned, extra[row])
            out_scores[row], out_items[row] = self._scan(
                self.user_emb[u], banned, None, k, cosine=False
            )

    def _query_rows(
        self,
        users: list[int],
        rows: list[tuple[int, RowQuery]],
        k: int,
        exclude_seen: bool,
        out_scores: np.ndarray,
        out_items: np.ndarray,
    ) -> None:
        """Rows with filters or their own query vector: a search per (space, width), or a scan."""
        plans: dict[tuple[bool, int], list[tuple[int, int, np.ndarray, np.ndarray, RowQuery]]] = {}
        scans = []
        for row, q in rows:
            u = users[row]
            vec = self._row_vector(u, q)
            banned = q.banned
            if exclude_seen and q.history is None and q.item is None:
                banned = sorted_union(self.seen(u), banned)
            allowed = None if q.allowed is None else len(q.allowed.idx)
            width = search_width(self.n_items, k, len(banned), allowed)
            if width is None:
                scans.append((row, vec, banned, q))
                continue
            # Rows share a search when their widths fall in one bucket (< 128, where heaps cost
            # about the same, then 128-511 and 512-2047): a narrow row never pays much for the
            # heap of a wide one.
            bucket = max(0, width.bit_length() - 6) // 2
            plans.setdefault((q.item is not None, bucket), []).append((row, width, vec, banned, q))
        for (cosine, _), plan in plans.items():
            index = self._cosine[1] if cosine else self.index
            width = max(p[1] for p in plan)
            xq = np.ascontiguousarray(np.stack([p[2] for p in plan]), dtype=np.float32)
            scores, items = index.search(xq, width)  # (m, width)
            searched_all = width >= self.n_items
            # Rows whose hits hold no equal scores are in exact order already (as in _plain_rows).
            tied = ((scores[:, 1:] == scores[:, :-1]) & (items[:, 1:] >= 0)).any(axis=1).tolist()
            for m, (row, _, vec, banned, q) in enumerate(plan):
                if (
                    q.allowed is None
                    and not tied[m]
                    and settle_in_order(scores[m], items[m], banned, k, row, out_scores, out_items)
                ):
                    continue
                ok = qualifying_hits(items[m], banned, q.allowed)
                settled = settle_hits(scores[m], items[m], ok, k, searched_all)
                if settled is None:  # came up short, or a tie at the k-th score may lie beyond
                    scans.append((row, vec, banned, q))
                else:
                    out_scores[row], out_items[row] = settled
        for row, vec, banned, q in scans:
            out_scores[row], out_items[row] = self._scan(
                vec, banned, q.allowed, k, q.item is not None
            )

    def _row_vector(self, user: int, q: RowQuery) -> np.ndarray:
        """(d,) float32 query of a row: a folded-in history, an item's unit vector, or the user's."""
        if q.history is not None:
            return self.fold_in(q.history)
        if q.item is not None:
            return self._cosine[0][q.item]
        return self.user_emb[user]

    def _scan(
        self,
        vec: np.ndarray,
        banned: np.ndarray | None,
        allowed: Allowed | None,
        k: int,
        cosine: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of one query over the allowed items minus the banned ones.

        Args:
            vec: (d,) float32 query.
            banned: sorted int64 items never returned, or None.
        Returns:
            (k,) scores and (k,) items by the tie rule, padded with -inf / -1.
        """
        self.exact_scans += 1
        emb = self._cosine[0] if cosine else self.item_emb
        if allowed is not None and len(allowed.idx) == 0:
            return padded(k)
        if allowed is not None and (allowed.mask is None or 4 * len(allowed.idx) <= self.n_items):
            cand: np.ndarray | None = allowed.idx
            scores = inner_products(np.asarray(emb[allowed.idx], dtype=np.float32), vec)  # (|A|,)
            if banned is not None and len(banned):
                pos = np.minimum(np.searchsorted(allowed.idx, banned), len(allowed.idx) - 1)
                scores[pos[allowed.idx[pos] == banned]] = -np.inf
        else:
            cand = None
            scores = inner_products(emb, vec)  # (n_items,)
            if allowed is not None and allowed.mask is not None:
                scores[~allowed.mask] = -np.inf
            if banned is not None and len(banned):
                scores[banned] = -np.inf
        return exact_topk(scores, cand, k)

    def recommend_one(
        self, user_idx: int, k: int, exclude_seen: bool, query: RowQuery | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`recommend` for one row, batched with whatever other requests overlap it.

        Returns:
            (k,) float32 scores and (k,) int64 items, padded like `recommend`.
        """
        return self._coalescer.one(int(user_idx), k, exclude_seen, query)

    async def recommend_one_async(
        self, user_idx: int, k: int, exclude_seen: bool, query: RowQuery | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`recommend_one` for the event loop: awaits the search thread, never blocks on faiss."""
        return await self._coalescer.one_async(int(user_idx), k, exclude_seen, query)

    def items_json(self, scores: np.ndarray, items: np.ndarray) -> str:
        """One result row as a JSON array of {"item_id", "group", "score"}; -1 slots dropped.

        Args:
            scores: (k,) float32, items: (k,) int64, one row of `recommend`.
        """
        heads = self._item_json_head
        parts = [
            heads[i] + repr(s) + "}"
            for i, s in zip(items.tolist(), scores.tolist(), strict=True)
            if i >= 0
        ]
        return "[" + ",".join(parts) + "]"
