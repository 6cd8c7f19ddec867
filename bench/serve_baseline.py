"""bench/serve.py's yardstick and its fresh-seen load: the app a user would otherwise write,
and the recent-items map both apps answer with.

`baseline_app` is what a careful user writes around a published bundle without unkd-serve's
serving layer: a FastAPI `def` route (so index.search runs in the threadpool, off the event
loop) that looks the user up, asks faiss for k + |seen| items on one OpenMP thread
(OMP_NUM_THREADS=1 in its environment, faiss.omp_set_num_threads(1) as well), drops the
user's training items and their recent positive items (the same FreshItems map as the
service's), and returns a dict for FastAPI to encode. No coalescing, no prepared JSON.

`bench_fresh` fills that map the same way for both apps: a third of the users (every user
index divisible by 3) hold FRESH_ITEMS recent items each, so a third of the plain GETs take
the fresh-filter path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

FRESH_ITEMS = 3
FRESH_EVERY = 3  # users whose index is a multiple of this hold recent items


def bench_fresh(n_users: int, n_items: int, enabled: bool) -> Any:
    """A FreshItems with FRESH_ITEMS recent items for every FRESH_EVERY-th user (empty when
    not `enabled`: the fresh filter off)."""
    import time

    from service.serving.fresh import FreshItems

    fresh = FreshItems(max_users=n_users, per_user=32, ttl_s=24 * 3600.0)
    if enabled:
        now = time.time()
        rng = np.random.default_rng(12345)
        for u in range(0, n_users, FRESH_EVERY):
            for i in rng.integers(0, n_items, FRESH_ITEMS).tolist():
                fresh.add(f"u{u}", f"item-{i}", now)
    return fresh


def fresh_enabled() -> bool:
    return os.environ.get("BENCH_FRESH", "1") != "0"


def baseline_app(bundle_dir: Path) -> Any:
    """The app a careful user writes (module doc) over the bundle at `bundle_dir`."""
    import faiss
    from fastapi import FastAPI, HTTPException

    from service.serving.bundle import load_bundle

    faiss.omp_set_num_threads(1)
    b = load_bundle(bundle_dir)
    index, user_emb = b.index, b.user_emb
    item_ids, groups = b.item_ids.tolist(), b.groups.tolist()
    fresh = bench_fresh(b.n_users, b.n_items, fresh_enabled())
    app = FastAPI()

    @app.get("/v1/recommendations/{user_id}")
    def recommend(user_id: str, k: int = 20, exclude_seen: bool = True) -> dict[str, Any]:
        u = b.user_index(user_id)
        if u is None:
            raise HTTPException(404, f"unknown user {user_id}")
        seen: set[int] = set()
        if exclude_seen:
            seen = set(b.seen(u).tolist())
            for item in fresh.items(user_id):
                idx = b.item_index(item)
                if idx is not None:
                    seen.add(idx)
        scores, items = index.search(user_emb[u : u + 1], k + len(seen))
        out = []
        for s, i in zip(scores[0].tolist(), items[0].tolist(), strict=True):
            if i >= 0 and i not in seen:
                out.append({"item_id": item_ids[i], "group": groups[i], "score": s})
                if len(out) == k:
                    break
        return {"user_id": user_id, "model_id": b.model_id, "items": out}

    return app
