"""Serving latency: publish a synthetic student, then measure search, HTTP floor and endpoint.

For each embedding size (default dim 10, the student; `--dim 10 100` adds the teacher-sized
index beside it) over a synthetic catalogue (default 100,000 items):
  1. t_search: median in-process faiss search per query (k + the user's seen count),
     pinned to the server core;
  2. the HTTP floor: a bare ASGI app on the same server stack returning a fixed 20-item
     JSON body: requests/s and server CPU time per request (t_floor) at 16 connections;
  3. the endpoint GET /v1/recommendations/{user}?k=20&exclude_seen=true for random known
     users: requests/s and p50/p99 at 16 connections, and p50/p99 at 4 connections.
  4. the routes of issue 10 on the app users run (create_app, its middleware included, over a
     static IndexStore): the plain GET again, a filtered GET, POST by-history, similar items
     and the popular / debiased fallbacks for unknown users, each at 16 connections: server
     CPU time per request (as for the floor: the server's CPU over wrk's request count),
     requests/s, p50/p99, and the ratio to the plain GET on that app, in --rounds rounds
     that alternate the routes (medians; the ratio is the median of the rounds' ratios).
  5. the yardstick (issue 18): the app a user would otherwise write (bench/serve_baseline.py:
     a FastAPI `def` route calling index.search per request in the threadpool, faiss on one
     thread, the same seen-item and fresh-item filter) on the same core with the plain GET's
     wrk script, in alternated rounds; and, in the same create_app process, wrk's users that
     hold recent items against those that hold none (the fresh filter's cost). In every
     create_app run a third of the users hold 3 recent items (the fresh filter on).
  6. create_app as 1 and 2 API processes (`unkd api --workers 2`, then with the bundle
     mapped), nothing pinned, all three up at once and alternated in --rounds rounds.
wrk runs pinned to one core and the server to another (taskset). Targets: create_app's plain
GET (fresh filter on) at >= 1.5 x the baseline's requests/s at 16 connections, with p99 < 3 x
p50, and the fresh filter under 10 % of its CPU per request; the endpoint's p99 at 4
connections under 5 ms; each route of step 4 costs <= 1.5 x the plain GET's CPU time per
request; 2 API processes at >= 1.3 x the requests/s of 1. The share of the batching ceiling
1 / (t_floor + t_search) is printed for information (issue 18 retired its 80 % target).
Prints tables, writes --json, exits 1 on a miss (2 when wrk is missing).

    python bench/serve.py [--items 1000000] [--dim 10 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import table  # noqa: E402
from bench.serve_baseline import baseline_app, bench_fresh, fresh_enabled  # noqa: E402

K = 20
# Issue 18 retired "80 % of the batching ceiling 1 / (t_floor + a query's share of a batch of
# 16)" (still printed, for information); the yardstick is the app a user would otherwise write:
TARGET_BASELINE_SPEEDUP = 1.5  # create_app's plain GET req/s over bench/serve_baseline.py's at 16
TARGET_FRESH_SHARE = 0.10  # the fresh-seen filter: under this share of the plain GET's CPU
ROUNDS = 3  # alternated rounds of what a ratio compares (steps 4, 5 and 6)
TARGET_P99_MS = 5.0
TARGET_TAIL_RATIO = 3.0  # p99 / p50 at 16 connections, endpoint and create_app's plain GET
TARGET_COUNTING_SHARE = 0.05  # live exposure counting: at most this share of the plain GET's CPU
TARGET_SCALING = 1.3  # req/s of 2 API processes over 1 on the 2 cores (wrk takes its share)
N_WRK_USERS = 2000  # distinct random users the load generator cycles through
TARGET_ROUTE_RATIO = 1.5  # each issue-10 route: server CPU ms/request <= this x the plain GET's
HISTORY_LEN = 20  # items per by-history body (a user's training items, at most this many)


# -- synthetic student --------------------------------------------------------------------


def synthetic_dataset(n_users: int, n_items: int, seen_mean: float, seed: int):  # type: ignore[no-untyped-def]
    """Users with Poisson(seen_mean)+1 training items drawn from a long-tailed popularity."""
    from training.dataset import Dataset

    rng = np.random.default_rng(seed)
    counts = rng.poisson(seen_mean, n_users) + 1
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=int(counts.sum()), p=pop / pop.sum())
    pairs = np.unique(np.stack([np.repeat(np.arange(n_users), counts), items], axis=1), axis=0)
    test = np.stack(
        [np.arange(min(n_users, 100)), rng.integers(0, n_items, min(n_users, 100))], axis=1
    )
    return Dataset(
        name=f"bench-{n_items}",
        user_ids=np.char.add("u", np.arange(n_users).astype(str)),
        item_ids=np.char.add("item-", np.arange(n_items).astype(str)),
        train=pairs,
        valid=np.zeros((0, 2), np.int64),
        test=test,
    )


def publish_student(dataset, dim: int, factory: str, root: Path, seed: int) -> tuple[Path, float]:  # type: ignore[no-untyped-def]
    """Random embeddings saved as a model directory, then build_bundle. Returns (dir, seconds)."""
    from service.core.bundle_format import build_bundle
    from training.checkpoint import ModelArtifact
    from training.manifest import DatasetInfo, ModelManifest

    rng = np.random.default_rng(seed + dim)
    model_dir = ModelArtifact(
        user_emb=(rng.standard_normal((dataset.n_users, dim)) / np.sqrt(dim)).astype(np.float32),
        item_emb=(rng.standard_normal((dataset.n_items, dim)) / np.sqrt(dim)).astype(np.float32),
        manifest=ModelManifest(
            kind="student",
            model="mf",
            dim=dim,
            dataset=DatasetInfo(fingerprint=dataset.fingerprint),
        ),
    ).save(root / f"model-d{dim}")
    t0 = time.perf_counter()
    out = root / f"bundle-d{dim}"
    build_bundle(model_dir, dataset, out, model_id=f"synthetic-d{dim}", index_factory=factory)
    return out, time.perf_counter() - t0


def time_search(bundle_dir: Path, core: int, n: int, seed: int) -> dict[str, float]:
    """Median ms per single-user query: raw faiss search, and recommend() with filtering;
    and per query in a batch of 16, as coalesced requests are searched under load."""
    import faiss

    from service.serving.bundle import load_bundle
    from service.serving.search_path import use_fastest_path

    faiss.omp_set_num_threads(1)
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        b = load_bundle(bundle_dir)
        use_fastest_path(b.index, b.user_emb[:8])  # as IndexStore does in the server
        users = np.random.default_rng(seed).integers(0, b.n_users, n)
        seen = np.diff(b.seen_indptr)
        raw, rec = [], []
        for u in users:
            q = b.user_emb[u : u + 1]
            t0 = time.perf_counter()
            b.index.search(q, min(b.n_items, K + int(seen[u])))
            t1 = time.perf_counter()
            b.recommend(np.array([u]), K, exclude_seen=True)
            t2 = time.perf_counter()
            raw.append(t1 - t0)
            rec.append(t2 - t1)
        batched = []
        for chunk in users[: 16 * (len(users) // 16)].reshape(-1, 16)[:50]:
            t0 = time.perf_counter()
            b.index.search(b.user_emb[chunk], min(b.n_items, K + int(seen[chunk].max())))
            batched.append((time.perf_counter() - t0) / 16)
    finally:
        os.sched_setaffinity(0, previous)
    return {
        "t_search_ms": 1e3 * float(np.median(raw)),
        "t_recommend_ms": 1e3 * float(np.median(rec)),
        "t_search_batch16_ms": 1e3 * float(np.median(batched)),
    }


# -- servers (run in a child process pinned to the server core) -----------------------------


def floor_app(body: bytes):  # type: ignore[no-untyped-def]
    """A bare ASGI app answering every request with the same JSON body."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def endpoint_app(bundle_dir: Path):  # type: ignore[no-untyped-def]
    """The recommendations router over a static IndexStore (no Redis needed)."""
    from fastapi import FastAPI

    from service.api.errors import install_error_handlers
    from service.core.config import Settings
    from service.serving.index_store import IndexStore
    from service.serving.routes import router

    settings = Settings(data_dir=bundle_dir.parent)
    app = FastAPI()
    install_error_handlers(app)  # the serving routes raise domain errors the app maps
    app.include_router(router)
    app.state.settings = settings
    app.state.index_store = IndexStore(settings, None)
    meta = json.loads((bundle_dir / "meta.json").read_text())
    bundle = app.state.index_store.load_now(
        {"model_id": meta["model_id"], "bundle_dir": str(bundle_dir)}
    )

    @app.get("/bench/coalescing", include_in_schema=False)
    def coalescing() -> dict[str, int]:
        return {"batches": bundle._coalescer.batches, "requests": bundle._coalescer.requests}

    return app


def full_app(bundle_dir: Path):  # type: ignore[no-untyped-def]
    """create_app (every router, its middleware) over a static IndexStore; lifespan off, so
    no registry polling: the app users run, minus that. Live exposure is counted and flushed
    to the bench's Redis ($BENCH_REDIS_URL) as in the API, unless UNKD_EXPOSURE_COUNTING=0."""
    import redis

    from service.api.app import create_app
    from service.core.config import Settings
    from service.serving.exposure.counter import ExposureCounter
    from service.serving.index_store import IndexStore

    settings = Settings(data_dir=bundle_dir.parent)
    app = create_app(settings)
    counter = None
    if settings.exposure_counting and os.environ.get("BENCH_REDIS_URL"):
        counter = ExposureCounter(
            redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]), settings.exposure_flush_s
        )
        counter.start()
    app.state.index_store = IndexStore(settings, None, exposure=counter)
    meta = json.loads((bundle_dir / "meta.json").read_text())
    loaded = app.state.index_store.load_now(
        {"model_id": meta["model_id"], "bundle_dir": str(bundle_dir), "published_at": "bench"}
    )
    # the recent-items map the feed fills in the API (lifespan is off here): a third of the
    # users hold recent items unless BENCH_FRESH=0 (bench/serve_baseline.py)
    app.state.fresh = bench_fresh(loaded.n_users, loaded.n_items, fresh_enabled())

    @app.get("/bench/search-threads", include_in_schema=False)
    def search_threads() -> list[int]:  # Linux thread ids: the bench reads their CPU time
        import threading

        return [t.native_id or 0 for t in threading.enumerate() if t.name == "coalescer-search"]

    @app.get("/bench/flush-threads", include_in_schema=False)
    def flush_threads() -> list[int]:
        import threading

        return [t.native_id or 0 for t in threading.enumerate() if t.name == "exposure-flush"]

    return app


def fixed_body() -> bytes:
    items = [{"item_id": f"item-{i}", "group": i % 4, "score": 1.0 / (i + 1.37)} for i in range(K)]
    return json.dumps({"user_id": "u123", "model_id": "synthetic-d10", "items": items}).encode()


def app_from_env():  # type: ignore[no-untyped-def]
    """full_app over $BENCH_BUNDLE: the factory each uvicorn worker process calls."""
    return full_app(Path(os.environ["BENCH_BUNDLE"]))


def serve(kind: str, bundle_dir: str | None, port: int, workers: int = 1) -> None:
    import faiss
    import uvicorn

    faiss.omp_set_num_threads(1)
    if workers > 1:  # as `unkd api --workers N`: processes on one socket under uvicorn's supervisor
        os.environ["BENCH_BUNDLE"] = str(bundle_dir)
        uvicorn.run(
            "bench.serve:app_from_env",
            factory=True,
            workers=workers,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        return
    if kind == "floor":
        app = floor_app(fixed_body())
    elif kind == "baseline":
        app = baseline_app(Path(str(bundle_dir)))
    elif kind == "app":
        app = full_app(Path(str(bundle_dir)))
    else:
        app = endpoint_app(Path(str(bundle_dir)))
    # the same server stack for both apps: uvicorn defaults, no access log
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


def proc_cpu_s(stat: Path) -> float | None:
    """User + system CPU seconds from a /proc .../stat file (a process's or a thread's); None
    when it is gone (exited meanwhile)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """`python bench/serve.py --serve ...` under taskset; CPU time read from /proc."""

    def __init__(
        self,
        kind: str,
        bundle_dir: Path | None,
        port: int,
        core: int | None,
        log: Path,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        cmd = [
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        if core is not None:
            cmd = ["taskset", "-c", str(core), *cmd]
        if bundle_dir is not None:
            cmd += ["--bundle", str(bundle_dir)]
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, path: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout_s}s; see {self.log.name}")

    def pids(self) -> list[int]:
        """The server process and its live descendants (uvicorn's worker processes)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += [int(c) for c in task.read_text().split()]
                except OSError:
                    continue
        return out

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the server's process tree."""
        cpu = (proc_cpu_s(Path(f"/proc/{pid}/stat")) for pid in self.pids())
        return sum(c for c in cpu if c is not None)

    def memory_mb(self) -> list[dict[str, float]]:
        """RSS and PSS (shared pages split between the processes that map them) per process."""
        out = []
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            kb = {
                m.group(1): int(m.group(2))
                for m in re.finditer(r"^(Rss|Pss):\s+(\d+) kB", text, re.M)
            }
            out.append(
                {"pid": pid, "rss_mb": kb.get("Rss", 0) / 1024, "pss_mb": kb.get("Pss", 0) / 1024}
            )
        return out

    def search_cpu_s(self, kind: str = "search") -> dict[int, float]:
        """CPU seconds of each live coalescer search thread (app mode; kind "flush": the
        exposure flusher), by thread id."""
        with urllib.request.urlopen(f"{self.url}/bench/{kind}-threads") as r:
            tids: list[int] = json.loads(r.read())
        cpu = {tid: proc_cpu_s(Path(f"/proc/{self.proc.pid}/task/{tid}/stat")) for tid in tids}
        return {tid: c for tid, c in cpu.items() if c is not None}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- load generator ------------------------------------------------------------------------


def wrk_script(path: Path, user_ids: list[str]) -> Path:
    users = ",".join(f'"{u}"' for u in user_ids)
    path.write_text(
        f"local users = {{{users}}}\n"
        "local n = #users\n"
        "request = function()\n"
        f'  return wrk.format("GET", "/v1/recommendations/" .. users[math.random(n)] .. "?k={K}&exclude_seen=true")\n'
        "end\n"
    )
    return path


def _lua(s: str) -> str:
    return "[==[" + s + "]==]"  # a long bracket: ids and JSON need no escaping


def wrk_requests_script(
    path: Path, method: str, targets: list[str], bodies: list[str] | None = None
) -> Path:
    """wrk cycles randomly through (path, body) pairs: GET paths, or POST JSON bodies."""
    lines = [f"local paths = {{{','.join(_lua(t) for t in targets)}}}"]
    if bodies is not None:
        lines.append(f"local bodies = {{{','.join(_lua(b) for b in bodies)}}}")
    lines += [
        "local n = #paths",
        'local headers = {["Content-Type"] = "application/json"}',
        "request = function()",
        "  local i = math.random(n)",
    ]
    if bodies is None:
        lines.append(f'  return wrk.format("{method}", paths[i])')
    else:
        lines.append(f'  return wrk.format("{method}", paths[i], headers, bodies[i])')
    lines.append("end")
    path.write_text("\n".join(lines) + "\n")
    return path


def route_specs(
    dataset, user_ids: np.ndarray, seed: int
) -> dict[str, tuple[str, list[str], list[str] | None]]:  # type: ignore[no-untyped-def]
    """Per route of step 4: (method, request targets (path?query), POST bodies or None).
    Random known users and items; by-history bodies hold a real user's training items;
    unknown users for the fallbacks. bench/profile_app.py sends the same requests."""
    rng = np.random.default_rng(seed + 2)
    users = [f"u{u}" for u in user_ids]
    items = [f"item-{i}" for i in rng.integers(0, dataset.n_items, N_WRK_USERS)]
    plain = [f"/v1/recommendations/{u}?k={K}&exclude_seen=true" for u in users]
    # two excluded items and the two tail groups (a widened search); as docs/service.md
    filtered = [
        f"{p}&exclude={a}&exclude={b}&groups=2&groups=3"
        for p, a, b in zip(plain, items, items[1:] + items[:1], strict=True)
    ]
    order = np.argsort(dataset.train[:, 0], kind="stable")
    by_user = np.split(
        dataset.train[order, 1],
        np.cumsum(np.bincount(dataset.train[:, 0], minlength=dataset.n_users))[:-1],
    )
    bodies = [
        json.dumps(
            {"items": [f"item-{i}" for i in by_user[u][:HISTORY_LEN]], "k": K, "exclude_seen": True}
        )
        for u in user_ids
    ]
    similar = [f"/v1/items/{i}/similar?k={K}" for i in items]
    new = [f"/v1/recommendations/new-{j}?k={K}" for j in range(N_WRK_USERS)]
    specs: dict[str, tuple[str, list[str], list[str] | None]] = {
        "plain GET": ("GET", plain, None),
        "filtered GET": ("GET", filtered, None),
        "by-history": ("POST", ["/v1/recommendations/by-history"] * len(bodies), bodies),
        "similar items": ("GET", similar, None),
        "fallback popular": ("GET", [f"{p}&fallback=popular" for p in new], None),
        "fallback debiased": ("GET", [f"{p}&fallback=debiased" for p in new], None),
    }
    return specs


def route_scripts(
    work: Path, dataset, user_ids: np.ndarray, seed: int
) -> dict[str, tuple[Path, str, str | None]]:  # type: ignore[no-untyped-def]
    """Per route: (wrk script, one sample path, its POST body or None), from route_specs."""
    out = {}
    for n, (name, (method, targets, body)) in enumerate(
        route_specs(dataset, user_ids, seed).items()
    ):
        script = wrk_requests_script(work / f"route-{n}.lua", method, targets, body)
        out[name] = (script, targets[0], body[0] if body else None)
    return out


def check_route(server: Server, path: str, body: str | None) -> None:
    """One answer per route before its load: 200 and k items."""
    req = urllib.request.Request(
        server.url + path,
        data=None if body is None else body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        got = json.loads(r.read())
    if len(got.get("items", [])) != K:
        raise SystemExit(f"{path} answered without {K} items: {got}")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(
    server: Server, connections: int, seconds: float, core: int | None, script: Path | None
) -> dict[str, float]:
    """One wrk run; requests/s, p50/p99 ms, errors and the server's CPU ms per request.
    `core` None leaves wrk to the scheduler (the multi-process rows)."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    if script is not None:
        cmd += ["-s", str(script)]
    cpu0 = server.cpu_s()
    done = subprocess.run(cmd + [server.url + "/"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stdout} {done.stderr}")
    out = done.stdout
    cpu1 = server.cpu_s()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    pct = {
        p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": pct["50"],
        "p99_ms": pct["99"],
        "requests": requests,
        "errors": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(map(int, sock.groups())) if sock else 0),
        "cpu_ms_per_req": 1e3 * (cpu1 - cpu0) / max(1, requests),
    }


def coalescing(server: Server) -> dict[str, int]:
    with urllib.request.urlopen(f"{server.url}/bench/coalescing") as r:
        counts: dict[str, int] = json.loads(r.read())
    return counts


def check_answer(server: Server, bundle_dir: Path, user: int) -> None:
    """One real answer before the load: 20 unseen items, the documented fields."""
    from service.serving.bundle import load_bundle

    b = load_bundle(bundle_dir)
    with urllib.request.urlopen(
        f"{server.url}/v1/recommendations/u{user}?k={K}&exclude_seen=true"
    ) as r:
        body = json.loads(r.read())
    got = [it["item_id"] for it in body["items"]]
    seen = set(b.item_external(b.seen(user)).tolist())
    if len(got) != K or seen & set(got) or body["model_id"] != b.model_id:
        raise SystemExit(f"endpoint answered wrongly for u{user}: {body}")


def time_tally_add(bundle_dir: Path, n: int = 200_000) -> float:
    """µs the route spends on counting one answer: its two clock reads and Tally.add (one
    deque append), in this process."""
    from collections import deque
    from time import perf_counter

    from service.serving.bundle import load_bundle
    from service.serving.exposure.counter import Tally

    sink: deque[Any] = deque()
    tally = Tally(load_bundle(bundle_dir), "bench", sink)
    items = np.arange(K, dtype=np.int64)
    best = float("inf")
    for _ in range(5):
        sink.clear()
        start = perf_counter()
        for _ in range(n // 5):
            t0 = perf_counter()
            tally.add(items, perf_counter() - t0)
        best = min(best, (perf_counter() - start) / (n // 5))
    return 1e6 * best


RUN_FIELDS = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req")


def medians(runs: list[dict[str, Any]], fields: tuple[str, ...] = RUN_FIELDS) -> dict[str, Any]:
    """Per field, the median over alternated rounds' runs (run_wrk's results)."""
    return {f: float(np.median([r[f] for r in runs])) for f in fields}


def route_costs(
    app_srv: Server,
    scripts: dict[str, tuple[Path, str, str | None]],
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """Step 4: each route of create_app at 16 connections, in --rounds rounds that alternate
    the routes (a route against the plain GET measured minutes apart moves by 10-20 % on a
    shared host), each run --duration / 2 seconds. Per route the medians of the rounds: CPU
    ms per request (and the search and flusher threads' share), req/s, p50/p99; its ratio is
    the median of its per-round ratios to that round's plain GET, and every round's ratio is
    kept ("ratios")."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in scripts}
    try:
        app_srv.wait_ready("/v1/serving")
        for rscript, sample, body in scripts.values():
            check_route(app_srv, sample, body)  # also builds what a route makes on first use
            run_wrk(app_srv, 16, min(1.0, args.duration), args.wrk_core, rscript)
        for _ in range(args.rounds):
            for name, (rscript, _, _) in scripts.items():
                s0, f0 = app_srv.search_cpu_s(), app_srv.search_cpu_s("flush")
                rr = run_wrk(app_srv, 16, args.duration / 2, args.wrk_core, rscript)
                s1, f1 = app_srv.search_cpu_s(), app_srv.search_cpu_s("flush")
                # the search thread's share: it exits after 5 s idle (the fallbacks do not
                # search) and starts again, so a thread new since s0 counts from 0; one that
                # exited meanwhile is left out
                search_s = sum(s1[t] - s0.get(t, 0.0) for t in s1)
                rr["search_cpu_ms_per_req"] = 1e3 * search_s / max(1, rr["requests"])
                rr["flush_cpu_ms_per_req"] = (
                    1e3 * sum(f1[t] - f0.get(t, 0.0) for t in f1) / max(1, rr["requests"])
                )
                runs[name].append(rr)
    finally:
        app_srv.stop()
    out: dict[str, dict[str, Any]] = {}
    base = runs["plain GET"]
    for name, rs in runs.items():
        cost = medians(rs, (*RUN_FIELDS, "search_cpu_ms_per_req", "flush_cpu_ms_per_req"))
        cost["requests"] = sum(int(r["requests"]) for r in rs)
        cost["errors"] = sum(int(r["errors"]) for r in rs)
        ratios = [r["cpu_ms_per_req"] / b["cpu_ms_per_req"] for r, b in zip(rs, base, strict=True)]
        cost["ratios"], cost["ratio"] = ratios, float(np.median(ratios))
        cost["pass"] = cost["errors"] == 0 and (
            name == "plain GET" or cost["ratio"] <= TARGET_ROUTE_RATIO
        )
        out[name] = cost
    return out


def counting_cost(
    bundle_dir: Path,
    args: argparse.Namespace,
    work: Path,
    i: int,
    script: Path,
    counted: dict[str, float],
) -> dict[str, Any]:
    """What live exposure counting costs the plain GET: the request path's share (timed in
    process) plus the flusher thread's CPU per request (read from /proc during the plain GET
    run), over the plain GET's CPU per request; and, for reference, the same app run with
    UNKD_EXPOSURE_COUNTING=0 (a whole-process difference, within the run-to-run spread)."""
    srv = Server(
        "app",
        bundle_dir,
        args.port + 151 + i,
        args.server_core,
        work / f"app-nocount-{i}.log",
        env={"UNKD_EXPOSURE_COUNTING": "0"},
    )
    try:
        srv.wait_ready("/v1/serving")
        run_wrk(srv, 16, min(3.0, args.duration), args.wrk_core, script)
        off = run_wrk(srv, 16, args.duration, args.wrk_core, script)
    finally:
        srv.stop()
    add_us = time_tally_add(bundle_dir)
    share = (1e-3 * add_us + counted["flush_cpu_ms_per_req"]) / counted["cpu_ms_per_req"]
    return {
        "request_path_us": add_us,
        "flush_cpu_ms_per_req": counted["flush_cpu_ms_per_req"],
        "share": share,
        "on_cpu_ms_per_req": counted["cpu_ms_per_req"],
        "off_cpu_ms_per_req": off["cpu_ms_per_req"],
        "off_rps": off["rps"],
        "pass": share <= TARGET_COUNTING_SHARE and off["errors"] == 0,
    }


def baseline_and_fresh(
    bundle_dir: Path,
    args: argparse.Namespace,
    work: Path,
    i: int,
    script: Path,
    wrk_users: np.ndarray,
) -> dict[str, Any]:
    """The plain GET of create_app with the fresh filter on, against the baseline a user would
    write (bench/serve_baseline.py), both on the same core with the same wrk script, in
    --rounds rounds that alternate them (on a shared host one run against another moves by
    20-30 %); the speedup is the median of the rounds' own ratios. The baseline first answers
    users 0, 1 and 3 as brute force says.

    The fresh filter's share of the plain GET's CPU, in the same process and the same round:
    right after its run of the mixed script, create_app serves wrk's users that hold recent
    items, then those that hold none (each --duration / 2 s); the filter costs the average
    request f x (CPU with - CPU without), f the share of the mixed script's requests that hold
    recent items, over the mixed run's CPU per request. (It was the difference between create_app
    with and without the map, two processes 30 s apart: 0.3 % to 35 % between rounds.)"""
    from bench.serve_baseline import FRESH_EVERY

    holds = wrk_users % FRESH_EVERY == 0
    frac = float(holds.mean())
    with_script = wrk_script(work / f"fresh-with-{i}.lua", [f"u{u}" for u in wrk_users[holds]])
    without_script = wrk_script(
        work / f"fresh-without-{i}.lua", [f"u{u}" for u in wrk_users[~holds]]
    )
    runs: dict[str, list[dict[str, float]]] = {
        "fresh on": [],
        "baseline": [],
        "with recent": [],
        "without recent": [],
    }
    port = args.port + 171 + 10 * i
    for _ in range(args.rounds):
        for name, kind, env in (
            ("fresh on", "app", {"BENCH_FRESH": "1"}),
            ("baseline", "baseline", {"OMP_NUM_THREADS": "1"}),
        ):
            port += 1
            log = work / f"{kind}-{name.replace(' ', '-')}-{port}.log"
            srv = Server(kind, bundle_dir, port, args.server_core, log, env=env)
            try:
                srv.wait_ready("/openapi.json")
                if kind == "baseline" and not runs["baseline"]:
                    check_same_answer(srv.url, bundle_dir, [0, 1, 3])
                run_wrk(srv, 16, min(3.0, args.duration), args.wrk_core, script)
                runs[name].append(run_wrk(srv, 16, args.duration, args.wrk_core, script))
                if kind == "app":
                    for part, part_script in (
                        ("with recent", with_script),
                        ("without recent", without_script),
                    ):
                        runs[part].append(
                            run_wrk(srv, 16, args.duration / 2, args.wrk_core, part_script)
                        )
            finally:
                srv.stop()

    out: dict[str, Any] = {name: medians(rs) for name, rs in runs.items()}
    out["runs"] = runs
    out["rounds"] = args.rounds
    out["recent_fraction"] = frac
    # Ratios within a round, then their median: the host's speed drifts between rounds (one
    # round ran every server a third faster than the others), and a ratio of two medians
    # taken from different rounds mixes that drift into it.
    out["speedups"] = [
        on["rps"] / base["rps"] for on, base in zip(runs["fresh on"], runs["baseline"], strict=True)
    ]
    out["fresh_shares"] = [
        frac * (w["cpu_ms_per_req"] - wo["cpu_ms_per_req"]) / on["cpu_ms_per_req"]
        for on, w, wo in zip(
            runs["fresh on"], runs["with recent"], runs["without recent"], strict=True
        )
    ]
    out["speedup"] = float(np.median(out["speedups"]))
    out["fresh_share"] = float(np.median(out["fresh_shares"]))
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    out["pass"] = (
        out["speedup"] >= TARGET_BASELINE_SPEEDUP
        and out["fresh_share"] < TARGET_FRESH_SHARE
        and out["fresh on"]["p99_ms"] < TARGET_TAIL_RATIO * out["fresh on"]["p50_ms"]
        and errors == 0
    )
    return out


def check_same_answer(url: str, bundle_dir: Path, users: list[int]) -> None:
    """The baseline's items equal the service's (same seen and fresh filter) for `users`."""
    from service.serving.bundle import load_bundle

    b = load_bundle(bundle_dir)
    fresh = bench_fresh(b.n_users, b.n_items, True)
    for u in users:
        with urllib.request.urlopen(f"{url}/v1/recommendations/u{u}?k={K}") as r:
            got = [it["item_id"] for it in json.loads(r.read())["items"]]
        banned = set(b.seen(u).tolist()) | {b.item_index(i) for i in fresh.items(f"u{u}")}
        scores = b.item_emb @ b.user_emb[u]
        scores[[i for i in banned if i is not None]] = -np.inf
        want = [str(b.item_ids[i]) for i in np.argsort(-scores, kind="stable")[:K]]
        if got != want:
            raise SystemExit(f"baseline answered u{u} with {got[:5]}..., brute force {want[:5]}...")


def process_scaling(
    bundle_dir: Path, args: argparse.Namespace, work: Path, script: Path
) -> list[dict[str, Any]]:
    """create_app under uvicorn with 1, then 2 worker processes (`unkd api --workers`), then 2
    that map the bundle (UNKD_SERVING_MMAP=1), nothing pinned: the plain GET at 16 connections,
    req/s, CPU, latency and memory (RSS; PSS splits shared pages) per process. The three
    servers are up together (idle but for the one under load) and measured in --rounds rounds
    that alternate them, each run --duration / 2 seconds: a ratio of two runs a minute apart
    moved from 1.25 to 1.64 between two runs of this script on a shared host. Each row gives
    the medians of its rounds; its scaling is the median of its per-round ratios to that
    round's single process ("scalings")."""
    configs = ((1, False), (2, False), (2, True))
    servers: list[Server] = []
    runs: list[list[dict[str, Any]]] = [[] for _ in configs]
    memory: list[list[dict[str, float]]] = []
    try:
        for n, (workers, mmap) in enumerate(configs):
            srv = Server(
                "app",
                bundle_dir,
                args.port + 201 + n,
                None,
                work / f"app-workers{workers}-{n}.log",
                workers=workers,
                env={"UNKD_SERVING_MMAP": "1" if mmap else "0"},
            )
            servers.append(srv)
            srv.wait_ready("/v1/serving")
            deadline = time.monotonic() + 60
            while len(srv.pids()) < workers + (workers > 1) and time.monotonic() < deadline:
                time.sleep(0.2)  # the supervisor and its workers
            run_wrk(srv, 16, min(3.0, args.duration), None, script)  # warm every process
        for _ in range(args.rounds):
            for n, srv in enumerate(servers):
                runs[n].append(run_wrk(srv, 16, args.duration / 2, None, script))
        for (workers, _), srv in zip(configs, servers, strict=True):
            memory.append(
                [
                    m
                    for m in srv.memory_mb()
                    if workers == 1
                    or (
                        m["pid"] != srv.proc.pid
                        and b"resource_tracker"
                        not in Path(f"/proc/{m['pid']}/cmdline").read_bytes()
                    )
                ]
            )
    finally:
        for srv in servers:
            srv.stop()
    out: list[dict[str, Any]] = []
    for n, (workers, mmap) in enumerate(configs):
        rs = runs[n]
        r = medians(rs)
        r["errors"] = sum(int(x["errors"]) for x in rs)
        r["memory"] = memory[n]
        r["workers"], r["mmap"] = workers, mmap
        r["scalings"] = [x["rps"] / one["rps"] for x, one in zip(rs, runs[0], strict=True)]
        r["scaling"] = float(np.median(r["scalings"]))
        r["pass"] = r["errors"] == 0 and (workers == 1 or r["scaling"] >= TARGET_SCALING)
        out.append(r)
    return out


# -- main ------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import faiss
    import fastapi
    import uvicorn

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        "?",
    )
    return {
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--dim", type=int, nargs="+", default=[10], help="one row per embedding size")
    ap.add_argument("--factory", default="Flat", help="faiss factory string of the published index")
    ap.add_argument("--seen-mean", type=float, default=20.0, help="mean training items per user")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    ap.add_argument("--search-queries", type=int, default=2000)
    ap.add_argument("--server-core", type=int, default=1)
    ap.add_argument("--wrk-core", type=int, default=0)
    ap.add_argument("--port", type=int, default=18_731)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=None, help="keep bundles and server logs here")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument(
        "--rounds", type=int, default=ROUNDS, help="alternated rounds of the baseline comparison"
    )
    ap.add_argument(
        "--versus-only",
        action="store_true",
        help="only the baseline comparison and the fresh filter's share (step 5)",
    )
    ap.add_argument(
        "--serve", choices=["floor", "endpoint", "app", "baseline"], help=argparse.SUPPRESS
    )
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.bundle, args.port, args.workers)
        return 0
    if shutil.which("wrk") is None:
        print(
            "wrk not found: install it with `apt-get install wrk` (Debian package)", file=sys.stderr
        )
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    warm = min(3.0, args.duration)
    # The apps flush live exposure counts to a Redis of their own, as the API does; it runs on
    # wrk's core so that its work (the item-count script) stays off the server's CPU figures.
    from service.stack.redis_server import RedisServer

    redis_server = RedisServer(work / "redis", appendonly=False).start()
    if redis_server.pid is not None:
        os.sched_setaffinity(redis_server.pid, {args.wrk_core})
    os.environ["BENCH_REDIS_URL"] = redis_server.url
    try:
        return versus_only(args, work) if args.versus_only else run_all(args, work, warm)
    finally:
        redis_server.stop()  # before the files go: its SHUTDOWN writes into its folder
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def versus_table(rows: list[dict[str, Any]]) -> str:
    """Step 5's table: create_app's plain GET (fresh on) against the baseline, and what the
    fresh filter costs it."""
    headers = [
        "dim",
        "plain GET req/s @16 (fresh on)",
        "baseline req/s @16",
        "x baseline",
        "plain GET p50/p99 @16 ms",
        "baseline p50/p99 @16 ms",
        "CPU ms/req users with / without recent items",
        "fresh filter share",
        "result",
    ]
    body = [
        [
            r["dim"],
            round(r["versus"]["fresh on"]["rps"]),
            round(r["versus"]["baseline"]["rps"]),
            f"{r['versus']['speedup']:.2f} ({min(r['versus']['speedups']):.2f}-"
            f"{max(r['versus']['speedups']):.2f})",
            f"{r['versus']['fresh on']['p50_ms']:.2f} / {r['versus']['fresh on']['p99_ms']:.2f}",
            f"{r['versus']['baseline']['p50_ms']:.2f} / {r['versus']['baseline']['p99_ms']:.2f}",
            f"{r['versus']['with recent']['cpu_ms_per_req']:.3f} / "
            f"{r['versus']['without recent']['cpu_ms_per_req']:.3f}",
            f"{100 * r['versus']['fresh_share']:.1f} % ({100 * min(r['versus']['fresh_shares']):.1f}"
            f" to {100 * max(r['versus']['fresh_shares']):.1f})",
            "ok" if r["versus"]["pass"] else "MISS",
        ]
        for r in rows
    ]
    return (
        table(headers, body) + f"\n(medians of {rows[0]['versus']['rounds']} alternated rounds; x "
        "baseline and the fresh share: the medians of the rounds' own ratios, their range in brackets; "
        f"targets: >= {TARGET_BASELINE_SPEEDUP} x the baseline, p99 < {TARGET_TAIL_RATIO} x p50, "
        f"fresh filter < {100 * TARGET_FRESH_SHARE:.0f} % of the CPU per request)"
    )


def versus_only(args: argparse.Namespace, work: Path) -> int:
    """Step 5 alone, for each --dim: the baseline comparison and the fresh filter's share."""
    dataset = synthetic_dataset(args.users, args.items, args.seen_mean, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    wrk_users = rng.integers(0, args.users, N_WRK_USERS)
    rows = []
    for i, dim in enumerate(args.dim):
        bundle_dir, _ = publish_student(dataset, dim, args.factory, work, args.seed)
        script = route_scripts(work, dataset, wrk_users, args.seed)["plain GET"][0]
        versus = baseline_and_fresh(bundle_dir, args, work, i, script, wrk_users)
        rows.append({"dim": dim, "versus": versus})
    print(versus_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    return 0 if all(r["versus"]["pass"] for r in rows) else 1


def run_all(args: argparse.Namespace, work: Path, warm: float) -> int:
    """Every measurement of main(), with the bench's Redis up."""

    floor_srv = Server("floor", None, args.port, args.server_core, work / "floor.log")
    try:
        floor_srv.wait_ready("/")
        run_wrk(floor_srv, 16, warm, args.wrk_core, None)
        floor = run_wrk(floor_srv, 16, args.duration, args.wrk_core, None)
        floor4 = run_wrk(floor_srv, 4, args.duration, args.wrk_core, None)
    finally:
        floor_srv.stop()

    dataset = synthetic_dataset(args.users, args.items, args.seen_mean, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    wrk_users = rng.integers(0, args.users, N_WRK_USERS)
    script = wrk_script(work / "users.lua", [f"u{u}" for u in wrk_users])
    rows: list[dict[str, Any]] = []
    for i, dim in enumerate(args.dim):
        bundle_dir, build_s = publish_student(dataset, dim, args.factory, work, args.seed)
        search = time_search(bundle_dir, args.server_core, args.search_queries, args.seed)
        srv = Server(
            "endpoint",
            bundle_dir,
            args.port + 1 + i,
            args.server_core,
            work / f"endpoint-d{dim}.log",
        )
        try:
            srv.wait_ready("/v1/serving")
            check_answer(srv, bundle_dir, 0)
            run_wrk(srv, 16, warm, args.wrk_core, script)
            c0 = coalescing(srv)
            at16 = run_wrk(srv, 16, args.duration, args.wrk_core, script)
            c1 = coalescing(srv)
            at4 = run_wrk(srv, 4, args.duration, args.wrk_core, script)
            c2 = coalescing(srv)
        finally:
            srv.stop()
        routes = route_costs(
            Server(
                "app", bundle_dir, args.port + 101 + i, args.server_core, work / f"app-d{dim}.log"
            ),
            route_scripts(work, dataset, wrk_users, args.seed),
            args,
        )
        counting = counting_cost(
            bundle_dir,
            args,
            work,
            i,
            route_scripts(work, dataset, wrk_users, args.seed)["plain GET"][0],
            routes["plain GET"],
        )
        versus = baseline_and_fresh(
            bundle_dir,
            args,
            work,
            i,
            route_scripts(work, dataset, wrk_users, args.seed)["plain GET"][0],
            wrk_users,
        )
        # The ceiling batching makes possible: the HTTP floor plus a query's share of a batch of 16.
        ceiling = 1e3 / (floor["cpu_ms_per_req"] + search["t_search_batch16_ms"])
        share = at16["rps"] / ceiling
        errors = at16["errors"] + at4["errors"]
        tail = max(
            at16["p99_ms"] / at16["p50_ms"],
            routes["plain GET"]["p99_ms"] / routes["plain GET"]["p50_ms"],
        )
        ok = (
            versus["pass"]
            and at4["p99_ms"] < TARGET_P99_MS
            and tail < TARGET_TAIL_RATIO
            and errors == 0
        )
        if i == 0:
            procs = process_scaling(
                bundle_dir,
                args,
                work,
                route_scripts(work, dataset, wrk_users, args.seed)["plain GET"][0],
            )
        at16["mean_batch"] = (c1["requests"] - c0["requests"]) / max(
            1, c1["batches"] - c0["batches"]
        )
        at4["mean_batch"] = (c2["requests"] - c1["requests"]) / max(
            1, c2["batches"] - c1["batches"]
        )
        rows.append(
            {
                "dim": dim,
                "items": args.items,
                "factory": args.factory,
                "build_s": build_s,
                **search,
                "t_floor_ms": floor["cpu_ms_per_req"],
                "ceiling_rps": ceiling,
                "share": share,
                "tail": tail,
                "at16": at16,
                "at4": at4,
                "errors": errors,
                "pass": ok,
                "routes": routes,
                "routes_pass": all(rr["pass"] for rr in routes.values()) and counting["pass"],
                "counting": counting,
                "versus": versus,
            }
        )

    headers = [
        "dim",
        "items",
        "index",
        "t_search ms (batch 16)",
        "t_floor ms",
        "ceiling req/s",
        "endpoint req/s",
        "% of ceiling",
        "CPU ms/req",
        "batch @16",
        "p50/p99 @16 ms",
        "p99/p50",
        "p50/p99 @4 ms",
        "result",
    ]
    body = [
        [
            r["dim"],
            r["items"],
            r["factory"],
            f"{r['t_search_ms']:.3f} ({r['t_search_batch16_ms']:.3f})",
            r["t_floor_ms"],
            round(r["ceiling_rps"]),
            round(r["at16"]["rps"]),
            f"{100 * r['share']:.0f} %",
            r["at16"]["cpu_ms_per_req"],
            f"{r['at16']['mean_batch']:.1f}",
            f"{r['at16']['p50_ms']:.2f} / {r['at16']['p99_ms']:.2f}",
            f"{r['tail']:.1f}",
            f"{r['at4']['p50_ms']:.2f} / {r['at4']['p99_ms']:.2f}",
            "ok" if r["pass"] else "MISS",
        ]
        for r in rows
    ]
    print(table(headers, body))
    rheaders = [
        "dim",
        "route (create_app)",
        "CPU ms/req",
        "of which search thread",
        "x plain GET",
        "req/s @16",
        "p50/p99 @16 ms",
        "errors",
        "result",
    ]
    rbody = [
        [
            r["dim"],
            name,
            rr["cpu_ms_per_req"],
            rr["search_cpu_ms_per_req"],
            f"{rr['ratio']:.2f} ({min(rr['ratios']):.2f}-{max(rr['ratios']):.2f})",
            round(rr["rps"]),
            f"{rr['p50_ms']:.2f} / {rr['p99_ms']:.2f}",
            rr["errors"],
            "ok" if rr["pass"] else "MISS",
        ]
        for r in rows
        for name, rr in r["routes"].items()
    ]
    print(
        table(rheaders, rbody)
        + f"\n(medians of {args.rounds} rounds alternating the routes; x plain GET: the median of "
        "the rounds' ratios to their plain GET, their range in brackets)"
    )
    print(
        f"HTTP floor (bare ASGI, fixed {K}-item body): {floor['rps']:.0f} req/s at 16 connections, "
        f"{floor['cpu_ms_per_req']:.3f} ms server CPU/request, p50/p99 at 4 connections "
        f"{floor4['p50_ms']:.2f} / {floor4['p99_ms']:.2f} ms"
    )
    for r in rows:
        print(
            f"dim {r['dim']}: in-process search {r['t_search_ms']:.3f} ms alone, "
            f"{r['t_search_batch16_ms']:.3f} ms per query in a batch of 16; recommend() "
            f"{r['t_recommend_ms']:.3f} ms; bundle built in {r['build_s']:.1f} s"
        )
    cheaders = [
        "dim",
        "counting: request path µs",
        "flusher CPU ms/req",
        "share of plain GET CPU",
        "plain GET CPU ms/req on / off",
        "req/s off",
        "result",
    ]
    cbody = [
        [
            r["dim"],
            f"{r['counting']['request_path_us']:.2f}",
            f"{r['counting']['flush_cpu_ms_per_req']:.4f}",
            f"{100 * r['counting']['share']:.1f} %",
            f"{r['counting']['on_cpu_ms_per_req']:.3f} / {r['counting']['off_cpu_ms_per_req']:.3f}",
            round(r["counting"]["off_rps"]),
            "ok" if r["counting"]["pass"] else "MISS",
        ]
        for r in rows
    ]
    print(table(cheaders, cbody))
    print(versus_table(rows))
    pheaders = [
        "API processes",
        "req/s @16",
        "x 1 process",
        "CPU ms/req",
        "p50/p99 @16 ms",
        "RSS MB per process",
        "PSS MB per process",
        "result",
    ]
    pbody = [
        [
            f"{pr['workers']}{' (mmap)' if pr['mmap'] else ''}",
            round(pr["rps"]),
            f"{pr['scaling']:.2f} ({min(pr['scalings']):.2f}-{max(pr['scalings']):.2f})",
            pr["cpu_ms_per_req"],
            f"{pr['p50_ms']:.2f} / {pr['p99_ms']:.2f}",
            " ".join(f"{m['rss_mb']:.0f}" for m in pr["memory"]),
            " ".join(f"{m['pss_mb']:.0f}" for m in pr["memory"]),
            "ok" if pr["pass"] else "MISS",
        ]
        for pr in procs
    ]
    print(
        table(pheaders, pbody)
        + f"\n(medians of {args.rounds} rounds alternating the three servers, all up at once; "
        "x 1 process: the median of the rounds' ratios, their range in brackets)"
    )
    print(
        f"targets: create_app's plain GET (fresh filter on) >= {TARGET_BASELINE_SPEEDUP} x the "
        f"baseline's req/s at 16 connections, the fresh filter < {100 * TARGET_FRESH_SHARE:.0f} % "
        "of its CPU/request (the ceiling share is for information); "
        f"p99 at 4 connections < {TARGET_P99_MS} ms; p99 < {TARGET_TAIL_RATIO} x p50 at 16 connections; "
        f"no errors; each route of create_app <= {TARGET_ROUTE_RATIO} x the plain GET's server CPU/request; "
        f"exposure counting <= {100 * TARGET_COUNTING_SHARE:.0f} % of the plain GET's CPU; "
        f"2 API processes >= {TARGET_SCALING} x the requests/s of 1 (wrk unpinned on the same cores)."
        + (f" Files in {work}" if args.work_dir is not None else "")
    )
    result = {
        "environment": environment(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "floor": {"at16": floor, "at4": floor4},
        "rows": rows,
        "processes": procs,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return (
        0
        if all(r["pass"] and r["routes_pass"] for r in rows) and all(pr["pass"] for pr in procs)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
