"""Accuracy against popularity bias: an MF teacher (dim 100) distilled into MF students
(dim 10) by every method, on MovieLens-100K and on the built-in synthetic data; then
UnKD's λ_KD sweep. Exits non-zero unless, on every dataset,
  (1) the default UnKD student's head-group share is below the rd and cd students', and
  (2) some sweep setting gives NDCG@20 >= the plain student's with a lower head-group share.
Students are compared by their mean over --seeds seeds: a single run's NDCG@20 on
MovieLens-100K varies by about ±0.01 between seeds, as much as the effects measured.

    python bench/quality.py [--datasets ml-100k,synthetic] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, shared_datasets, table  # noqa: E402

K = 20
METHODS = ["none", "rd", "cd", "rrd", "unkd"]
LAMBDAS = [0.1, 0.3, 1.0, 3.0]


def load(name: str):  # type: ignore[no-untyped-def]
    from training.prepare import prepare_dataset
    from training.synthetic import SYNTHETIC_DEFAULTS, generate_synthetic

    if name == "synthetic":
        return generate_synthetic(**SYNTHETIC_DEFAULTS)
    path = shared_datasets() / name / f"{name}.inter"
    if not path.is_file():
        raise SystemExit(f"{name}: not found at {path} (set UNKD_SHARED_DATASETS)")
    return prepare_dataset(path)


def mean_report(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Average the @K figures over seeds; keep the per-seed NDCG spread."""
    import numpy as np

    keys = [f"recall@{K}", f"ndcg@{K}", f"head_share@{K}", f"arp@{K}", f"pop_rsp@{K}"]
    m = {k: float(np.mean([r["metrics"][k] for r in reports])) for k in keys}
    m[f"ndcg@{K}_std"] = float(np.std([r["metrics"][f"ndcg@{K}"] for r in reports]))
    n_groups = len(reports[0]["groups"])
    groups = [float(np.mean([r["groups"][g][f"recall@{K}"] for r in reports])) for g in range(n_groups)]
    return {"metrics": m, "group_recall": groups, "seeds": len(reports)}


def row_of(summary: dict[str, Any], label: str, seconds_per_epoch: float) -> list[Any]:
    m = summary["metrics"]
    ndcg = f"{m[f'ndcg@{K}']:.4f} ± {m[f'ndcg@{K}_std']:.4f}"
    return [label, m[f"recall@{K}"], ndcg, *summary["group_recall"], m[f"head_share@{K}"],
            m[f"arp@{K}"], m[f"pop_rsp@{K}"], seconds_per_epoch]


def run_dataset(name: str, work: Path, device, seeds: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from training.config import DistillConfig, TeacherConfig
    from training.pipelines import distill_student, train_teacher

    ds = load(name)
    t0 = time.perf_counter()
    teacher = train_teacher(ds, TeacherConfig(model="mf", dim=100), work / f"{name}-teacher", device=device)
    teacher_s = time.perf_counter() - t0

    def students(**kw: Any) -> tuple[dict[str, Any], float]:
        """Distil one setting with `seeds` seeds: mean figures and mean seconds per epoch."""
        reports, secs = [], []
        for seed in range(seeds):
            cfg = DistillConfig(dim=10, seed=seed, **kw)
            art = distill_student(ds, teacher, cfg, work / f"{name}-student", device=device)
            assert art.report is not None and art.manifest.training is not None
            reports.append(art.report.model_dump(mode="json"))
            secs.append(art.manifest.training.seconds_per_epoch)
        return mean_report(reports), sum(secs) / len(secs)

    assert teacher.report is not None and teacher.manifest.training is not None
    t_report = teacher.report.model_dump(mode="json")
    n_groups = len(t_report["groups"])
    headers = ["model", f"Recall@{K}", f"NDCG@{K} (± std over seeds)",
               *[f"R@{K} G{g + 1}" for g in range(n_groups)], "head share", "ARP", "PopRSP", "s/epoch"]
    rows = [row_of(mean_report([t_report]), "teacher MF-100", teacher.manifest.training.seconds_per_epoch)]
    results: dict[str, Any] = {"teacher": t_report["metrics"], "students": {}, "sweep": {}}
    for method in METHODS:
        summary, spe = students(method=method)
        rows.append(row_of(summary, f"student {method}", spe))
        results["students"][method] = {**summary, "seconds_per_epoch": spe}
    default_lambda = DistillConfig().lambda_kd
    plain = results["students"]["none"]["metrics"]
    sweep_rows = [["plain (none)", "-", plain[f"ndcg@{K}"], plain[f"head_share@{K}"], "-"]]
    for lam in LAMBDAS:
        if lam == default_lambda:
            m = results["students"]["unkd"]["metrics"]
        else:
            m = students(method="unkd", lambda_kd=lam)[0]["metrics"]
        results["sweep"][str(lam)] = m
        ok = m[f"ndcg@{K}"] >= plain[f"ndcg@{K}"] and m[f"head_share@{K}"] < plain[f"head_share@{K}"]
        sweep_rows.append([f"unkd λ={lam}", lam, m[f"ndcg@{K}"], m[f"head_share@{K}"],
                           "yes" if ok else "no"])
    stats = ds.statistics()
    print(f"\n## {name}: {stats['users']} users × {stats['items']} items, {stats['interactions']} "
          f"interactions (teacher trained in {teacher_s:.0f} s; students: mean of {seeds} seeds)\n")
    print(table(headers, rows))
    print(f"\nUnKD λ_KD sweep (default λ_KD = {default_lambda}; mean of {seeds} seeds):\n")
    print(table(["student", "λ_KD", f"NDCG@{K}", "head share", "as accurate and less biased"],
                sweep_rows))
    sys.stdout.flush()
    return results


def check(name: str, res: dict[str, Any]) -> list[str]:
    s = res["students"]
    head = {m: s[m]["metrics"][f"head_share@{K}"] for m in s}
    misses = []
    if not (head["unkd"] < head["rd"] and head["unkd"] < head["cd"]):
        misses.append(f"{name}: UnKD head share {head['unkd']:.4f} is not below rd {head['rd']:.4f} "
                      f"and cd {head['cd']:.4f}")
    plain = s["none"]["metrics"]
    if not any(m[f"ndcg@{K}"] >= plain[f"ndcg@{K}"] and m[f"head_share@{K}"] < plain[f"head_share@{K}"]
               for m in res["sweep"].values()):
        misses.append(f"{name}: no λ_KD in the sweep gives NDCG@{K} >= plain with a lower head share")
    return misses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-100k,synthetic")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=3,
                    help="student seeds averaged per setting (one run's NDCG@20 varies by ±0.01)")
    ap.add_argument("--json", type=Path, help="write all figures to this file")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from training.device import resolve_device

    device = resolve_device(a.device)
    print(f"environment: {environment()}")
    all_results, misses = {}, []
    with tempfile.TemporaryDirectory(prefix="unkd-bench-") as tmp:
        for name in a.datasets.split(","):
            all_results[name] = run_dataset(name, Path(tmp), device, a.seeds)
            misses += check(name, all_results[name])
    if a.json:
        a.json.write_text(json.dumps({"environment": environment(), "results": all_results}, indent=2))
    print()
    for m in misses:
        print(f"MISS: {m}")
    print("all targets met" if not misses else f"{len(misses)} target(s) missed")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
