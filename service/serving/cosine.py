"""The unit-norm item table that similar items search (service/serving/item_routes.py).

Similar items rank by the cosine of item vectors, over the learned columns only: a student's
head-shift column (training.calibration: -1 for every head item, 0 elsewhere) says which
popularity group an item is in, not what it is like, and left in it would make every head
item close to every other one (and, with small learned norms, closest).
"""

from __future__ import annotations

import faiss
import numpy as np


def cosine_table(
    item_emb: np.ndarray, shift_column: int | None = None, chunk: int = 65536
) -> tuple[np.ndarray, faiss.IndexFlatIP]:
    """Unit-norm item vectors and an exact inner-product index over them.

    A zero vector stays zero (cosine 0 with everything).

    Args:
        item_emb: (n_items, d) float32, may be a memory map (read in chunks).
        shift_column: a column left out (a head-shift column), or None.
    Returns:
        unit: (n_items, d') float32 C-contiguous, d' = d - 1 with a shift column, else d;
        and the index over it.
    """
    n, d = item_emb.shape
    keep = np.delete(np.arange(d), shift_column) if shift_column is not None else None
    unit = np.empty((n, d if keep is None else len(keep)), dtype=np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(item_emb[start : start + chunk], dtype=np.float32)
        if keep is not None:
            block = block[:, keep]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        unit[start : start + chunk] = block / np.where(norms > 0, norms, 1.0)[:, None]
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    return unit, index
