"""Can the API's faiss read the indexes the workers' faiss writes? Check a pair of versions.

The GPU worker image installs faiss-gpu-cu12 (PyPI's newest is 1.14.1) and the API image
faiss-cpu (1.15.1 today): bundles written by one are read by the other. The index files
are written by faiss's CPU serialization code in both packages, so a faiss-cpu of the
worker's version writes what the GPU worker writes. Run the writer under one faiss and the
reader under the other:

    python -m venv /tmp/f14 && /tmp/f14/bin/pip install faiss-cpu==1.14.2 "numpy<2.5"
    /tmp/f14/bin/python bench/faiss_pair.py write /tmp/pair      # the workers' faiss
    .venv/bin/python bench/faiss_pair.py read /tmp/pair           # the API's faiss

`write` builds the index types a bundle may hold (Flat, IVF, HNSW; inner product, as
service/core/bundle_format.py builds them) over fixed random vectors, saves them with the
queries and that faiss's own top-20; `read` loads each (also memory-mapped, as
UNKD_SERVING_MMAP does for flat indexes), searches, and compares ids and scores. Prints a
table; exits 1 on any difference. Needs only numpy and faiss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import faiss
import numpy as np

FACTORIES = ["Flat", "IVF64,Flat", "HNSW32"]
K = 20


def _name(factory: str) -> str:
    return factory.replace(",", "_")


def write(out: Path) -> None:
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((20_000, 16)).astype(np.float32)
    xq = rng.standard_normal((50, 16)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "queries.npy", xq)
    for factory in FACTORIES:
        index = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(xb)
        index.add(xb)
        if factory.startswith("IVF"):
            faiss.extract_index_ivf(index).nprobe = 16
        if factory.startswith("HNSW"):
            faiss.downcast_index(index).hnsw.efSearch = 128
        scores, ids = index.search(xq, K)
        faiss.write_index(index, str(out / f"{_name(factory)}.faiss"))
        np.save(out / f"{_name(factory)}.ids.npy", ids)
        np.save(out / f"{_name(factory)}.scores.npy", scores)
    (out / "writer.json").write_text(
        json.dumps({"faiss": faiss.__version__, "numpy": np.__version__})
    )
    print(f"wrote {len(FACTORIES)} indexes with faiss {faiss.__version__} to {out}")


def read(src: Path) -> int:
    writer = json.loads((src / "writer.json").read_text())["faiss"]
    xq = np.load(src / "queries.npy")
    rows, ok = [], True
    for factory in FACTORIES:
        for mmap in (False, True):
            if mmap and factory != "Flat":
                continue
            flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
            index = faiss.read_index(str(src / f"{_name(factory)}.faiss"), flags)
            if factory.startswith("IVF"):
                faiss.extract_index_ivf(index).nprobe = 16
            if factory.startswith("HNSW"):
                faiss.downcast_index(index).hnsw.efSearch = 128
            scores, ids = index.search(xq, K)
            same_ids = bool((ids == np.load(src / f"{_name(factory)}.ids.npy")).all())
            max_diff = float(np.abs(scores - np.load(src / f"{_name(factory)}.scores.npy")).max())
            good = same_ids and max_diff < 1e-4
            ok &= good
            rows.append(
                (
                    factory + (" (mmap)" if mmap else ""),
                    same_ids,
                    f"{max_diff:.1e}",
                    "ok" if good else "DIFF",
                )
            )
    print(f"written by faiss {writer}, read by faiss {faiss.__version__}")
    print("| index | same top-20 ids | max score difference | result |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "read"):
        sys.exit(__doc__)
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]))
        sys.exit(0)
    sys.exit(read(Path(sys.argv[2])))
