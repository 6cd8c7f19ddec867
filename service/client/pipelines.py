"""`unkd pipelines`: save, list, show and run pipelines, and read their runs.

    unkd pipelines put NAME --file recipe.json     create or replace (an admin key)
    unkd pipelines list | show NAME | delete NAME
    unkd pipelines run NAME [--min-new-events N] [--wait]   a write key; --wait follows the
                                                   run step by step (the step job's progress)
    unkd pipelines runs NAME [--limit 20]          newest first, with their gate answers

Exit status as the other client commands (service/client/commands.py); a waited-for run
exits 0 when it succeeded or was skipped, 1 when it was refused or failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from service.client.api import ApiClient
from service.client.bodies import UsageError
from service.client.commands import _common, _count, _leaf, _print_json, _waiting
from service.client.output import fmt, progress_text, say, table, warn

RUN_ENDED = ("skipped", "succeeded", "refused", "failed")
STEPS = (("teacher_job", "teacher"), ("distill_job", "distill"), ("publish_job", "publish"))


def _recipe(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        body = json.loads(text)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--file {path}: {exc}") from exc
    if not isinstance(body, dict):
        raise UsageError(f"--file {path}: a JSON object (the recipe), not {type(body).__name__}")
    return body


def run_line(run: dict[str, Any]) -> str:
    """One line: `run <id> (<trigger>) <status>[: <reason>][: published <model> (<action>)]`."""
    text = f"run {run['run_id']} ({run['trigger']}) {run['status']}"
    if run.get("reason"):
        text += f": {run['reason']}"
    published = run.get("published")
    if published:
        text += f": published {published['model_id']} ({published['action']})"
    return text


def gate_lines(run: dict[str, Any]) -> list[str]:
    marks = {True: "pass", False: "FAIL", None: "not checked"}
    return [f"  gate {c['rule']}: {marks[c['passed']]}: {c['detail']}" for c in run["gate"]]


def cmd_put(client: ApiClient, args: argparse.Namespace) -> int:
    stored = client.put_pipeline(args.name, _recipe(args.file))
    if args.json:
        _print_json(stored)
    else:
        when = stored.get("schedule") or (
            f"every {stored['every_s']}s" if stored.get("every_s") else None
        )
        trigger = when or f"{stored['min_new_events']} new events"
        say(
            f"pipeline {stored['name']} saved: {stored['dataset_id']}, on pass {stored['on_pass']}, runs on {trigger}"
        )
    return 0


def cmd_list(client: ApiClient, args: argparse.Namespace) -> int:
    page = client.list_pipelines(limit=args.limit)
    if args.json:
        _print_json(page)
        return 0
    rows = [
        [
            p["name"],
            p["dataset_id"],
            p["teacher"].get("model"),
            (p.get("distill") or {}).get("method"),
            p["on_pass"],
            p.get("schedule") or (f"every {p['every_s']}s" if p.get("every_s") else "-"),
            p["min_new_events"],
        ]
        for p in page["items"]
    ]
    say(
        table(
            ["name", "dataset", "teacher", "distill", "on pass", "schedule", "min events"],
            rows,
            right=(6,),
        )
    )
    return 0


def cmd_show(client: ApiClient, args: argparse.Namespace) -> int:
    _print_json(client.pipeline(args.name))
    return 0


def cmd_delete(client: ApiClient, args: argparse.Namespace) -> int:
    client.pipeline(args.name, method="DELETE")
    if not args.json:
        say(f"pipeline {args.name} deleted (its runs stay readable)")
    return 0


def cmd_runs(client: ApiClient, args: argparse.Namespace) -> int:
    page = client.pipeline_runs(args.name, limit=args.limit)
    if args.json:
        _print_json(page)
        return 0
    rows = []
    for r in page["items"]:
        gate = " ".join(
            f"{c['rule']}:{ {True: 'ok', False: 'FAIL', None: '-'}[c['passed']] }"
            for c in r["gate"]
        )
        metrics = r.get("metrics") or {}
        rows.append(
            [
                r["run_id"][:12],
                r["trigger"],
                r["status"],
                r.get("dataset_version"),
                r.get("new_events"),
                r.get("student_id") or r.get("teacher_id"),
                metrics.get("student_ndcg@20"),
                gate or "-",
                (r.get("published") or {}).get("action"),
                r["created_at"][:19],
            ]
        )
    say(
        table(
            [
                "run",
                "trigger",
                "status",
                "version",
                "events",
                "model",
                "ndcg@20",
                "gate",
                "published",
                "created",
            ],
            rows,
            right=(4, 6),
        )
    )
    return 0


def follow_run(
    client: ApiClient, name: str, run: dict[str, Any], interval_s: float
) -> dict[str, Any]:
    """Poll the run until it ends, one line on stderr each time its step or progress moves."""
    last = ""
    while True:
        line = f"run {run['run_id'][:12]}: {run['status']}"
        for field, step in reversed(STEPS):  # the newest step the run has reached
            if run.get(field):
                line += (
                    f", {step} job {run[field][:12]} {progress_text(client.get_job(run[field]))}"
                )
                break
        if line != last:
            warn(line)
            last = line
        if run["status"] in RUN_ENDED:
            return run
        time.sleep(interval_s)
        run = client.pipeline_run(name, run["run_id"])


def cmd_run(client: ApiClient, args: argparse.Namespace) -> int:
    body = {"min_new_events": args.min_new_events} if args.min_new_events is not None else None
    run = client.run_pipeline(args.name, body)
    if not args.wait:
        if args.json:
            _print_json(run)
        else:
            say(f"run {run['run_id']} queued; follow it with `unkd pipelines runs {args.name}`")
        return 0
    try:
        run = follow_run(client, args.name, run, args.interval)
    except KeyboardInterrupt:
        warn(f"\nstopped waiting; run {run['run_id']} goes on")
        return 130
    if args.json:
        _print_json(run)
    else:
        say(run_line(run))
        for line in gate_lines(run):
            say(line)
        for key, value in sorted((run.get("metrics") or {}).items()):
            say(f"  {key} {fmt(value)}")
    return 0 if run["status"] in ("succeeded", "skipped") else 1


# fmt: off
def register(sub: argparse._SubParsersAction) -> None:
    """Add `pipelines` to the `unkd` parser."""
    common, waiting = _common(), _waiting()
    pipelines = sub.add_parser("pipelines", help="save, run and follow pipelines (retrain, distil, gate, publish)")
    psub = pipelines.add_subparsers(dest="pipelines_command", required=True, metavar="COMMAND")
    p = _leaf(psub, "put", cmd_put, "create or replace a pipeline from a JSON recipe (an admin key)", [common])
    p.add_argument("name", metavar="NAME")
    p.add_argument("--file", required=True, metavar="FILE", help="the recipe (docs/service.md \"Pipelines\"); '-': stdin")
    p = _leaf(psub, "list", cmd_list, "every pipeline, newest first", [common])
    p.add_argument("--limit", type=_count, default=50)
    for name, handler, help_ in (("show", cmd_show, "a pipeline's recipe (JSON)"),
                                 ("delete", cmd_delete, "remove a pipeline (an admin key)")):
        _leaf(psub, name, handler, help_, [common]).add_argument("name", metavar="NAME")
    p = _leaf(psub, "run", cmd_run, "run a pipeline now (a write key)", [common, waiting])
    p.add_argument("name", metavar="NAME")
    p.add_argument("--min-new-events", type=int, metavar="N",
                   help="this run's threshold instead of the recipe's (0: train without new events)")
    p = _leaf(psub, "runs", cmd_runs, "a pipeline's runs, newest first, with their gate answers", [common])
    p.add_argument("name", metavar="NAME")
    p.add_argument("--limit", type=_count, default=20)
# fmt: on
