"""The defaults block of bench/quality.py: what a job gets with no tuning at all.

For each dataset and each teacher kind (als, ease, mf, lightgcn; the TeacherConfig defaults
but the kind), the teacher a job trains and the UnKD-10 student a distill job gets from it
(DistillConfig(method="unkd", dim=10), nothing else set), beside the plain student's job
(method "none") for the time budget. Run alone:

    python bench/defaults.py [--datasets ml-100k,amazon-beauty,synthetic]
                             [--teachers als,ease,mf,lightgcn] [--json out.json]

Targets (the issue "Debiased by default"), checked by `check`:
  D1  every default UnKD student's test head share@20 is below its teacher's;
  D2  from the default teacher and from ALS and EASE teachers, also below implicit ALS-10's,
      with test NDCG@20 >= 0.95 x implicit ALS-10's (ALS-10 tuned on validation, bench/anchors);
  D3  the UnKD job takes at most 2 x the plain student's job on the same data and teacher;
  D4  on MovieLens-100K the default teacher and its UnKD student take under a minute each.
Alone this script prints the table; `bench/quality.py --blocks defaults` checks the targets.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, table  # noqa: E402

K = 20
TEACHERS = ("als", "ease", "mf", "lightgcn")
# Whose students must also beat implicit ALS-10 (D2): the default teacher kind, ALS and EASE.
D2_TEACHERS = ("als", "ease")
SMALL_DATA_S = 60.0


@dataclass
class DefaultRow:
    dataset: str
    teacher: str
    teacher_seconds: float
    teacher_epochs: int
    teacher_valid_head: float
    teacher_test_ndcg: float
    teacher_test_head: float
    student_seconds: float
    student_epochs: int
    student_valid_ndcg: float
    student_valid_head: float
    student_all_head: float
    teacher_all_head: float
    student_unshifted_head: float | None
    users_shifted: float
    cap_met: bool
    student_test_ndcg: float
    student_test_head: float
    student_test_recall_pop10: float | None
    student_test_recall_unpop10: float | None
    plain_seconds: float
    plain_test_ndcg: float
    plain_test_head: float


def run_one(
    ds_name: str, ds: Any, kind: str, work: Path, device: Any, teacher_dir: Path | None = None
) -> DefaultRow:
    """One teacher kind at its defaults and the students a job gets from it. teacher_dir: keep
    the teacher there, or reuse the one found there (its time is then its manifest's)."""
    from training.checkpoint import ModelArtifact
    from training.config import DistillConfig, TeacherConfig
    from training.pipelines import distill_student, train_teacher
    from training.tuning import validation_figures

    kept = teacher_dir / f"{ds_name}-{kind}" if teacher_dir is not None else None
    if kept is not None and (kept / "manifest.json").is_file():  # trained before: its own time
        teacher = ModelArtifact.load(kept)
        teacher_s = teacher.manifest.training.seconds if teacher.manifest.training else 0.0
    else:
        t0 = time.perf_counter()
        out = kept or work / f"t-{kind}"
        teacher = train_teacher(ds, TeacherConfig(model=kind), out, device=device)
        teacher_s = time.perf_counter() - t0
    tv = validation_figures(ds, teacher, device=device)
    t0 = time.perf_counter()
    student = distill_student(
        ds, teacher, DistillConfig(method="unkd", dim=10), work / f"s-{kind}", device=device
    )
    student_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = distill_student(
        ds, teacher, DistillConfig(method="none", dim=10), work / f"p-{kind}", device=device
    )
    plain_s = time.perf_counter() - t0
    sv = validation_figures(ds, student, device=device)
    cap = student.manifest.training.head_share_cap
    assert teacher.report and student.report and plain.report and cap is not None
    tm, sm, pm = teacher.report.metrics, student.report.metrics, plain.report.metrics
    return DefaultRow(
        dataset=ds_name,
        teacher=kind,
        teacher_seconds=teacher_s,
        teacher_epochs=teacher.manifest.training.epochs_run,
        teacher_valid_head=tv.head_share,
        teacher_test_ndcg=float(tm[f"ndcg@{K}"]),
        teacher_test_head=float(tm[f"head_share@{K}"]),
        student_seconds=student_s,
        student_epochs=student.manifest.training.epochs_run,
        student_valid_ndcg=sv.ndcg,
        student_valid_head=sv.head_share,
        student_all_head=cap.student,
        teacher_all_head=cap.teacher,
        student_unshifted_head=cap.unshifted,
        users_shifted=cap.users_shifted,
        cap_met=cap.met,
        student_test_ndcg=float(sm[f"ndcg@{K}"]),
        student_test_head=float(sm[f"head_share@{K}"]),
        student_test_recall_pop10=sm.get("recall_popular@10"),
        student_test_recall_unpop10=sm.get("recall_unpopular@10"),
        plain_seconds=plain_s,
        plain_test_ndcg=float(pm[f"ndcg@{K}"]),
        plain_test_head=float(pm[f"head_share@{K}"]),
    )


def run_dataset(
    name: str,
    ds: Any,
    work: Path,
    device: Any,
    teachers: tuple[str, ...],
    teacher_dir: Path | None = None,
) -> list[DefaultRow]:
    from training.budget import EASE_MAX_ITEMS

    rows = []
    for kind in teachers:
        if kind == "ease" and ds.n_items > EASE_MAX_ITEMS:
            print(f"  {name}: ease skipped ({ds.n_items} items > {EASE_MAX_ITEMS})", flush=True)
            continue
        row = run_one(name, ds, kind, work, device, teacher_dir)
        print(
            f"  {name} {kind}: teacher {row.teacher_seconds:.0f} s, UnKD {row.student_seconds:.0f} s "
            f"(plain {row.plain_seconds:.0f} s): test NDCG {row.student_test_ndcg:.4f}, head "
            f"{row.student_test_head:.3f} vs teacher {row.teacher_test_head:.3f}",
            flush=True,
        )
        rows.append(row)
    return rows


def print_table(rows: list[DefaultRow]) -> None:
    headers = [
        "data",
        "teacher",
        "teacher s (epochs)",
        "teacher head valid / test",
        "UnKD s (epochs)",
        "plain s",
        "users shifted",
        "head all users: UnKD vs teacher (UnKD unshifted)",
        "UnKD valid NDCG@20",
        "UnKD test NDCG@20",
        "UnKD test head",
        "cap met",
    ]
    body = [
        [
            r.dataset,
            r.teacher,
            f"{r.teacher_seconds:.0f} ({r.teacher_epochs})",
            f"{r.teacher_valid_head:.3f} / {r.teacher_test_head:.3f}",
            f"{r.student_seconds:.0f} ({r.student_epochs})",
            f"{r.plain_seconds:.0f}",
            f"{r.users_shifted:.2f}",
            f"{r.student_all_head:.3f} vs {r.teacher_all_head:.3f}"
            + (
                f" ({r.student_unshifted_head:.3f})" if r.student_unshifted_head is not None else ""
            ),
            r.student_valid_ndcg,
            r.student_test_ndcg,
            f"{r.student_test_head:.3f}",
            "yes" if r.cap_met else "NO",
        ]
        for r in rows
    ]
    print(table(headers, body))


def check(
    rows: list[DefaultRow], als10: dict[str, tuple[float, float]], default_teacher: str
) -> tuple[list[str], list[str]]:
    """(misses, notes). als10: dataset -> (test NDCG@20, test head share) of tuned implicit ALS-10."""
    misses: list[str] = []
    notes: list[str] = []

    def verdict(ok: bool, text: str) -> None:
        (notes if ok else misses).append(text)

    for r in rows:
        tag = f"{r.dataset} {r.teacher} teacher"
        verdict(
            r.student_test_head < r.teacher_test_head,
            f"D1 {tag}: UnKD test head share {r.student_test_head:.3f} < teacher's "
            f"{r.teacher_test_head:.3f}",
        )
        if r.teacher in (*D2_TEACHERS, default_teacher) and r.dataset in als10:
            ndcg, head = als10[r.dataset]
            verdict(
                r.student_test_ndcg >= 0.95 * ndcg and r.student_test_head < head,
                f"D2 {tag}: UnKD {r.student_test_ndcg:.4f} = {r.student_test_ndcg / ndcg:.3f} x "
                f"ALS-10 {ndcg:.4f} (>= 0.95), head {r.student_test_head:.3f} < ALS-10's {head:.3f}",
            )
        verdict(
            r.student_seconds <= 2 * r.plain_seconds,
            f"D3 {tag}: UnKD job {r.student_seconds:.0f} s <= 2 x plain {r.plain_seconds:.0f} s",
        )
        if r.dataset == "ml-100k" and r.teacher == default_teacher:
            verdict(
                max(r.teacher_seconds, r.student_seconds) < SMALL_DATA_S,
                f"D4 {tag}: teacher {r.teacher_seconds:.0f} s and UnKD student "
                f"{r.student_seconds:.0f} s (each < {SMALL_DATA_S:.0f} s)",
            )
    return misses, notes


def main() -> int:
    from bench.quality import load

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--datasets", default="ml-100k,amazon-beauty,synthetic")
    ap.add_argument("--teachers", default=",".join(TEACHERS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--teacher-dir", type=Path, help="keep (and reuse) the teachers here")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from training.device import resolve_device

    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device("auto")
    print(f"environment: {environment()}")
    rows: list[DefaultRow] = []
    with tempfile.TemporaryDirectory(prefix="unkd-defaults-") as tmp:
        for name in a.datasets.split(","):
            ds = load(name)
            rows += run_dataset(
                name, ds, Path(tmp) / name, device, tuple(a.teachers.split(",")), a.teacher_dir
            )
    print_table(rows)
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
