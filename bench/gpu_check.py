"""The CUDA paths, checked against the CPU paths on one machine with a GPU.

Each row runs the same job on the CPU and on CUDA and compares what users would see:
- EASE's closed form (torch on the job's device): the same weights;
- the teacher's candidate lists (UnKD's one-off ranking) on CUDA: the same lists;
- evaluation on CUDA: the same report figures;
- ALS on implicit's CUDA build (training.teachers.als picks it for a CUDA job): the
  backend used and its validation NDCG@20 beside the CPU build's;
- an MF teacher and a UnKD student (ALS warm start, the product's defaults) trained on
  CUDA: test NDCG@20 beside the CPU run's (random streams differ between devices, so the
  figures are compared within a tolerance, not for equality);
- the CUDA student's serving bundle (built with this host's faiss, faiss-gpu on a GPU worker)
  read back on the CPU path the API uses: its top-20 equal a brute-force top-20;
- with --beauty FILE (Amazon-Beauty), seconds per UnKD epoch on each device.
Prints a table; exits 1 when a check fails, 2 when there is no CUDA device.

    python bench/gpu_check.py [--beauty ../shared/datasets/amazon-beauty/beauty.csv]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import table  # noqa: E402

NDCG_TOLERANCE = 0.02  # |CUDA - CPU| test NDCG@20 of a trained model (other random streams)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--beauty", type=Path, help="Amazon-Beauty's beauty.csv, for epoch timings")
    ap.add_argument(
        "--dry-run", action="store_true", help="CPU against CPU: checks this script itself"
    )
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import numpy as np
    import torch

    if not torch.cuda.is_available() and not a.dry_run:
        print("no CUDA device: nothing to check")
        return 2
    from training.config import DistillConfig, TeacherConfig
    from training.distill.ranking import teacher_candidates
    from training.evaluation import evaluate_embeddings
    from training.pipelines import distill_student, train_teacher
    from training.scoring import EmbeddingScorer
    from training.synthetic import SYNTHETIC_DEFAULTS, generate_synthetic
    from training.teachers.als import als_backend, fit_als
    from training.teachers.ease import ease_weights

    cpu, gpu = torch.device("cpu"), torch.device("cpu" if a.dry_run else "cuda")
    print(f"torch {torch.__version__}, {'dry run' if a.dry_run else torch.cuda.get_device_name(0)}")
    rows: list[list[Any]] = []
    failed: list[str] = []

    def row(name: str, cpu_value: Any, gpu_value: Any, ok: bool, note: str = "") -> None:
        rows.append([name, cpu_value, gpu_value, "ok" if ok else "FAIL", note])
        if not ok:
            failed.append(name)
        print(
            f"  {name}: cpu {cpu_value} cuda {gpu_value} {'ok' if ok else 'FAIL'} {note}",
            flush=True,
        )

    ds = generate_synthetic(**SYNTHETIC_DEFAULTS)
    train, valid = ds.csr("train"), ds.csr("valid")

    b_cpu = ease_weights(train, 200.0, cpu)
    b_gpu = ease_weights(train, 200.0, gpu).cpu()
    diff = float((b_cpu - b_gpu).abs().max())
    row("EASE weights, max |difference|", "-", f"{diff:.2e}", diff < 1e-3)

    rng = np.random.default_rng(0)
    u, v = (
        rng.normal(size=(ds.n_users, 32)).astype(np.float32),
        rng.normal(size=(ds.n_items, 32)).astype(np.float32),
    )
    groups = np.asarray(ds.groups(4))
    c_cpu = teacher_candidates(EmbeddingScorer(u, v, cpu), train, groups, 200)
    c_gpu = teacher_candidates(EmbeddingScorer(u, v, gpu), train, groups, 200)
    same = float((c_cpu.items == c_gpu.items).float().mean())
    row("candidate lists, share of equal entries", "-", f"{same:.5f}", same >= 0.999)

    r_cpu = evaluate_embeddings(ds, u, v, device=cpu)["metrics"]
    r_gpu = evaluate_embeddings(ds, u, v, device=gpu)["metrics"]
    worst = max(abs(r_cpu[k] - r_gpu[k]) for k in r_cpu if isinstance(r_cpu[k], float))
    row("evaluation, max |difference| over the report", "-", f"{worst:.2e}", worst < 1e-4)

    cls, on_gpu = als_backend(gpu)
    t0 = time.perf_counter()
    als_g = fit_als(train, valid, TeacherConfig(model="als", dim=64), device=gpu)
    tg = time.perf_counter() - t0
    t0 = time.perf_counter()
    als_c = fit_als(train, valid, TeacherConfig(model="als", dim=64), device=cpu)
    tc = time.perf_counter() - t0
    row(
        "ALS-64 valid NDCG@20 (backend)",
        f"{als_c.valid['ndcg@20']:.4f} ({als_c.backend}, {tc:.1f}s)",
        f"{als_g.valid['ndcg@20']:.4f} ({als_g.backend}, {tg:.1f}s)",
        abs(als_c.valid["ndcg@20"] - als_g.valid["ndcg@20"]) < NDCG_TOLERANCE,
        "implicit CUDA build in use"
        if on_gpu
        else "implicit has no usable CUDA build here: CPU fallback",
    )

    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, Any] = {}
        for dev in (cpu, gpu):
            t0 = time.perf_counter()
            teacher = train_teacher(
                ds,
                TeacherConfig(model="mf", dim=64, epochs=40),
                Path(tmp) / f"t-{dev.type}",
                device=dev,
            )
            t_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            student = distill_student(
                ds,
                teacher,
                DistillConfig(method="unkd", dim=10, epochs=60),
                Path(tmp) / f"s-{dev.type}",
                device=dev,
            )
            assert teacher.report is not None and student.report is not None
            out["cpu" if dev is cpu else "cuda"] = (
                teacher.report.metrics["ndcg@20"],
                t_s,
                student.report.metrics["ndcg@20"],
                time.perf_counter() - t0,
            )
        (tc_n, tc_s, sc_n, sc_s), (tg_n, tg_s, sg_n, sg_s) = out["cpu"], out["cuda"]
        row(
            "MF-64 teacher test NDCG@20",
            f"{tc_n:.4f} ({tc_s:.0f}s)",
            f"{tg_n:.4f} ({tg_s:.0f}s)",
            abs(tc_n - tg_n) < NDCG_TOLERANCE,
        )
        row(
            "UnKD-10 student test NDCG@20",
            f"{sc_n:.4f} ({sc_s:.0f}s)",
            f"{sg_n:.4f} ({sg_s:.0f}s)",
            abs(sc_n - sg_n) < NDCG_TOLERANCE,
        )

        # The CUDA student published as a worker does (build_bundle with this host's faiss:
        # faiss-gpu on a GPU worker), then read back by the API's CPU path (load_bundle, one
        # search thread) and checked against a brute-force top-20 of the same embeddings.
        import faiss
        import numpy as np

        from service.core.bundle_format import build_bundle
        from service.serving.bundle import load_bundle

        build_bundle(
            Path(tmp) / f"s-{gpu.type}", ds, Path(tmp) / "bundle-cuda", model_id="gpu-check"
        )
        served = load_bundle(Path(tmp) / "bundle-cuda")
        users = np.arange(min(200, ds.n_users))
        _, got = served.recommend(users, 20, exclude_seen=False)
        scores = served.user_emb[users] @ served.item_emb.T  # (users, items)
        want = np.argsort(-scores, axis=1, kind="stable")[:, :20]
        same_bundle = float((got == want).mean())
        row(
            "bundle of the CUDA student, read on CPU: top-20 = brute force",
            "-",
            f"{same_bundle:.4f}",
            same_bundle >= 0.999,
            f"faiss {faiss.__version__}",
        )

        if a.beauty is not None and a.beauty.is_file():
            from training.prepare import prepare_dataset

            beauty = prepare_dataset(a.beauty)
            teacher = train_teacher(
                beauty, TeacherConfig(model="als", dim=100), Path(tmp) / "bt", device=gpu
            )
            secs = {}
            for dev in (cpu, gpu):
                art = distill_student(
                    beauty,
                    teacher,
                    DistillConfig(method="unkd", dim=10, epochs=10),
                    Path(tmp) / f"bs-{dev.type}",
                    device=dev,
                )
                assert art.manifest.training is not None
                secs["cpu" if dev is cpu else "cuda"] = art.manifest.training.seconds_per_epoch
            row(
                "Amazon-Beauty UnKD epoch, seconds",
                f"{secs['cpu']:.2f}",
                f"{secs['cuda']:.2f}",
                True,
                f"{torch.get_num_threads()} CPU threads",
            )

    print()
    print(table(["check", "cpu", "cuda", "", "note"], rows))
    print("all CUDA checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
