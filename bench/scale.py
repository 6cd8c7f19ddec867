"""UnKD at scale: one-off teacher candidate lists, seconds per epoch, peak memory.

  1. MovieLens-100K: one UnKD epoch (sampling + training) must take < 2 s.
  2. Synthetic 100,000 users × 50,000 items × ~5M interactions, an MF teacher (dim 100)
     trained briefly, an MF student (dim 10): candidate lists < 120 s, each epoch < 60 s,
     peak resident memory < 6 GB.

    python bench/scale.py [--users 100000 --items 50000 --per-user 50] [--epochs 2] [--json F]
Prints a table and exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, shared_datasets, table  # noqa: E402

TARGETS = {"ml100k_epoch_s": 2.0, "candidates_s": 120.0, "epoch_s": 60.0, "peak_rss_gb": 6.0}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def unkd_run(ds, teacher_user, teacher_item, epochs: int, device) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    import torch

    from training.config import DistillConfig
    from training.distill import build_distiller
    from training.models import build_model
    from training.scoring import EmbeddingScorer
    from training.trainer import fit

    cfg = DistillConfig(method="unkd", dim=10, epochs=epochs, eval_every=1000, patience=1000)
    train = ds.csr("train")
    teacher = EmbeddingScorer(torch.as_tensor(teacher_user), torch.as_tensor(teacher_item), device)
    dist = build_distiller(cfg, teacher, train, device)
    t0 = time.perf_counter()
    dist.prepare()
    cand_s = time.perf_counter() - t0
    student = build_model("mf", ds.n_users, ds.n_items, 10, train, device=device)
    res = fit(student, ds.train, train, ds.csr("valid"), cfg, device=device, distiller=dist,
              lambda_kd=cfg.lambda_kd)
    return {"candidates_s": cand_s, "epoch_s": max(res.epoch_seconds),
            "epoch_s_mean": res.seconds_per_epoch, "sample_s": max(res.sample_seconds),
            "candidate_mb": dist.candidate_bytes() / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--per-user", type=int, default=50, help="mean interactions per user")
    ap.add_argument("--epochs", type=int, default=2, help="student epochs timed at scale")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-ml100k", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cache", type=Path, default=Path(__file__).parent / "out",
                    help="where the generated scale dataset is kept between runs")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from training.config import TeacherConfig
    from training.dataset import Dataset
    from training.device import resolve_device
    from training.models import build_model
    from training.prepare import prepare_dataset
    from training.synthetic import generate_synthetic
    from training.trainer import fit

    device = resolve_device(a.device)
    figures: dict[str, Any] = {"environment": environment()}
    rows: list[list[Any]] = []

    if not a.skip_ml100k:
        path = shared_datasets() / "ml-100k" / "ml-100k.inter"
        if not path.is_file():
            raise SystemExit(f"MovieLens-100K not found at {path} (set UNKD_SHARED_DATASETS)")
        from training.formats import read_interactions

        read_interactions(path)  # warm the file cache: the row measures parsing, not the disk
        t0 = time.perf_counter()
        read_interactions(path)
        read_s = time.perf_counter() - t0
        figures["ml100k_read_s"] = read_s
        rows.append(["ML-100K: read the .inter file", f"{read_s:.3f} s", "< 1.0 s", read_s < 1.0])
        ds = prepare_dataset(path)
        tcfg = TeacherConfig(dim=100, epochs=10)
        teacher = build_model("mf", ds.n_users, ds.n_items, 100, ds.csr("train"), device=device)
        tres = fit(teacher, ds.train, ds.csr("train"), ds.csr("valid"), tcfg, device=device)
        run = unkd_run(ds, tres.user_emb, tres.item_emb, epochs=3, device=device)
        figures["ml100k"] = run
        rows.append(["ML-100K: one UnKD epoch (sampling + training)", f"{run['epoch_s']:.2f} s",
                     f"< {TARGETS['ml100k_epoch_s']} s", run["epoch_s"] < TARGETS["ml100k_epoch_s"]])

    t0 = time.perf_counter()
    cache = a.cache / f"scale-{a.users}x{a.items}x{a.per_user}"
    if (cache / "manifest.json").is_file():  # generating 5M interactions takes minutes: reuse
        ds = Dataset.load(cache)
    else:
        ds = generate_synthetic(n_users=a.users, n_items=a.items, dim=32, skew=1.0,
                                interactions_per_user=a.per_user, seed=0, name="scale")
        ds.save(cache)
    gen_s = time.perf_counter() - t0
    stats = {"users": ds.n_users, "items": ds.n_items, "train": int(len(ds.train)),
             "interactions": int(len(ds.train) + len(ds.valid) + len(ds.test))}
    # The teacher only has to rank; one large-batch epoch is enough for timing.
    tcfg = TeacherConfig(dim=100, epochs=1, batch_size=65536, eval_every=1000)
    t0 = time.perf_counter()
    teacher = build_model("mf", ds.n_users, ds.n_items, 100, ds.csr("train"), device=device)
    tres = fit(teacher, ds.train, ds.csr("train"), ds.csr("valid"), tcfg, device=device)
    teacher_s = time.perf_counter() - t0
    del teacher
    run = unkd_run(ds, tres.user_emb, tres.item_emb, epochs=a.epochs, device=device)
    rss = peak_rss_gb()
    figures["scale"] = {**run, **stats, "generate_s": gen_s, "teacher_s": teacher_s, "peak_rss_gb": rss}
    label = f"{stats['users']:,} × {stats['items']:,} × {stats['interactions']:,}"
    rows += [
        [f"{label}: teacher candidate lists", f"{run['candidates_s']:.1f} s",
         f"< {TARGETS['candidates_s']:.0f} s", run["candidates_s"] < TARGETS["candidates_s"]],
        [f"{label}: UnKD epoch (slowest of {a.epochs})", f"{run['epoch_s']:.1f} s",
         f"< {TARGETS['epoch_s']:.0f} s", run["epoch_s"] < TARGETS["epoch_s"]],
        [f"{label}: peak resident memory", f"{rss:.2f} GB", f"< {TARGETS['peak_rss_gb']:.0f} GB",
         rss < TARGETS["peak_rss_gb"]],
    ]
    print(f"environment: {figures['environment']}")
    print(f"scale data generated or loaded in {gen_s:.1f} s; teacher epoch {teacher_s:.1f} s; "
          f"candidate lists hold {run['candidate_mb']:.0f} MB; sampling {run['sample_s']:.1f} s/epoch\n")
    print(table(["measure", "value", "target", "met"], rows))
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    missed = [r[0] for r in rows if not r[3]]
    for m in missed:
        print(f"MISS: {m}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
