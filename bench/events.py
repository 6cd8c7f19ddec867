"""Events: how many POST /v1/events one API process accepts, and how soon they show.

Runs the real API (uvicorn, create_app from UNKD_* settings, as `unkd api` does) pinned to
one core (taskset), against the stack's redis-server (append-only, `appendfsync always`), with a
synthetic student published so that answers can be asked for. The client threads and Redis
run on the other core.

  1. intake: C client threads send batches of --batch (500) events with unique event ids for
     --duration seconds; events acknowledged (202) per second of wall time, and per second of
     the API process's CPU time (the one-core figure), with the request p50/p99. Run once
     against `appendfsync always` (the stack's setting) and once against `everysec`: the
     difference is what fsync-before-reply costs.
  2. freshness: for --delay-users known users, ask for their top-k, POST a purchase of their
     first item, and from the 202 poll GET /v1/recommendations/{user} until the item is gone:
     the delay's p50/p99/max (its resolution is one GET, about a millisecond).

Targets (issue 18): at least 20,000 events/s per core of the API process (always), and a
delay under 100 ms at p99. Prints tables, writes --json, exits 1 on a miss.

    python bench/events.py [--duration 10] [--threads 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import table  # noqa: E402
from bench.serve import publish_student, synthetic_dataset  # noqa: E402

TARGET_EVENTS_PER_CORE_S = 20_000
TARGET_DELAY_P99_MS = 100.0
K = 20


class Api:
    """The API under taskset on one core, configured by UNKD_* variables; CPU time from /proc."""

    def __init__(self, settings: Any, port: int, core: int, log: Path) -> None:
        from service.core.config import settings_env
        from service.stack.local import api_argv

        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        argv = ["taskset", "-c", str(core), *api_argv("127.0.0.1", port)]
        env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = port

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the API exited with {self.proc.returncode}; see {self.log.name}")
            try:
                status, _ = request(self.connect(), "GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the API was not ready after {timeout_s}s; see {self.log.name}")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


def batch_body(thread: int, seq: int, size: int, n_users: int, n_items: int) -> bytes:
    """One batch: unique event ids, known users, items spread over the catalogue."""
    rng = np.random.default_rng(thread * 1_000_003 + seq)
    users, items = rng.integers(0, n_users, size), rng.integers(0, n_items, size)
    types = ("view", "click", "view", "purchase")
    events = [
        {
            "user_id": f"u{u}",
            "item_id": f"item-{i}",
            "type": types[j % 4],
            "event_id": f"t{thread}-b{seq}-{j}",
        }
        for j, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True))
    ]
    return json.dumps({"events": events}).encode()


def intake(
    api: Api, threads: int, duration: float, size: int, n_users: int, n_items: int, tag: str
) -> dict[str, Any]:
    """Events acknowledged per wall second and per API CPU second, with request latencies."""
    stop = threading.Event()
    acked = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def run(t: int) -> None:
        conn = api.connect()
        seq = 0
        bodies = [batch_body(t, s, size, n_users, n_items) for s in range(4)]
        while not stop.is_set():
            body = bodies[seq % 4].replace(b'"event_id": "t', f'"event_id": "{tag}{seq}-t'.encode())
            t0 = time.perf_counter()
            status, text = request(conn, "POST", "/v1/events", body)
            latencies[t].append(time.perf_counter() - t0)
            if status != 202:
                errors.append(f"{status} {text[:200]!r}")
                return
            acked[t] += size
            seq += 1
        conn.close()

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    cpu0, t0 = api.cpu_s(), time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(duration)
    stop.set()
    for w in workers:
        w.join(60)
    wall, cpu = time.perf_counter() - t0, api.cpu_s() - cpu0
    if errors:
        raise SystemExit(f"intake refused: {errors[0]}")
    lat = np.array([x for per in latencies for x in per]) * 1000
    total = sum(acked)
    return {
        "events": total,
        "events_per_s": total / wall,
        "events_per_cpu_s": total / max(cpu, 1e-9),
        "api_cpu_share": cpu / wall,
        "batch_p50_ms": float(np.percentile(lat, 50)),
        "batch_p99_ms": float(np.percentile(lat, 99)),
    }


def freshness(api: Api, n: int, seed: int) -> dict[str, Any]:
    """Delay from a purchase's 202 to the first answer without the item, over n users."""
    conn = api.connect()
    rng = np.random.default_rng(seed)
    delays, polls = [], []
    for j, u in enumerate(rng.choice(2000, size=n, replace=False).tolist()):
        status, text = request(conn, "GET", f"/v1/recommendations/u{u}?k={K}")
        if status != 200:
            raise SystemExit(f"GET u{u}: {status} {text[:200]!r}")
        item = json.loads(text)["items"][0]["item_id"]
        event = {"user_id": f"u{u}", "item_id": item, "type": "purchase", "event_id": f"d{j}"}
        status, text = request(conn, "POST", "/v1/events", json.dumps({"events": [event]}).encode())
        if status != 202:
            raise SystemExit(f"POST: {status} {text[:200]!r}")
        acked = time.perf_counter()
        count = 0
        while True:
            count += 1
            _, text = request(conn, "GET", f"/v1/recommendations/u{u}?k={K}")
            if item not in {it["item_id"] for it in json.loads(text)["items"]}:
                break
            if time.perf_counter() - acked > 5:
                raise SystemExit(f"u{u}: {item} still recommended 5 s after its purchase")
        delays.append((time.perf_counter() - acked) * 1000)
        polls.append(count)
    conn.close()
    d = np.array(delays)
    return {
        "users": n,
        "delay_p50_ms": float(np.percentile(d, 50)),
        "delay_p99_ms": float(np.percentile(d, 99)),
        "delay_max_ms": float(d.max()),
        "gets_per_wait_mean": float(np.mean(polls)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=4, help="client threads sending batches")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per intake run")
    ap.add_argument("--delay-users", type=int, default=300)
    ap.add_argument("--server-core", type=int, default=1)
    ap.add_argument("--client-core", type=int, default=0)
    ap.add_argument("--port", type=int, default=18_791)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from service.core.config import Settings
    from service.core.registry import ActiveModel, Registry
    from service.stack.redis_server import RedisServer

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-events-"))
    work.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {args.client_core})
    dataset = synthetic_dataset(args.users, args.items, 20.0, args.seed)
    bundle_dir, _ = publish_student(dataset, 10, "Flat", work, args.seed)
    results: dict[str, Any] = {"batch": args.batch, "threads": args.threads}
    for fsync in ("always", "everysec"):
        server = RedisServer(work / f"redis-{fsync}", appendfsync=fsync).start()  # type: ignore[arg-type]
        if server.pid is not None:
            os.sched_setaffinity(server.pid, {args.client_core})
        settings = Settings(redis_url=server.url, data_dir=work / "data", log_level="WARNING")
        registry = Registry.from_url(server.url)
        registry.set_active(ActiveModel(model_id="synthetic-d10", bundle_dir=str(bundle_dir)))
        registry.close()
        api = Api(settings, args.port, args.server_core, work / f"api-{fsync}.log")
        try:
            api.wait_ready()
            intake(api, args.threads, min(2.0, args.duration), args.batch, 2000, 5000, "warm")
            results[f"intake_{fsync}"] = intake(
                api, args.threads, args.duration, args.batch, args.users, args.items, "run"
            )
            if fsync == "always":
                results["freshness"] = freshness(api, args.delay_users, args.seed)
        finally:
            api.stop()
            server.stop()
    always, every, fresh = (
        results["intake_always"],
        results["intake_everysec"],
        results["freshness"],
    )
    results["fsync_always_cost"] = 1 - always["events_per_s"] / every["events_per_s"]
    print(
        f"\nPOST /v1/events, batches of {args.batch}, {args.threads} client threads, API on 1 core"
    )
    rows = [
        [
            f"appendfsync {name}",
            r["events_per_s"],
            r["events_per_cpu_s"],
            r["api_cpu_share"],
            r["batch_p50_ms"],
            r["batch_p99_ms"],
        ]
        for name, r in (("always", always), ("everysec", every))
    ]
    print(
        table(["redis", "events/s", "events/API-CPU-s", "API CPU share", "p50 ms", "p99 ms"], rows)
    )
    print(f"fsync-before-reply costs {results['fsync_always_cost']:.1%} of the everysec rate")
    print(f"\nPurchase -> next answer without the item ({fresh['users']} users)")
    print(
        table(
            ["p50 ms", "p99 ms", "max ms", "GETs per wait"],
            [
                [
                    fresh["delay_p50_ms"],
                    fresh["delay_p99_ms"],
                    fresh["delay_max_ms"],
                    fresh["gets_per_wait_mean"],
                ]
            ],
        )
    )
    misses = []
    per_core = always["events_per_cpu_s"]
    if per_core < TARGET_EVENTS_PER_CORE_S:
        misses.append(f"{per_core:.0f} events per API CPU-second < {TARGET_EVENTS_PER_CORE_S}")
    if fresh["delay_p99_ms"] >= TARGET_DELAY_P99_MS:
        misses.append(f"freshness p99 {fresh['delay_p99_ms']:.1f} ms >= {TARGET_DELAY_P99_MS}")
    results["misses"] = misses
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    for m in misses:
        print(f"MISSED: {m}", file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
