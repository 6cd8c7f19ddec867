"""The closed loop, simulated: a population with known preferences (the built-in synthetic
generator) is served by the running service over HTTP, clicks on what it is shown, the clicks
go in as events, and a pipeline retrains and publishes before the next round.

Each arm is its own world from the same start: its own `unkd up` stack (LocalStack: Redis,
one worker, the scheduler, the API, its own data dir), the same synthetic dataset, the same
users and the same random numbers (common random numbers: the clicks of two arms differ only
where what they showed differs). Arms: `plain` (an ALS teacher distilled into a dim-10 student with no
debiasing), `unkd` (the same with UnKD) and `teacher` (the ALS teacher itself served). The
UnKD arm publishes through the service's default gate (the product); the plain and teacher
arms run with the gate off (UNKD_PUBLISH_GATE=0 and a pipeline gate {"enabled": false}): they
are the counterfactuals, and a refused publish would freeze them.

A world: POST the synthetic dataset; train the recipe on it and publish (round 0's model);
then per round: every user asks for top-k (POST /v1/recommendations in chunks, exclude_seen),
clicks with the model of bench/loop_metrics.py, the clicks go in through POST /v1/events with
the answer's rec_id, and (except after the last round) the pipeline runs
(PUT /v1/pipelines/{name} once, POST .../run, poll the run) and the next round is served by
whatever it published; a refused or skipped run keeps the old model and is counted. The
retrain is one call, `Retrainer.retrain`, in one of three modes: the pipeline run above, or
POST /v1/datasets/{id}/versions then explicit jobs (teacher, distill, publish), or a fresh
upload of the grown data then the same jobs (`--retrain`, "auto": the first the service has).
The versions the pipeline or the versions route build are split by `--version-split`:
"append" (the default: the root's held-out pairs stay the test, every click goes to train)
or "temporal" (each user's newest rows, i.e. their clicks, held out; docs/loop.md).

Metrics per round (bench/loop_metrics.py; head = popularity group 0 of the round-0 dataset,
fixed): head share of exposure and of clicks, the head share by the served version's own
groups, coverage, Gini of exposure, clicks per 1,000 exposures, true-preference NDCG@k.
docs/loop.md explains the choices and the results.

Exits 0 when every world finished its rounds (refused or skipped runs are reported, not
failures), 1 otherwise (a world that stopped, or a run that failed).

    python bench/loop.py [--rounds 10] [--seeds 3] [--users 1000] [--items 800] [--k 10]
                         [--arms plain,unkd,teacher] [--out docs/img/loop.svg] [--json out.json]
                         [--retrain auto] [--version-split append|temporal]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loop_metrics as lm  # noqa: E402
from bench.common import REPO, environment, table  # noqa: E402

logger = logging.getLogger("bench.loop")

ARMS = ("plain", "unkd", "teacher")
JOB_TIMEOUT_S = 1800.0
SERVE_SWAP_TIMEOUT_S = 120.0
EVENTS_PER_BATCH = 1000
TEACHER = {"model": "als"}  # ALS at its defaults: it has embeddings, so it can be served
STUDENT_DIM = 10
GROUPS = 4  # the service's popularity groups (UnKD's default G)


@dataclass(frozen=True)
class LoopConfig:
    rounds: int = 10
    users: int = 1000
    items: int = 800
    k: int = 10
    interactions_per_user: float = 20.0
    click_a: float = lm.CLICK_A
    click_b: float = lm.CLICK_B
    relevant_top: int = lm.RELEVANT_TOP
    retrain: str = "auto"  # Retrainer's mode
    version_split: str = "append"  # the split of the versions a retrain builds


@dataclass
class RunOutcome:
    """What one retrain did: published (a new model serves), refused (the gate), skipped
    (no new events), failed (an error: the world goes on with the old model)."""

    status: str
    model_id: str | None = None
    dataset_id: str | None = None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class RoundResult:
    round: int
    model_id: str
    exposures: int
    clicks: int
    head_exposure: float | None
    head_clicks: float | None
    head_exposure_current: float | None
    coverage: float
    gini: float
    clicks_per_1000: float | None
    true_ndcg: float
    run: dict[str, Any] | None = None  # the retrain after this round's clicks
    seconds: float = 0.0


@dataclass
class WorldResult:
    arm: str
    seed: int
    mode: str = ""
    rounds: list[RoundResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


# -- HTTP helpers ------------------------------------------------------------------------


def _ok(r: Any, *codes: int) -> dict[str, Any]:
    if r.status_code not in codes:
        raise RuntimeError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text}")
    body: dict[str, Any] = r.json()
    return body


def _wait_job(http: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = _ok(http.get(f"/v1/jobs/{job_id}"), 200)
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} still running after {JOB_TIMEOUT_S:.0f} s")


def _wait_served(http: Any, model_id: str) -> None:
    deadline = time.monotonic() + SERVE_SWAP_TIMEOUT_S
    while time.monotonic() < deadline:
        r = http.get("/v1/serving")
        if r.status_code == 200 and r.json().get("model_id") == model_id:
            return
        time.sleep(0.2)
    raise RuntimeError(f"model {model_id} not served {SERVE_SWAP_TIMEOUT_S:.0f} s after publish")


def recipe(arm: str, version_split: str = "append") -> dict[str, Any]:
    """The pipeline body of an arm, without dataset_id (the contract's PUT /v1/pipelines)."""
    # min_new_events 0: no run starts by itself when the clicks arrive (the scheduler's
    # "events" trigger needs at least 1); the bench starts each round's run.
    body: dict[str, Any] = {
        "teacher": dict(TEACHER),
        "on_pass": "activate",
        "min_new_events": 0,
        "version_split": version_split,
    }
    if arm != "teacher":  # no distill block: the pipeline gates and publishes the teacher
        body["distill"] = {"method": "unkd" if arm == "unkd" else "none", "dim": STUDENT_DIM}
    if arm != "unkd":  # the counterfactual arms: gate off
        body["gate"] = {"enabled": False}
    return body


def train_and_publish(http: Any, dataset_id: str, arm: str) -> RunOutcome:
    """The recipe by explicit jobs: teacher, distill (not for the teacher arm), publish."""
    t0 = time.monotonic()
    rec = recipe(arm)
    job = {"kind": "teacher", "dataset_id": dataset_id, **rec["teacher"]}
    teacher = _wait_job(http, _ok(http.post("/v1/jobs", json=job), 202)["id"])
    if teacher["status"] != "succeeded":
        return RunOutcome("failed", None, dataset_id, f"teacher job: {teacher['error']}")
    model_id = teacher["model_id"]
    if "distill" in rec:
        body = {"kind": "distill", "teacher_id": model_id, **rec["distill"]}
        student = _wait_job(http, _ok(http.post("/v1/jobs", json=body), 202)["id"])
        if student["status"] != "succeeded":
            return RunOutcome("failed", None, dataset_id, f"distill job: {student['error']}")
        model_id = student["model_id"]
    r = http.post(f"/v1/models/{model_id}/publish", json={})
    if r.status_code == 409:
        return RunOutcome("refused", model_id, dataset_id, r.text[:300], time.monotonic() - t0)
    publish = _wait_job(http, _ok(r, 202)["id"])
    if publish["status"] != "succeeded":
        detail = str(publish["error"])
        status = "refused" if "gate" in detail else "failed"
        return RunOutcome(status, model_id, dataset_id, detail[:300], time.monotonic() - t0)
    _wait_served(http, model_id)
    return RunOutcome("published", model_id, dataset_id, "", time.monotonic() - t0)


class GrownData:
    """A world's data as it grows, kept by the bench for the "upload" retrain: the round-0
    interactions with their splits (train, valid, test as the generator made them) and every
    click so far, added to train (the test split stays the round-0 one)."""

    def __init__(self, pop: Population) -> None:
        self.pop = pop
        self.clicks: list[tuple[int, int]] = []

    def add(self, users: np.ndarray, items: np.ndarray) -> None:
        self.clicks.extend(zip(users.tolist(), items.tolist(), strict=True))

    def csv(self) -> bytes:
        u, i = self.pop.user_ids, self.pop.item_ids
        lines = ["user_id,item_id,split"]
        for split, rows in self.pop.splits.items():
            lines.extend(f"{u[a]},{i[b]},{split}" for a, b in rows.tolist())
        lines.extend(f"{u[a]},{i[b]},train" for a, b in self.clicks)
        return ("\n".join(lines) + "\n").encode()


RETRAIN_MODES = ("auto", "pipeline", "versions", "upload")


class Retrainer:
    """One round's retrain, behind one call (`retrain`), in one of three modes:

    - "pipeline": POST /v1/pipelines/{name}/run and poll the run (the contract; PUT once here);
    - "versions": POST /v1/datasets/{id}/versions (the clicks since the last version), then
      the recipe by explicit jobs (teacher, distill, publish);
    - "upload": a fresh upload of the grown data (GrownData: round 0's splits plus every click
      in train), then the same explicit jobs; for a service without issue 19's routes.

    "auto" picks the first the service has, in that order."""

    def __init__(
        self,
        http: Any,
        dataset_id: str,
        arm: str,
        name: str,
        grown: GrownData,
        mode: str = "auto",
        version_split: str = "append",
    ) -> None:
        self.http, self.dataset_id, self.arm, self.name = http, dataset_id, arm, name
        self.grown, self.version_split = grown, version_split
        paths = _ok(http.get("/openapi.json"), 200)["paths"]
        have = {
            "pipeline": "/v1/pipelines/{name}/run" in paths,
            "versions": "/v1/datasets/{dataset_id}/versions" in paths,
            "upload": True,
        }
        if mode == "auto":
            mode = next(m for m in RETRAIN_MODES[1:] if have[m])
        if not have[mode]:
            raise RuntimeError(f"retrain mode {mode!r}: the service lacks its routes (issue 19)")
        self.mode = mode
        if mode == "pipeline":
            body = {"dataset_id": dataset_id, **recipe(arm, version_split)}
            _ok(http.put(f"/v1/pipelines/{name}", json=body), 200, 201)

    def retrain(self) -> RunOutcome:
        t0 = time.monotonic()
        if self.mode == "pipeline":
            out = self._pipeline()
        else:
            dataset = self._version() if self.mode == "versions" else self._upload()
            out = (
                dataset
                if isinstance(dataset, RunOutcome)
                else train_and_publish(self.http, dataset, self.arm)
            )
        out.seconds = time.monotonic() - t0
        return out

    def _pipeline(self) -> RunOutcome:
        run = _ok(self.http.post(f"/v1/pipelines/{self.name}/run"), 202)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while run["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"pipeline run {run['run_id']} unfinished after the timeout")
            time.sleep(0.5)
            run = _ok(self.http.get(f"/v1/pipelines/{self.name}/runs/{run['run_id']}"), 200)
        published = run.get("published") or {}
        status = {"succeeded": "published"}.get(run["status"], run["status"])
        if status == "published" and not published.get("model_id"):
            status = "failed"
        out = RunOutcome(
            status,
            published.get("model_id") or run.get("student_id") or run.get("teacher_id"),
            run.get("dataset_version"),
            str(run.get("reason") or ""),
        )
        if status == "published" and out.model_id:
            _wait_served(self.http, out.model_id)
        return out

    def _version(self) -> str | RunOutcome:
        body = {"min_new_events": 1, "split": self.version_split}
        r = self.http.post(f"/v1/datasets/{self.dataset_id}/versions", json=body)
        if r.status_code == 409:
            return RunOutcome("skipped", None, None, r.text[:300])
        version: str = _ok(r, 201)["id"]
        return version

    def _upload(self) -> str | RunOutcome:
        if not self.grown.clicks:
            return RunOutcome("skipped", None, None, "no clicks yet")
        files = {"file": ("grown.csv", self.grown.csv(), "text/csv")}
        form = {"split": "given", "name": f"{self.name}-{len(self.grown.clicks)}"}
        dataset: str = _ok(self.http.post("/v1/datasets", files=files, data=form), 201)["id"]
        return dataset


# -- one world ---------------------------------------------------------------------------


class Population:
    """The synthetic users' truth, generated here with the same parameters and seed as the
    service's dataset (the fingerprints are compared), and what each has consumed so far."""

    def __init__(self, cfg: LoopConfig, seed: int) -> None:
        from training.popularity import item_popularity, popularity_groups
        from training.synthetic import generate_synthetic

        self.params: dict[str, Any] = {
            "n_users": cfg.users,
            "n_items": cfg.items,
            "interactions_per_user": cfg.interactions_per_user,
            "seed": seed,
        }
        ds = generate_synthetic(**self.params, name=f"loop-{seed}")
        assert ds.truth is not None
        self.fingerprint = ds.fingerprint
        self.user_ids = [str(u) for u in ds.user_ids]
        self.item_index = {str(i): n for n, i in enumerate(ds.item_ids)}
        self.item_ids = [str(i) for i in ds.item_ids]
        self.scores = ds.truth.user_factors.astype(np.float64) @ ds.truth.item_factors.T
        self.splits = {"train": ds.train, "valid": ds.valid, "test": ds.test}
        self.consumed = np.zeros((cfg.users, cfg.items), dtype=bool)
        for split in self.splits.values():
            self.consumed[split[:, 0], split[:, 1]] = True
        pop = item_popularity(ds.train[:, 1], cfg.items)
        self.head = popularity_groups(pop, GROUPS) == 0


def _serve(http: Any, users: list[str], k: int, index: dict[str, int]) -> tuple[Any, ...]:
    """Every user's top-k: (lists (n, k) item indices, -1 = empty; groups (n, k) as served,
    -1 = empty; rec_ids per user; the model ids that answered)."""
    lists = np.full((len(users), k), -1, dtype=np.int64)
    groups = np.full((len(users), k), -1, dtype=np.int64)
    rec_ids: list[str] = []
    models: set[str] = set()
    for start in range(0, len(users), 1000):  # Settings.max_batch_users' default
        chunk = users[start : start + 1000]
        body = {"user_ids": chunk, "k": k, "exclude_seen": True}
        answer = _ok(http.post("/v1/recommendations", json=body), 200)
        for row, result in enumerate(answer["results"]):
            models.add(result["model_id"])
            rec_ids.append(result["rec_id"])
            for pos, item in enumerate(result["items"][:k]):
                lists[start + row, pos] = index[item["item_id"]]
                groups[start + row, pos] = item["group"]
    return lists, groups, rec_ids, models


def _send_clicks(http: Any, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), EVENTS_PER_BATCH):
        _ok(http.post("/v1/events", json={"events": events[start : start + EVENTS_PER_BATCH]}), 202)


def play_world(http: Any, cfg: LoopConfig, arm: str, seed: int, pop: Population) -> WorldResult:
    """Run one world's rounds against a started stack; raises on a broken world."""
    world = WorldResult(arm, seed)
    ds = _ok(http.post("/v1/datasets", json={"synthetic": pop.params, "name": f"loop-{seed}"}), 201)
    if ds["fingerprint"] != pop.fingerprint:
        raise RuntimeError("the service's synthetic dataset differs from the bench's truth")
    first = train_and_publish(http, ds["id"], arm)
    if first.status != "published":
        raise RuntimeError(f"round 0's model was not published: {first.status} {first.detail}")
    grown = GrownData(pop)
    retrainer = (
        Retrainer(http, ds["id"], arm, f"loop-{arm}", grown, cfg.retrain, cfg.version_split)
        if cfg.rounds > 1
        else None
    )
    world.mode = retrainer.mode if retrainer else "one round"
    consumed = pop.consumed.copy()
    rng = np.random.default_rng([seed, 19])  # the same uniforms in every arm of a seed
    rows = np.arange(cfg.users)[:, None]
    for r in range(1, cfg.rounds + 1):
        t0 = time.monotonic()
        lists, groups, rec_ids, models = _serve(http, pop.user_ids, cfg.k, pop.item_index)
        shown = lists >= 0
        safe = np.where(shown, lists, 0)
        prob = lm.click_probability(
            pop.scores[rows, safe], consumed[rows, safe] | ~shown, cfg.click_a, cfg.click_b
        )
        clicks = lm.draw_clicks(prob, rng)
        ndcg = lm.true_ndcg(lists, pop.scores, consumed, cfg.relevant_top)
        exposures = int(shown.sum())
        clicked = np.where(clicks, lists, -1)
        result = RoundResult(
            round=r,
            model_id=",".join(sorted(models)),
            exposures=exposures,
            clicks=int(clicks.sum()),
            head_exposure=lm.head_share(lists, pop.head),
            head_clicks=lm.head_share(clicked, pop.head),
            head_exposure_current=float((groups[shown] == 0).mean()) if exposures else None,
            coverage=lm.coverage(lists, cfg.items),
            gini=lm.gini(lm.exposure_counts(lists, cfg.items)),
            clicks_per_1000=lm.per_1000(int(clicks.sum()), exposures),
            true_ndcg=ndcg,
        )
        us, ps = np.nonzero(clicks)
        events = [
            {
                "user_id": pop.user_ids[u],
                "item_id": pop.item_ids[lists[u, p]],
                "type": "click",
                "rec_id": rec_ids[u],
                "event_id": f"loop-{seed}-{r}-{u}-{p}",
            }
            for u, p in zip(us.tolist(), ps.tolist(), strict=True)
        ]
        _send_clicks(http, events)
        consumed[us, lists[us, ps]] = True
        grown.add(us, lists[us, ps])
        if retrainer is not None and r < cfg.rounds:
            result.run = asdict(retrainer.retrain())
        result.seconds = time.monotonic() - t0
        world.rounds.append(result)
        run = result.run or {}
        logger.info(
            "%s seed %d round %d: head %.3f, clicks/1000 %.1f, ndcg %.4f, run %s (%.0f s)",
            arm,
            seed,
            r,
            result.head_exposure or 0.0,
            result.clicks_per_1000 or 0.0,
            ndcg,
            run.get("status", "-"),
            result.seconds,
        )
    return world


def run_world(cfg: LoopConfig, arm: str, seed: int, root: Path) -> WorldResult:
    """Start a fresh stack for the world, play it, stop the stack; errors are recorded."""
    import httpx

    from service.core.config import Settings
    from service.stack.local import LocalStack
    from service.stack.redis_server import free_port

    t0 = time.monotonic()
    pop = Population(cfg, seed)
    data_dir = root / f"{arm}-{seed}"
    settings = Settings(publish_gate=arm == "unkd")
    stack = LocalStack(settings, port=free_port(), data_dir=data_dir, log_dir=data_dir / "logs")
    try:
        stack.start()
        with httpx.Client(base_url=stack.api_url, timeout=300.0) as http:
            world = play_world(http, cfg, arm, seed, pop)
    except Exception as exc:  # one broken world is reported, the others still run
        logger.exception("world %s seed %d failed", arm, seed)
        world = WorldResult(arm, seed, error=f"{type(exc).__name__}: {exc}")
    finally:
        stack.stop()
    world.seconds = time.monotonic() - t0
    return world


# -- summaries ---------------------------------------------------------------------------

METRICS = (
    ("head_exposure", "head share of exposure", False),
    ("head_clicks", "head share of clicks", False),
    ("coverage", "coverage", False),
    ("gini", "Gini of exposure", False),
    ("clicks_per_1000", "clicks per 1,000", True),
    ("true_ndcg", "true NDCG@k", False),
)


def _fmt(pair: tuple[float | None, float | None], wide: bool = False) -> str:
    """(mean, std) as "m ± s" (one decimal when wide, else three); "–" without a value."""
    mean, std = pair
    if mean is None or std is None:
        return "–"
    return f"{mean:.1f} ± {std:.1f}" if wide else f"{mean:.3f} ± {std:.3f}"


def summarise(worlds: list[WorldResult], arms: list[str], rounds: int) -> dict[str, Any]:
    """Per round and arm, mean and std over seeds of every metric; the drift line; runs."""
    per_round: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        for arm in arms:
            got = [w.rounds[r - 1] for w in worlds if w.arm == arm and len(w.rounds) >= r]
            row: dict[str, Any] = {"round": r, "arm": arm, "seeds": len(got)}
            for key, _, _ in (*METRICS, ("head_exposure_current", "", False)):
                row[key] = lm.mean_std([getattr(g, key) for g in got])
            per_round.append(row)
    drift: dict[str, Any] = {}
    for arm in arms:
        done = [w for w in worlds if w.arm == arm and len(w.rounds) == rounds]
        runs = [g.run["status"] for w in done for g in w.rounds if g.run]
        drift[arm] = {
            "head_exposure_drift": lm.mean_std(
                [
                    (w.rounds[-1].head_exposure or 0.0) - (w.rounds[0].head_exposure or 0.0)
                    for w in done
                ]
            ),
            "clicks_per_1000": lm.mean_std(
                [
                    lm.per_1000(sum(g.clicks for g in w.rounds), sum(g.exposures for g in w.rounds))
                    for w in done
                ]
            ),
            "runs": {s: runs.count(s) for s in sorted(set(runs))},
            "seeds": len(done),
        }
    return {"per_round": per_round, "drift": drift}


def round_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["round", "arm", *(title for _, title, _ in METRICS), "head share (served groups)"]
    rows = [
        [
            str(row["round"]),
            row["arm"],
            *(_fmt(row[key], wide) for key, _, wide in METRICS),
            _fmt(row["head_exposure_current"]),
        ]
        for row in summary["per_round"]
    ]
    return headers, rows


def drift_lines(summary: dict[str, Any], rounds: int) -> list[str]:
    out = []
    for arm, d in summary["drift"].items():
        runs = ", ".join(f"{n} {s}" for s, n in d["runs"].items()) or "none"
        out.append(
            f"drift {arm}: head share of exposure, round {rounds} - round 1 = "
            f"{_fmt(d['head_exposure_drift'])}; clicks per 1,000 over the rounds = "
            f"{_fmt(d['clicks_per_1000'], wide=True)}; runs: {runs} ({d['seeds']} seeds)"
        )
    return out


# -- the plot and the page ---------------------------------------------------------------


def plot_svg(summary: dict[str, Any], arms: list[str], rounds: int) -> str:
    """One small-multiples SVG: a line chart per metric (service/reports/charts.py), a line
    per arm (the mean over seeds; the table has the spread), two charts a row."""
    from service.reports.charts import PALETTE, WIDTH, LineChart, Series, render_line_chart

    charts = []
    for n, (key, title, _) in enumerate(METRICS):
        series = tuple(
            Series(
                arm,
                tuple(row[key][0] for row in summary["per_round"] if row["arm"] == arm),
                PALETTE[ARMS.index(arm) if arm in ARMS else n],
            )
            for arm in arms
        )
        chart = LineChart(
            f"loop-{key}", title, tuple(float(r) for r in range(1, rounds + 1)), series, "round", ""
        )
        charts.append(render_line_chart(chart))
    cells, y, row_h = [], 0.0, 0.0
    for n, svg in enumerate(charts):
        match = re.search(r'viewBox="0 0 \d+ (\d+)"', svg)
        height = float(match.group(1)) if match else 300.0
        x = (n % 2) * WIDTH
        if n % 2 == 0 and n:
            y += row_h
            row_h = 0.0
        row_h = max(row_h, height)
        cells.append(
            svg.replace(
                "<svg ", f'<svg x="{x}" y="{y:.0f}" width="{WIDTH}" height="{height:.0f}" ', 1
            )
        )
    total_h = y + row_h
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {2 * WIDTH} {total_h:.0f}" '
        f'width="{2 * WIDTH}" height="{total_h:.0f}" font-family="system-ui, sans-serif">'
        f'<rect width="100%" height="100%" fill="#fff"/>{"".join(cells)}</svg>\n'
    )


def report_html(svg: str, summary: dict[str, Any], meta: dict[str, Any], rounds: int) -> str:
    """A self-contained page in the report pages' look: the plot, the drift lines, the table."""
    from service.reports.render import page_css

    headers, rows = round_table(summary)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    drift = "".join(f"<li>{escape(line)}</li>" for line in drift_lines(summary, rounds))
    setup = escape(json.dumps(meta["config"]))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>unkd-serve: the closed loop, simulated</title>"
        f"<style>{page_css()}</style></head><body>"
        "<header class='page-head'><div class='crumbs'>bench/loop.py</div>"
        "<h1>The closed loop, simulated</h1>"
        f"<p class='sub'>arms {escape(', '.join(meta['arms']))}; seeds {meta['seeds']}; "
        f"mean over seeds (table: mean ± std)</p></header><main>"
        f"<section class='card'><h2>Per round</h2>{svg}</section>"
        f"<section class='card'><h2>Drift</h2><ul>{drift}</ul>"
        f"<p class='note'>setup: {setup}</p></section>"
        f"<section class='card'><h2>Table</h2><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></section></main></body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=800)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--interactions-per-user", type=float, default=20.0)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--click-a", type=float, default=lm.CLICK_A)
    ap.add_argument("--click-b", type=float, default=lm.CLICK_B)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "loop.svg")
    ap.add_argument("--retrain", choices=RETRAIN_MODES, default="auto", help="Retrainer's mode")
    ap.add_argument(
        "--version-split",
        choices=("append", "temporal"),
        default="append",
        help="the split of the versions a retrain builds (append: every click in train)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the worlds' data here")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    arms = [x for x in a.arms.split(",") if x]
    unknown = [x for x in arms if x not in ARMS]
    if unknown or a.rounds < 1 or a.seeds < 1:
        ap.error(f"arms among {ARMS} (not {unknown}), rounds and seeds >= 1")
    cfg = LoopConfig(
        rounds=a.rounds,
        users=a.users,
        items=a.items,
        k=a.k,
        interactions_per_user=a.interactions_per_user,
        click_a=a.click_a,
        click_b=a.click_b,
        retrain=a.retrain,
        version_split=a.version_split,
    )
    print(f"environment: {environment()}", flush=True)
    worlds: list[WorldResult] = []
    with tempfile.TemporaryDirectory(prefix="unkd-loop-") as tmp:
        root = a.work_dir or Path(tmp)
        for seed in range(a.seeds):
            for arm in arms:
                worlds.append(run_world(cfg, arm, seed, root))
                w = worlds[-1]
                print(
                    f"  world {arm} seed {seed}: {len(w.rounds)} rounds, mode {w.mode or '-'}, "
                    f"{w.seconds:.0f} s{'; ERROR ' + w.error if w.error else ''}",
                    flush=True,
                )
    summary = summarise(worlds, arms, a.rounds)
    headers, rows = round_table(summary)
    print(table(headers, rows))
    for line in drift_lines(summary, a.rounds):
        print(line)
    meta = {"config": asdict(cfg), "arms": arms, "seeds": a.seeds}
    svg = plot_svg(summary, arms, a.rounds)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(svg, encoding="utf-8")
    page = a.out.with_suffix(".html")
    page.write_text(report_html(svg, summary, meta, a.rounds), encoding="utf-8")
    print(f"wrote {a.out} and {page}")
    if a.json:
        a.json.write_text(
            json.dumps(
                {**meta, "summary": summary, "worlds": [asdict(w) for w in worlds]}, indent=1
            ),
            encoding="utf-8",
        )
    broken = [f"{w.arm}/{w.seed}" for w in worlds if w.error or len(w.rounds) < a.rounds]
    failed = [
        f"{w.arm}/{w.seed}/r{g.round}"
        for w in worlds
        for g in w.rounds
        if g.run and g.run["status"] == "failed"
    ]
    if broken or failed:
        print(f"NOT DONE: worlds {broken}, failed runs {failed}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
