"""A new user's journey through the running service, at the product's defaults, per data set:
`unkd up` (Redis, a worker sized as `unkd up` sizes it, the API), upload the data, a teacher
job that names no model, a distill job `{"method": "unkd", "dim": 10}`, and a publish without
`force` through the default gate.

Exits 1 unless every publish passes the gate (and the served model answers).

    python bench/journey.py [--datasets ml-100k,amazon-beauty,synthetic]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, shared_datasets, table  # noqa: E402

FILES = {"ml-100k": "ml-100k/ml-100k.inter", "amazon-beauty": "amazon-beauty/beauty.csv"}
JOB_TIMEOUT_S = 3600


def _ok(r: Any, *codes: int) -> dict[str, Any]:
    if r.status_code not in codes:
        raise RuntimeError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text}")
    body: dict[str, Any] = r.json()
    return body


def _wait(http: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = _ok(http.get(f"/v1/jobs/{job_id}"), 200)
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} still running after {JOB_TIMEOUT_S} s")


def journey(http: Any, name: str) -> dict[str, Any]:
    if name == "synthetic":
        ds = _ok(http.post("/v1/datasets", json={"synthetic": {}, "name": name}), 201)
    else:
        path = shared_datasets() / FILES[name]
        with path.open("rb") as fh:
            ds = _ok(http.post("/v1/datasets", files={"file": (path.name, fh)}), 201)
    teacher = _wait(
        http,
        _ok(http.post("/v1/jobs", json={"kind": "teacher", "dataset_id": ds["id"]}), 202)["id"],
    )
    if teacher["status"] != "succeeded":
        raise RuntimeError(f"{name}: teacher job {teacher['status']}: {teacher['error']}")
    body = {"kind": "distill", "teacher_id": teacher["model_id"], "method": "unkd", "dim": 10}
    student = _wait(http, _ok(http.post("/v1/jobs", json=body), 202)["id"])
    if student["status"] != "succeeded":
        raise RuntimeError(f"{name}: distill job {student['status']}: {student['error']}")
    r = http.post(f"/v1/models/{student['model_id']}/publish", json={})
    published = r.status_code == 202 and _wait(http, r.json()["id"])["status"] == "succeeded"
    answered = False
    if published:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not answered:
            serving = http.get("/v1/serving").json()
            answered = serving.get("model_id") == student["model_id"]
            time.sleep(0.3)
    cap = student.get("head_share_cap") or {}
    teacher_report = _ok(http.get(f"/v1/models/{teacher['model_id']}/report"), 200)["metrics"]
    student_report = _ok(http.get(f"/v1/models/{student['model_id']}/report"), 200)["metrics"]
    return {
        "dataset": name,
        "teacher": teacher["params"]["config"]["model"],
        "teacher_s": teacher["timings"]["elapsed_s"],
        "student_s": student["timings"]["elapsed_s"],
        "cap_met": student.get("cap_met"),
        "head": cap.get("student"),
        "teacher_head": cap.get("teacher"),
        "test_head": student_report["head_share@20"],
        "teacher_test_head": teacher_report["head_share@20"],
        "test_ndcg": student_report["ndcg@20"],
        "publish": r.status_code if not published else "published",
        "detail": "" if published else r.text[:200],
        "served": answered,
    }


def main() -> int:
    import httpx

    from service.core.config import Settings
    from service.stack.local import LocalStack
    from service.stack.redis_server import free_port

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--datasets", default="ml-100k,amazon-beauty,synthetic")
    a = ap.parse_args()
    print(f"environment: {environment()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="unkd-journey-") as tmp:
        for name in a.datasets.split(","):
            root = Path(tmp) / name
            stack = LocalStack(Settings(), port=free_port(), data_dir=root, log_dir=root / "logs")
            stack.start()
            try:
                with httpx.Client(base_url=stack.api_url, timeout=120.0) as http:
                    rows.append(journey(http, name))
                    print(f"  {rows[-1]}", flush=True)
            finally:
                stack.stop()
    print(
        table(
            [
                "data",
                "teacher (default)",
                "teacher job s",
                "distill job s",
                "cap met",
                "head share: student / teacher (every user)",
                "test head: student / teacher",
                "test NDCG@20",
                "publish (default gate)",
            ],
            [
                [
                    r["dataset"],
                    r["teacher"],
                    f"{r['teacher_s']:.0f}",
                    f"{r['student_s']:.0f}",
                    r["cap_met"],
                    f"{r['head']:.3f} / {r['teacher_head']:.3f}",
                    f"{r['test_head']:.3f} / {r['teacher_test_head']:.3f}",
                    r["test_ndcg"],
                    r["publish"] if r["served"] else f"{r['publish']} {r['detail']}",
                ]
                for r in rows
            ],
        )
    )
    refused = [r["dataset"] for r in rows if not r["served"]]
    print("every publish passed the gate" if not refused else f"REFUSED: {refused}")
    return 1 if refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
