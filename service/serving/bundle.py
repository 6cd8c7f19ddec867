"""The loaded serving bundle: top-k search for batches of users, seen-item filtering,
and the JSON text of an answer. The on-disk format is service.core.bundle_format.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii
from pathlib import Path

import faiss
import numpy as np

from service.core.bundle_format import BundleFiles, read_bundle
from service.serving.coalescer import Coalescer

# Users who saw more items than this are scored by the exact fallback instead of widening
# the faiss search of the whole batch to k + their history (one heavy user would make
# every user in the batch pay for a huge result heap).
SEEN_SEARCH_BUDGET = 2048
# Flat search scans the item matrix once per query, or, when nq * d reaches
# faiss.cvar.distance_compute_blas_threshold (faiss 1.15: default 128000, compared with nq * d
# as measured), switches to a BLAS product that reads the matrix once per block of queries.
# Single queries are fastest on the scan; coalesced batches of 4+ are 1.5x (dim 10) to 4x
# (dim 100) cheaper per query on BLAS. The setting is process-wide, so the serving process
# (IndexStore) applies it with use_blas_for_batches, not load_bundle.
SERVING_BLAS_MIN_BATCH = 4


def use_blas_for_batches(d: int, min_batch: int = SERVING_BLAS_MIN_BATCH) -> None:
    """Make faiss take its BLAS path for batches of `min_batch`+ queries of dimension d."""
    faiss.cvar.distance_compute_blas_threshold = min_batch * d


def load_bundle(path: Path, *, nprobe: int = 16, ef_search: int = 128) -> ServingBundle:
    """Read and verify a bundle (checksums, shapes) and make it searchable."""
    return ServingBundle(read_bundle(path, nprobe=nprobe, ef_search=ef_search))


class ServingBundle:
    """A loaded bundle: immutable once built, searched concurrently by request threads."""

    def __init__(self, files: BundleFiles) -> None:
        path, meta, index, arrays, item_emb = (
            files.path, files.meta, files.index, files.arrays, files.item_emb
        )  # fmt: skip
        self.path = path
        self.meta = meta
        self.model_id: str = str(meta["model_id"])
        self.index = index
        self.n_users = int(meta["n_users"])
        self.n_items = int(meta["n_items"])
        self.exact = bool(meta.get("exact", True))
        self.user_emb = np.ascontiguousarray(arrays["user_emb"], dtype=np.float32)  # (n_users, d)
        self.seen_indptr = arrays["seen_indptr"].astype(np.int64)  # (n_users + 1,)
        self.seen_indices = arrays["seen_indices"].astype(np.int64)  # (n_train,)
        self.item_ids: np.ndarray = arrays["item_ids"]  # (n_items,) str
        self.groups = arrays["groups"].astype(np.int64)  # (n_items,)
        if item_emb is None:  # exact: the flat index already holds the vectors, view them
            flat = faiss.downcast_index(index)  # IndexFlatIP
            xb = faiss.rev_swig_ptr(flat.get_xb(), self.n_items * index.d)  # type: ignore[attr-defined]
            item_emb = xb.reshape(self.n_items, index.d)
        self.item_emb = item_emb  # (n_items, d) float32, for the exact fallback
        # Built once at load so a request does a dict lookup and string concatenation only.
        self._user_index = {uid: i for i, uid in enumerate(arrays["user_ids"].tolist())}
        # Concurrent single-user requests share one batched search (see service.serving.coalescer).
        self._coalescer = Coalescer(self.recommend)
        self._item_json_head = [
            f'{{"item_id":{encode_basestring_ascii(iid)},"group":{g},"score":'
            for iid, g in zip(self.item_ids.tolist(), self.groups.tolist(), strict=True)
        ]

    def user_index(self, external_id: str) -> int | None:
        return self._user_index.get(external_id)

    def item_external(self, idx: int | np.ndarray) -> str | np.ndarray:
        if isinstance(idx, np.ndarray):
            return self.item_ids[idx]
        return str(self.item_ids[idx])

    def group_of(self, idx: int | np.ndarray) -> int | np.ndarray:
        if isinstance(idx, np.ndarray):
            return self.groups[idx]
        return int(self.groups[idx])

    def seen(self, user_idx: int) -> np.ndarray:
        """(n_seen,) int64 training items of one user, sorted."""
        return self.seen_indices[self.seen_indptr[user_idx] : self.seen_indptr[user_idx + 1]]

    def recommend(self, user_idx: np.ndarray, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for a batch of users with one faiss search.

        The search asks for k + the largest seen count in the batch, so dropping seen items
        still leaves k per row; rows that come up short (an approximate index returned
        fewer, or the user's history exceeds SEEN_SEARCH_BUDGET) are rescored exactly.

        Args:
            user_idx: (n,) int internal user indices.
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
        indptr = self.seen_indptr
        bounds = [(int(indptr[u]), int(indptr[u + 1])) if exclude_seen else (0, 0) for u in users]
        light = [row for row, (s, e) in enumerate(bounds) if e - s <= SEEN_SEARCH_BUDGET]
        short = [row for row, (s, e) in enumerate(bounds) if e - s > SEEN_SEARCH_BUDGET]
        if light:
            k_search = min(self.n_items, k + max(bounds[row][1] - bounds[row][0] for row in light))
            rows = users if len(light) == n else [users[row] for row in light]
            scores, items = self.index.search(self.user_emb[rows], k_search)  # (m, k_search)
            for j, row in enumerate(light):
                # Per-row filtering in plain Python: for the ~k + |seen| hits of a row a set
                # lookup costs a few microseconds, less than the fixed cost of numpy calls.
                s, e = bounds[row]
                hits = items[j].tolist()
                if e > s:
                    seen = set(self.seen_indices[s:e].tolist())
                    keep = [c for c, i in enumerate(hits) if i >= 0 and i not in seen][:k]
                else:
                    keep = [c for c, i in enumerate(hits[:k]) if i >= 0]
                out_items[row, : len(keep)] = items[j, keep]
                out_scores[row, : len(keep)] = scores[j, keep]
                if len(keep) < min(k, self.n_items - (e - s)):
                    short.append(row)
        for row in short:  # rare: heavy users, or an approximate index that came up short
            out_scores[row], out_items[row] = self._exact_row(users[row], k, exclude_seen)
        return out_scores, out_items

    def recommend_one(self, user_idx: int, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """`recommend` for one user, batched with whatever other requests overlap it.

        Returns:
            (k,) float32 scores and (k,) int64 items, padded like `recommend`.
        """
        return self._coalescer.one(int(user_idx), k, exclude_seen)

    async def recommend_one_async(self, user_idx: int, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """`recommend_one` for the event loop: awaits the search thread, never blocks on faiss."""
        return await self._coalescer.one_async(int(user_idx), k, exclude_seen)

    def _exact_row(self, user: int, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-k for one user over every item: (k,) scores and (k,) items."""
        scores = np.asarray(self.item_emb @ self.user_emb[user], dtype=np.float32)  # (n_items,)
        if exclude_seen:
            scores[self.seen(user)] = -np.inf
        kk = min(k, self.n_items)
        top = np.argpartition(-scores, kk - 1)[:kk]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[np.isfinite(scores[top])]
        out_s = np.full(k, -np.inf, dtype=np.float32)
        out_i = np.full(k, -1, dtype=np.int64)
        out_s[: len(top)], out_i[: len(top)] = scores[top], top
        return out_s, out_i

    def items_json(self, scores: np.ndarray, items: np.ndarray) -> str:
        """One result row as a JSON array of {"item_id", "group", "score"}; -1 slots dropped.

        Args:
            scores: (k,) float32, items: (k,) int64, one row of `recommend`.
        """
        heads = self._item_json_head
        parts = [heads[i] + repr(s) + "}" for i, s in zip(items.tolist(), scores.tolist(), strict=True) if i >= 0]
        return "[" + ",".join(parts) + "]"
