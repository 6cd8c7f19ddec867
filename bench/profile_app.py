"""Where the serving app's CPU goes, without HTTP: create_app driven in process over ASGI.

A profiling aid, not a benchmark (no targets): bench/serve.py measures what users run. This
publishes the same synthetic student as bench/serve.py (100,000 items, dim 10), builds the
same app (create_app over a static IndexStore, exposure counting off, a third of the users
holding recent items), and sends each route's requests from C concurrent clients straight
into the ASGI app: no sockets, no uvicorn, no wrk. Per route and round it prints the
process's CPU per request and the search thread's part of it (a search thread that idled out
and restarted during a run is undercounted); `--profile ROUTE` adds a cProfile of the event-loop thread for
that route (the search thread runs unprofiled). In a profile, a C function that releases the
GIL while the search thread wants it shows as wall time it did not spend computing (docs/
service.md, "Waiting on the GIL": os.urandom and numpy's unique were found so).

    taskset -c 1 python bench/profile_app.py [--concurrency 16] [--routes plain,filtered]
        [--profile filtered]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve import (  # noqa: E402
    N_WRK_USERS,
    full_app,
    proc_cpu_s,
    publish_student,
    route_specs,
    synthetic_dataset,
)

# --routes names -> bench/serve.py's step-4 routes
ROUTES = {
    "plain": "plain GET",
    "filtered": "filtered GET",
    "history": "by-history",
    "similar": "similar items",
    "popular": "fallback popular",
    "debiased": "fallback debiased",
}
DEFAULT_ROUTES = "plain,filtered,history,similar"


def requests_for(route: str, specs: dict[str, Any]) -> list[tuple[str, str, str, bytes]]:
    """(method, path, query string, body) per request: bench/serve.py's requests of `route`."""
    if route not in ROUTES:
        raise SystemExit(f"unknown route {route!r}: one of {', '.join(ROUTES)}")
    method, targets, bodies = specs[ROUTES[route]]
    out = []
    for n, target in enumerate(targets):
        path, _, query = target.partition("?")
        out.append((method, path, query, b"" if bodies is None else bodies[n].encode()))
    return out


async def call(app: Any, method: str, path: str, query: str, body: bytes) -> None:
    """One request through the ASGI app; SystemExit unless it answers 200."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise SystemExit(f"{method} {path}?{query} answered {status}")


async def load(app: Any, reqs: list[tuple[str, str, str, bytes]], n: int, concurrency: int) -> None:
    todo = iter(reqs[i % len(reqs)] for i in range(n))

    async def client() -> None:
        for req in todo:
            await call(app, *req)

    await asyncio.gather(*(client() for _ in range(concurrency)))


def search_thread_cpu_s() -> float:
    """CPU seconds of this process's live coalescer search threads (from /proc)."""
    import threading

    tids = [t.native_id for t in threading.enumerate() if t.name == "coalescer-search"]
    cpu = (proc_cpu_s(Path(f"/proc/self/task/{tid}/stat")) for tid in tids if tid)
    return sum(c for c in cpu if c is not None)


async def run(
    args: argparse.Namespace, app: Any, per_route: dict[str, list[tuple[str, str, str, bytes]]]
) -> None:
    for reqs in per_route.values():  # warm: first-use tables, the gc freeze after 2,000 answers
        await load(app, reqs, 1000, args.concurrency)
    for rnd in range(args.rounds):
        for route, reqs in per_route.items():
            profile = cProfile.Profile() if route == args.profile and rnd == 0 else None
            cpu, wall, search = time.process_time(), time.perf_counter(), search_thread_cpu_s()
            if profile is not None:
                profile.enable()
            await load(app, reqs, args.requests, args.concurrency)
            if profile is not None:
                profile.disable()
            cpu_ms = 1e3 * (time.process_time() - cpu) / args.requests
            wall_ms = 1e3 * (time.perf_counter() - wall) / args.requests
            search_ms = 1e3 * (search_thread_cpu_s() - search) / args.requests
            print(
                f"round {rnd} {route:9s} CPU {cpu_ms:.3f} ms/request (search thread "
                f"{search_ms:.3f}), wall {wall_ms:.3f}",
                "(profiled)" if profile is not None else "",
                flush=True,
            )
            if profile is not None:
                pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument(
        "--routes", default=DEFAULT_ROUTES, help="comma-separated: " + ", ".join(ROUTES)
    )
    ap.add_argument("--concurrency", type=int, default=16, help="clients in flight")
    ap.add_argument("--requests", type=int, default=3000, help="per route and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", default=None, help="cProfile the event loop for this route")
    ap.add_argument("--top", type=int, default=30, help="functions shown in the profile")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(1)
    os.environ["UNKD_EXPOSURE_COUNTING"] = "0"  # no Redis here
    dataset = synthetic_dataset(args.users, args.items, 20.0, args.seed)
    users = np.random.default_rng(args.seed + 1).integers(0, args.users, N_WRK_USERS)
    with tempfile.TemporaryDirectory(prefix="profile-app-") as tmp:
        bundle_dir, _ = publish_student(dataset, 10, "Flat", Path(tmp), args.seed)
        app = full_app(bundle_dir)
        specs = route_specs(dataset, users, args.seed)
        per_route = {r: requests_for(r, specs) for r in args.routes.split(",")}
        asyncio.run(run(args, app, per_route))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
