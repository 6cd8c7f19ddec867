"""Which faiss path the serving process sends a batch down (service/serving/search_path.py)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from service.serving import search_path
from service.serving.search_path import (
    NO_BLAS,
    SERVING_BLAS_MIN_BATCH,
    fastest_blas_min_batch,
)


def flat_index(n: int = 500, d: int = 8) -> faiss.Index:
    index = faiss.IndexFlatIP(d)
    index.add(np.random.default_rng(0).standard_normal((n, d)).astype(np.float32))
    return index


@pytest.mark.parametrize(
    ("blas_wins_from", "expected"), [(1, 1), (2, 2), (3, 3), (4, SERVING_BLAS_MIN_BATCH)]
)
def test_the_smallest_batch_where_blas_is_no_slower_is_chosen(
    monkeypatch: pytest.MonkeyPatch, blas_wins_from: int, expected: int
) -> None:
    """A fake clock: the scan costs 1.0 per call, BLAS 0.5 from `blas_wins_from` queries on and
    2.0 below; the choice is where BLAS first wins, else the default."""
    timed: list[tuple[int, int]] = []

    def fake(index: faiss.Index, queries: np.ndarray, k: int, threshold: int) -> float:
        timed.append((len(queries), threshold))
        if threshold == NO_BLAS:
            return 1.0
        return 0.5 if len(queries) >= blas_wins_from else 2.0

    monkeypatch.setattr(search_path, "_best_seconds", fake)
    monkeypatch.setattr(search_path, "CALIBRATION_MIN_ITEMS", 100)
    assert fastest_blas_min_batch(flat_index(), np.ones((8, 8), np.float32)) == expected
    # batch sizes are tried in order and the search stops at the first win
    assert [nq for nq, _ in timed][::2] == list(range(1, min(expected, 3) + 1))


def test_calibration_leaves_faiss_settings_as_it_found_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(search_path, "CALIBRATION_MIN_ITEMS", 100)
    before = faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()
    faiss.cvar.distance_compute_blas_threshold = 1234
    faiss.omp_set_num_threads(2)
    try:
        got = fastest_blas_min_batch(flat_index(), np.ones((1, 8), np.float32))
        assert 1 <= got <= SERVING_BLAS_MIN_BATCH
        assert faiss.cvar.distance_compute_blas_threshold == 1234
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.cvar.distance_compute_blas_threshold = before[0]
        faiss.omp_set_num_threads(before[1])


def test_an_index_that_is_not_flat_or_is_small_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timed: list[int] = []
    monkeypatch.setattr(search_path, "_best_seconds", lambda *a: timed.append(1) or 1.0)
    assert fastest_blas_min_batch(flat_index(), np.ones((2, 8), np.float32)) == 4  # 500 items
    assert timed == []  # not timed at all
    monkeypatch.setattr(search_path, "CALIBRATION_MIN_ITEMS", 100)
    index = faiss.index_factory(8, "HNSW8", faiss.METRIC_INNER_PRODUCT)
    index.add(np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32))
    assert fastest_blas_min_batch(index, np.ones((2, 8), np.float32)) == SERVING_BLAS_MIN_BATCH
    assert fastest_blas_min_batch(flat_index(), np.zeros((0, 8), np.float32)) == 4
