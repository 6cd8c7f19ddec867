"""How the serving process runs faiss: which path a flat search takes, and on how many threads.

**Scan or BLAS.** An exact (flat) search either scans the item matrix once per query, or, when
nq * d reaches faiss.cvar.distance_compute_blas_threshold (faiss 1.15: default 128000,
compared with nq * d as measured), multiplies the queries with the matrix in BLAS and reads
it once per block of queries. Which is faster for the small batches the coalescer makes
depends on the CPU, so the serving process measures it when it loads a bundle
(`fastest_blas_min_batch`) and sets the process-wide threshold (`use_blas_for_batches`):

On 100k items x dim 10, one core, ms per query, scan / BLAS (2026-12-07, AMD EPYC, 2 vCPUs):
nq 1: 1.1-1.2 / 0.70-0.80; nq 2: 1.07-1.17 / 0.48-0.51; nq 3: 0.96-1.16 / 0.47-0.49; nq 4:
0.99-1.15 / 0.30-0.33. On the Intel Xeon host of the earlier figures single queries were
fastest on the scan (0.31 ms), so batches of 4+ went to BLAS, a fixed
SERVING_BLAS_MIN_BATCH; on the AMD host that left the batches of 1-3 that low concurrency
makes (a mean batch of 2.6 at 4 connections) on a scan 1.5-2.4 x slower than BLAS. The
measurement takes the best of a few timed searches per batch size (about 30 ms at 100k items,
once per load, off the request path). The setting is process-wide, so the serving process
(IndexStore) applies it, not load_bundle; while a swap measures, the model still serving
searches on whichever path the measurement has set (the same items, scores that may differ
in the last bits).

**Threads.** OpenMP threads per faiss call on the coalescer's search thread:
omp_set_num_threads sets a per-thread value in libgomp, so a thread that Python starts gets
the process default (OMP_NUM_THREADS, else every core of its affinity mask), whatever the
main thread set. A server scales by processes (one search thread each, sharing the cores with
its event loop and the other replicas), and coalesced batches are small (<= 64 queries, < 1 ms
each on one core), so OpenMP's fork/join and spin-waiting cost more than they save. Measured
(100k x 10 Flat, 2 cores, a Python thread): single searches took 16 ms median (p99 24 ms) on
2 OpenMP threads while the other core was busy, against 0.32 ms on 1; on an idle host 2
threads gave 0.20 ms but held both cores. A process pinned to one core (taskset, as
bench/serve.py runs it) already defaults to 1, so that benchmark cannot show the difference.
The search thread sets 1 itself: no need for OMP_NUM_THREADS=1 for it.
"""

from __future__ import annotations

import time

import faiss
import numpy as np

# Batches of at least this many queries take the BLAS path when nothing was measured (an
# index that is not flat, where the threshold only touches faiss's own flat sub-searches).
SERVING_BLAS_MIN_BATCH = 4
SEARCH_THREAD_OMP_THREADS = 1
NO_BLAS = 2**31 - 1  # (a C int) a threshold no batch reaches: the scan for every batch
CALIBRATION_REPEATS = 3  # timed searches per (path, batch size); the best one counts
CALIBRATION_K = 41  # about what a request asks: k 20, one more, and 20 seen items
# Smaller catalogues keep SERVING_BLAS_MIN_BATCH untimed: a search costs microseconds on either
# path, and a choice made from timings that small would differ from load to load (the scan and
# BLAS round scores differently in the last bits, so answers would too).
CALIBRATION_MIN_ITEMS = 20_000


def use_blas_for_batches(d: int, min_batch: int = SERVING_BLAS_MIN_BATCH) -> None:
    """Make faiss take its BLAS path for batches of `min_batch`+ queries of dimension d."""
    faiss.cvar.distance_compute_blas_threshold = min_batch * d


def limit_search_threads(n: int = SEARCH_THREAD_OMP_THREADS) -> None:
    """faiss's OpenMP thread count for the calling thread only (the search thread's start)."""
    faiss.omp_set_num_threads(n)


def use_fastest_path(index: faiss.Index, probe: np.ndarray) -> int:
    """Measure (`fastest_blas_min_batch`) and apply (`use_blas_for_batches`) the batch size
    from which flat searches of `index` take BLAS; returns it. The serving process calls this
    for each bundle it loads."""
    min_batch = fastest_blas_min_batch(index, probe)
    use_blas_for_batches(index.d, min_batch)
    return min_batch


def _best_seconds(index: faiss.Index, queries: np.ndarray, k: int, threshold: int) -> float:
    faiss.cvar.distance_compute_blas_threshold = threshold
    best = float("inf")
    for _ in range(CALIBRATION_REPEATS):
        t0 = time.perf_counter()
        index.search(queries, k)
        best = min(best, time.perf_counter() - t0)
    return best


def fastest_blas_min_batch(index: faiss.Index, probe: np.ndarray) -> int:
    """The smallest batch size (1 .. SERVING_BLAS_MIN_BATCH) from which faiss's BLAS path
    searches `index` at least as fast as its scan, timed here on one OpenMP thread, as the
    search thread runs; SERVING_BLAS_MIN_BATCH for an index that is not flat or holds fewer
    than CALIBRATION_MIN_ITEMS items.

    Args:
        probe: (m, d) float32 queries to time with (a few user vectors), m >= 1.
    Leaves faiss's threshold and the calling thread's OpenMP thread count as it found them.
    """
    flat = faiss.downcast_index(index)
    if (
        not isinstance(flat, faiss.IndexFlat)
        or index.ntotal < CALIBRATION_MIN_ITEMS
        or len(probe) == 0
    ):
        return SERVING_BLAS_MIN_BATCH
    k = min(CALIBRATION_K, int(index.ntotal))
    saved, threads = faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(SEARCH_THREAD_OMP_THREADS)
    try:
        for nq in range(1, SERVING_BLAS_MIN_BATCH):
            queries = np.ascontiguousarray(np.resize(probe, (nq, index.d)), dtype=np.float32)
            scan = _best_seconds(index, queries, k, NO_BLAS)
            blas = _best_seconds(index, queries, k, 1)
            if blas <= scan:
                return nq
        return SERVING_BLAS_MIN_BATCH
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved
        faiss.omp_set_num_threads(threads)
