"""faiss's OpenMP thread count on the coalescer's search thread.

omp_set_num_threads is per thread in libgomp: a thread Python starts gets the process
default (all cores, or OMP_NUM_THREADS), not what the main thread set. The bundle's search
thread must limit itself (service.serving.search_path.limit_search_threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from service.serving.coalescer import Coalescer

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, threading
from pathlib import Path
import faiss
import numpy as np
from bundle_fixtures import make_bundle
from service.serving.bundle import load_bundle

faiss.omp_set_num_threads(1)  # the main thread only, as a server's start-up would do
seen = {}
t = threading.Thread(target=lambda: seen.setdefault("plain_thread", faiss.omp_get_max_threads()))
t.start(); t.join()
path, ds, _ = make_bundle(Path(sys.argv[1]), n_users=20, n_items=200)
b = load_bundle(path)
inner = b._coalescer._batch_ref()  # the bundle's recommend (held weakly)

def spy(*args):
    seen["search_thread"] = faiss.omp_get_max_threads()
    seen["thread_name"] = threading.current_thread().name
    return inner(*args)

b._coalescer._batch_ref = lambda: spy
_, items = b.recommend_one(3, 5, True)
assert items.tolist() == b.recommend(np.array([3]), 5, exclude_seen=True)[1][0].tolist()
print(json.dumps(seen))
"""


def test_bundle_search_thread_runs_faiss_on_one_openmp_thread(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "4",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "unit")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    import json

    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["plain_thread"] == 4  # the default a new thread gets: the test can fail
    assert seen["thread_name"] == "coalescer-search"
    assert seen["search_thread"] == 1


def test_on_thread_start_runs_on_each_new_search_thread_before_its_batches() -> None:
    events: list[tuple[str, str]] = []

    def fn(
        users: np.ndarray, k: int, exclude_seen: bool, queries: list | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        events.append(("batch", threading.current_thread().name))
        return np.zeros((len(users), k), np.float32), np.zeros((len(users), k), np.int64)

    c = Coalescer(
        fn,
        idle_s=0.05,
        on_thread_start=lambda: events.append(("start", threading.current_thread().name)),
    )
    c.one(1, 2, True)
    deadline = time.monotonic() + 5
    while c._running and time.monotonic() < deadline:
        time.sleep(0.01)
    c.one(2, 2, True)  # a new search thread after the idle exit: the hook runs again
    assert events == [("start", "coalescer-search"), ("batch", "coalescer-search")] * 2


def test_a_failing_on_thread_start_does_not_stop_the_searches() -> None:
    def boom() -> None:
        raise RuntimeError("hook failed")

    def fn(
        users: np.ndarray, k: int, exclude_seen: bool, queries: list | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(users), k), np.float32), users[:, None].repeat(k, 1).astype(np.int64)

    _, items = Coalescer(fn, on_thread_start=boom).one(7, 3, False)
    assert items.tolist() == [7, 7, 7]
