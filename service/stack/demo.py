"""`unkd demo`: the whole story against a real local stack, through the REST API only.

Synthetic long-tail data -> teacher -> unkd, rd and none students (progress bars from the
job status) -> publish the UnKD student -> recommendations for three users -> the quality
table that shows what UnKD changes -> the comparison page (HTML) -> stop the stack.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from service.core.config import Settings
from service.reports.cli import write_api_comparison
from service.stack.local import LocalStack
from service.stack.redis_server import free_port

# The teacher and the students at the product's defaults: the teacher job names no model
# (EASE, the best teacher of bench/quality.py on every shared data set; ALS on catalogues too
# large for it), the students only their size.
TEACHER: dict[str, Any] = {}
STUDENT = {"dim": 10}
METHODS = ("unkd", "rd", "none")
JOB_TIMEOUT_S = 600
K = 20
FINISHED = ("succeeded", "failed", "cancelled")


class DemoError(RuntimeError):
    pass


def _check(r: httpx.Response, expected: int) -> dict[str, Any]:
    if r.status_code != expected:
        raise DemoError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text}")
    body: dict[str, Any] = r.json()
    return body


def watch_jobs(
    http: httpx.Client, jobs: dict[str, str], stack: LocalStack
) -> dict[str, dict[str, Any]]:
    """Poll GET /v1/jobs/{id} for each job (label -> id) with one tqdm bar each."""
    bars = {
        label: tqdm(
            total=None,
            desc=f"{label:>14}",
            unit="epoch",
            position=i,
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        for i, label in enumerate(jobs)
    }
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(final) < len(jobs):
        if time.monotonic() > deadline:
            raise DemoError(f"jobs still running after {JOB_TIMEOUT_S}s: {set(jobs) - set(final)}")
        failed_child = stack.failed_child()
        if failed_child:
            raise DemoError(f"{failed_child}; see {stack.log_dir}")
        for label, job_id in jobs.items():
            if label in final:
                continue
            status = _check(http.get(f"/v1/jobs/{job_id}"), 200)
            bar, progress = bars[label], status["progress"]
            if progress["epochs"]:
                bar.total = progress["epochs"]
                bar.n = progress["epoch"]
            metrics = status["metrics"]
            post = {"status": status["status"], "stage": progress["stage"]}
            if "loss" in metrics:
                post["loss"] = f"{metrics['loss']:.4f}"
            if f"valid_ndcg@{K}" in metrics:
                post[f"ndcg@{K}"] = f"{metrics[f'valid_ndcg@{K}']:.4f}"
            bar.set_postfix(post, refresh=False)
            bar.refresh()
            if status["status"] in FINISHED:
                final[label] = status
                if progress["epoch"]:  # early stopping: the bar ends where training ended
                    bar.total = bar.n = progress["epoch"]
                    bar.refresh()
        time.sleep(0.3)
    for bar in bars.values():
        bar.close()
    failed = {label: s["error"] for label, s in final.items() if s["status"] != "succeeded"}
    if failed:
        raise DemoError(f"jobs did not succeed: {failed}")
    return final


def quality_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per model: headline @K figures and per-group recall@K from its report."""
    n_groups = max(len(report.get("groups", [])) for _, report in rows)
    cols = [f"recall@{K}", f"ndcg@{K}", f"head_share@{K}", f"arp@{K}"]
    header = ["model", *cols, *(f"recall@{K} g{g}" for g in range(n_groups))]
    lines = []
    for label, report in rows:
        m = report.get("metrics", {})
        cells = [label, *(m.get(c) for c in cols)]
        cells += [g.get(f"recall@{K}") for g in report.get("groups", [])]
        lines.append(cells)

    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4f}"
        return "-" if x is None else str(x)

    table = [header, *[[fmt(c) for c in row] for row in lines]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    out = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _story(http: httpx.Client, stack: LocalStack, report_path: Path) -> None:
    t0 = time.monotonic()
    print("\n[1/5] registering the built-in synthetic long-tail dataset", flush=True)
    ds = _check(http.post("/v1/datasets", json={"synthetic": {}, "name": "demo-synthetic"}), 201)
    stats = ds["statistics"]
    heads = ", ".join(f"g{g['group']}: {g['items']} items" for g in stats["popularity_groups"])
    print(
        f"      {ds['id']}: {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions; popularity groups {heads}"
    )

    job = _check(
        http.post("/v1/jobs", json={"kind": "teacher", "dataset_id": ds["id"], **TEACHER}), 202
    )
    teacher_model = _check(http.get(f"/v1/jobs/{job['id']}"), 200)["params"]["config"]["model"]
    print(f"\n[2/5] training the default teacher ({teacher_model.upper()})", flush=True)
    teacher = watch_jobs(http, {"teacher": job["id"]}, stack)["teacher"]
    teacher_id = teacher["model_id"]

    print(
        f"\n[3/5] distilling dim-{STUDENT['dim']} students: {', '.join(METHODS)} "
        "(the UnKD one is published when it succeeds)",
        flush=True,
    )
    jobs = {}
    for method in METHODS:
        body = {
            "kind": "distill",
            "teacher_id": teacher_id,
            "method": method,
            **STUDENT,
            "publish": method == "unkd",
        }
        jobs[f"student {method}"] = _check(http.post("/v1/jobs", json=body), 202)["id"]
    students = watch_jobs(http, jobs, stack)
    unkd_id = students["student unkd"]["model_id"]

    print(f"\n[4/5] recommendations from the published UnKD student {unkd_id}", flush=True)
    deadline = time.monotonic() + 60
    while _check(http.get("/v1/serving"), 200).get("model_id") != unkd_id:
        if time.monotonic() > deadline:
            raise DemoError(f"{unkd_id} was published but the API did not load it in 60s")
        time.sleep(0.2)
    for user in ("0", "1", "2"):
        rec = _check(http.get(f"/v1/recommendations/{user}", params={"k": 10}), 200)
        items = " ".join(f"{it['item_id']}(g{it['group']})" for it in rec["items"])
        print(f"      user {user}: {items}")

    print(
        f"\n[5/5] quality on the test split (K={K}; g0 = head ... g3 = tail; "
        "arp = mean popularity of recommended items)\n",
        flush=True,
    )
    teacher_report = _check(http.get(f"/v1/models/{teacher_id}/report"), 200)
    rows = [(f"teacher ({teacher_model})", teacher_report)]
    for label, status in students.items():
        report = _check(http.get(f"/v1/models/{status['model_id']}/report"), 200)
        rows.append((f"{label} (dim {STUDENT['dim']})", report))
    print(quality_table(rows))
    ids = [teacher_id, *(status["model_id"] for status in students.values())]
    print(f"\ncomparison page: {write_api_comparison(http, ids, report_path)}")
    print(f"\ndone in {time.monotonic() - t0:.0f}s; the published model is {unkd_id}")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_demo(settings: Settings, *, data_dir: str | None, port: int, keep: bool) -> int:
    """Start the stack, tell the story, stop the stack; 0 on success."""
    root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="unkd-demo-"))
    stack = LocalStack(settings, port=port or free_port(), data_dir=root, log_dir=root / "logs")
    # The page outlives a temporary data directory, which is removed at the end.
    report_path = (
        root / "compare.html"
        if data_dir or keep
        else Path(tempfile.gettempdir()) / f"{root.name}-compare.html"
    )
    admin = next((k.key for k in settings.keys if k.role == "admin"), None)  # the demo publishes
    if settings.keys and admin is None:
        print(
            "error: the demo publishes a model: UNKD_API_KEYS needs a key with role admin",
            file=sys.stderr,
        )
        return 2
    headers = {"Authorization": f"Bearer {admin}"} if admin else {}
    print(f"starting the local stack in {root} (logs in {root / 'logs'}) ...", flush=True)
    code = 1
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        print(f"API at {stack.api_url}/docs", flush=True)
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60.0) as http:
            _story(http, stack, report_path)
        code = 0
    except (DemoError, RuntimeError, httpx.HTTPError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    finally:
        print("stopping the stack ...", flush=True)
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
        if data_dir is None and not keep:
            shutil.rmtree(root, ignore_errors=True)
        elif data_dir is None:
            print(f"kept {root}")
    return code
