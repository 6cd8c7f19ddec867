"""service/core/version_data.py's pure pieces: new external ids appended after the known ones
in order of first appearance, and a pair kept at its first occurrence."""

from __future__ import annotations

import numpy as np

from service.core.version_data import IdMap, keep_first


def test_known_ids_keep_their_index_and_new_ones_follow_in_order_of_first_use() -> None:
    ids = IdMap(np.asarray(["a", "b", "c"]))
    dense = ids.dense(np.asarray(["z", "b", "y", "z", "a", "x", "y"]))
    assert dense.tolist() == [3, 1, 4, 3, 0, 5, 4]
    assert ids.ids == ["a", "b", "c", "z", "y", "x"]
    assert ids.dense(np.asarray(["x", "w", "c"])).tolist() == [5, 6, 2]
    assert len(ids) == 7
    assert ids.dense(np.asarray([], dtype=str)).tolist() == []


def test_a_pair_is_kept_at_its_first_occurrence() -> None:
    rows = np.asarray([[0, 1], [2, 0], [0, 1], [1, 1], [2, 0], [0, 2]], dtype=np.int64)
    seen: set[tuple[int, int]] = set()
    expected = []
    for k, (u, i) in enumerate(rows.tolist()):
        if (u, i) not in seen:
            seen.add((u, i))
            expected.append(k)
    assert keep_first(rows, n_items=3).tolist() == expected == [0, 1, 3, 5]
