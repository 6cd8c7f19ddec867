"""`unkd jobs`, `unkd models`, `unkd recommend`: the REST API from a terminal.

    unkd jobs submit teacher --dataset ID [--model ease] [--dim N] [--tune N] [--wait]
    unkd jobs submit distill --teacher ID [--method unkd] [--dim 10] [--lambda X] [--publish] [--wait]
    unkd jobs submit publish MODEL_ID [--force | --stage] [--wait]
    unkd jobs list [--state running] [--kind distill] [--limit 20]
    unkd jobs show ID [--wait]          unkd jobs cancel ID
    unkd models list                    unkd models publish ID [--force | --stage] [--wait]
    unkd recommend USER [-k 20] [--exclude ITEM ...] [--fallback debiased]
    unkd events push FILE [--batch 500]   (CSV or JSON lines; service/client/events.py)

Every command takes `--api URL` (default $UNKD_API_URL, else http://127.0.0.1:8000), sends
the key in $UNKD_API_KEY (or the variable `--key-env` names) as `Authorization: Bearer`,
and prints a table, or the API's JSON with `--json`. Exit status: 0 done, 1 the API
refused (its `detail` on stderr, one line), could not be reached, or a waited-for job did
not succeed, 2 a usage error, 130 interrupted while waiting (the job goes on).

`register(subparsers)` adds the commands to the `unkd` parser (service/cli.py); request
bodies are built from the flags in bodies.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable
from typing import Any

from service.client.api import (
    TERMINAL,
    ApiClient,
    ApiError,
    ApiUnreachable,
    JobAccepted,
    JobStatus,
)
from service.client.bodies import UsageError, job_body, publish_body
from service.client.events import push
from service.client.output import (
    HEADLINE,
    JobBar,
    job_details,
    job_summary,
    progress_text,
    say,
    table,
    warn,
)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "UNKD_API_URL"
KEY_ENV = "UNKD_API_KEY"
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_KINDS = ("teacher", "distill", "publish")

Handler = Callable[[ApiClient, argparse.Namespace], int]


def _print_json(body: Any) -> None:
    say(json.dumps(body, indent=2))


def _fail(message: str) -> int:
    warn(f"error: {message}")
    return 1


def _error_line(exc: ApiError, args: argparse.Namespace) -> str:
    """The API's detail, the status, and what to do about a missing or refused key."""
    line = f"{exc.detail} (HTTP {exc.status})"
    if exc.status == 401 and not os.environ.get(args.key_env):
        line += f"; set {args.key_env} to an API key (or name another variable with --key-env)"
    elif exc.status == 403 and "not accepted" in exc.detail:
        line += f"; the key was read from ${args.key_env}"
    return line


def api_command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Run `handler` with a client of `--api`; turn every failure into one line on stderr
    and the exit status (1 the API refused or is unreachable, 2 usage)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        url = args.api or os.environ.get(URL_ENV) or DEFAULT_URL
        try:
            key = os.environ.get(args.key_env) or None
            with ApiClient(url, key, timeout_s=args.timeout) as client:
                return handler(client, args)
        except UsageError as exc:
            warn(f"{args.prog}: error: {exc}")
            return 2
        except ApiUnreachable as exc:
            return _fail(f"{exc}; start it with `unkd up`, or point --api / ${URL_ENV} at it")
        except ApiError as exc:
            warn(f"error: {_error_line(exc, args)}")
            if exc.status == 409 and "publish gate" in exc.detail and hasattr(args, "model_id"):
                warn(
                    f"hint: publish it anyway with `unkd models publish {args.model_id} --force` (an admin "
                    "key; recorded in the publish history), or relax the rule for this publish only with "
                    "--max-head-share-ratio / --min-ndcg-ratio"
                )
            return 1

    return run


# -- waiting for a job -------------------------------------------------------------------------


def follow(client: ApiClient, job_id: str, args: argparse.Namespace) -> int:
    """Poll the job with a progress bar on stderr until it ends; 0 if it succeeded."""
    bar: JobBar | None = None
    status: JobStatus | None = None
    try:
        for status in client.watch_job(job_id, interval_s=args.interval):
            if bar is None and status["status"] in TERMINAL:
                break  # over already: the summary says it all
            bar = bar or JobBar(status)
            bar.update(status)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        warn(
            f"\nstopped waiting; job {job_id} goes on (`unkd jobs show {job_id} --wait` to follow it, "
            f"`unkd jobs cancel {job_id}` to stop it)"
        )
        return 130
    if bar is not None:
        bar.close()
    if status is None:  # watch_job yields at least once; for the type checker
        raise RuntimeError(f"job {job_id}: no status")
    if args.json:
        _print_json(status)
    if status["status"] != "succeeded":
        return _fail(job_summary(status))
    if not args.json:
        say(job_summary(status))
    return 0


def _accepted(client: ApiClient, accepted: JobAccepted, args: argparse.Namespace, what: str) -> int:
    if args.wait:
        warn(f"{what} {accepted['id']} queued")
        return follow(client, accepted["id"], args)
    if args.json:
        _print_json(accepted)
    else:
        say(
            f"{what} {accepted['id']} queued; follow it with `unkd jobs show {accepted['id']} --wait`"
        )
    return 0


# -- jobs --------------------------------------------------------------------------------------


def cmd_jobs_submit(client: ApiClient, args: argparse.Namespace) -> int:
    body = job_body(args)
    if args.kind == "publish":
        accepted = client.publish_model(args.model_id, body)
        return _accepted(client, accepted, args, f"publish job for {args.model_id}:")
    accepted = client.submit_job(body)
    return _accepted(client, accepted, args, f"{args.kind} job")


def cmd_jobs_list(client: ApiClient, args: argparse.Namespace) -> int:
    page = client.list_jobs(status=args.state, kind=args.kind, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(page)
        return 0
    rows = [
        [
            j["id"],
            j["kind"],
            j["status"],
            progress_text(j),
            j.get("model_id"),
            (j["timings"].get("queued_at") or "")[:19],
            (j.get("error") or "")[:60],
        ]
        for j in page["items"]
    ]
    say(table(["id", "kind", "status", "progress", "model", "queued at", "error"], rows))
    _more(len(page["items"]), page["total"], args.offset, "jobs")
    return 0


def _more(shown: int, total: int, offset: int, what: str) -> None:
    if offset + shown < total:
        say(f"({shown} of {total} {what}; --offset {offset + shown} for more)")


def cmd_jobs_show(client: ApiClient, args: argparse.Namespace) -> int:
    if args.wait:
        return follow(client, args.job_id, args)
    status = client.get_job(args.job_id)
    if args.json:
        _print_json(status)
    else:
        say(job_details(status))
    return 0


def cmd_jobs_cancel(client: ApiClient, args: argparse.Namespace) -> int:
    status = client.cancel_job(args.job_id)
    if args.json:
        _print_json(status)
    elif status["status"] == "cancelled":
        say(f"job {status['id']} cancelled")
    else:
        say(
            f"job {status['id']}: cancel requested; it is {status['status']} and stops at its "
            "next epoch boundary"
        )
    return 0


# -- models ------------------------------------------------------------------------------------


def cmd_models_list(client: ApiClient, args: argparse.Namespace) -> int:
    page = client.list_models(limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(page)
        return 0
    rows = [
        [
            "*" if m.get("active") else "",
            m["id"],
            m["kind"],
            m["model"] + (f"/{m['method']}" if m.get("method") else ""),
            m["dim"],
            m.get("lineage", {}).get("dataset_id"),
            m.get("lineage", {}).get("teacher_id"),
            *(m.get("metrics", {}).get(h) for h in HEADLINE),
        ]
        for m in page["items"]
    ]
    say(
        table(
            ["served", "id", "kind", "model", "dim", "dataset", "teacher", *HEADLINE],
            rows,
            right=(4, 7, 8, 9),
        )
    )
    _more(len(page["items"]), page["total"], args.offset, "models")
    return 0


def cmd_models_publish(client: ApiClient, args: argparse.Namespace) -> int:
    accepted = client.publish_model(args.model_id, publish_body({}, args))
    return _accepted(client, accepted, args, f"publish job for {args.model_id}:")


# -- recommendations ---------------------------------------------------------------------------


def cmd_recommend(client: ApiClient, args: argparse.Namespace) -> int:
    if not args.user:
        raise UsageError("USER must not be empty")
    flat = [item for group in args.exclude or () for item in group]
    allow = [item for group in args.include or () for item in group]
    groups = [g for group in args.groups or () for g in group]
    answer = client.recommend(
        args.user,
        k=args.k,
        exclude_seen=not args.include_seen,
        exclude=flat,
        include=allow,
        groups=groups,
        fallback=args.fallback,
    )
    if args.json:
        _print_json(answer)
        return 0
    how = f", fallback {answer['fallback']}" if answer.get("fallback") else ""
    items = answer.get("items", [])
    say(f"user {args.user}: top {len(items)} from model {answer.get('model_id')}{how}")
    rows = [[rank, it["item_id"], it["score"], it["group"]] for rank, it in enumerate(items, 1)]
    say(table(["rank", "item", "score", "group"], rows, right=(0, 2, 3)))
    for field, ids in (answer.get("unknown_items") or {}).items():
        warn(f"note: {field}: ids the served model does not know, ignored: {' '.join(ids)}")
    return 0


def cmd_events_push(client: ApiClient, args: argparse.Namespace) -> int:
    totals = push(client, args.file, args.batch, progress=not args.json)
    if args.json:
        _print_json(totals)
    else:
        say(
            f"{totals['received']} events sent: {totals['stored']} stored, "
            f"{totals['duplicates']} already stored (repeated event_id)"
        )
    return 0


# -- the parser --------------------------------------------------------------------------------


# fmt: off
def _common() -> argparse.ArgumentParser:
    """Options of every client command."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection and output")
    g.add_argument("--api", metavar="URL", help=f"the API's root URL (default: ${URL_ENV}, else {DEFAULT_URL})")
    g.add_argument("--key-env", metavar="NAME", default=KEY_ENV,
                   help=f"environment variable holding the API key, sent as 'Authorization: Bearer' "
                        f"(default: {KEY_ENV})")
    g.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for each answer (default: 30)")
    g.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    return common


def _waiting() -> argparse.ArgumentParser:
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", action="store_true",
                         help="follow the job with a progress bar until it ends; exit 1 unless it succeeds")
    waiting.add_argument("--interval", type=float, default=0.5, metavar="S",
                         help="seconds between polls (default: 0.5)")
    return waiting


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _leaf(sub: argparse._SubParsersAction, name: str, handler: Handler, help_: str,
          parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_, parents=parents)
    p.set_defaults(func=api_command(handler), prog=p.prog)
    return p


def _publish_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_id", metavar="MODEL_ID")
    p.add_argument("--force", action="store_true", help="publish even if the publish gate refuses (an admin key)")
    p.add_argument("--stage", action="store_true",
                   help="build and store the serving bundle without serving it, for an experiment arm (no gate)")
    p.add_argument("--max-head-share-ratio", type=float, metavar="X",
                   help="this publish only: a student's head_share@20 at most X times its teacher's")
    p.add_argument("--min-ndcg-ratio", type=float, metavar="X",
                   help="this publish only: ndcg@20 at least X times the served model's")


def _job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--body", metavar="FILE", help="a JSON job body to start from ('-': stdin); flags override it")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="any other body field, dotted for nested ones: --set epochs=20 --set unkd.groups=4")
    p.add_argument("--dim", type=int, help="embedding size (default: the API's)")
    p.add_argument("--epochs", type=int, help="at most this many epochs (default: the API's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--tune", type=_count, metavar="N", help="an Optuna study of N trials (docs/tuning.md)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `jobs`, `models` and `recommend` to the `unkd` parser."""
    common, waiting = _common(), _waiting()

    jobs = sub.add_parser("jobs", help="submit, list, show and cancel jobs of a running API")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    submit = jsub.add_parser("submit", help="submit a job: teacher | distill | publish")
    ksub = submit.add_subparsers(dest="kind", required=True, metavar="KIND")
    p = _leaf(ksub, "teacher", cmd_jobs_submit, "train a teacher on a dataset", [common, waiting])
    p.add_argument("--dataset", metavar="ID", help="the dataset to train on (required unless in --body)")
    p.add_argument("--model", metavar="NAME", help="als | ease | mf | lightgcn (default: the API's: ease, als on large catalogues)")
    _job_flags(p)
    p = _leaf(ksub, "distill", cmd_jobs_submit, "distil a teacher into a small student", [common, waiting])
    p.add_argument("--teacher", metavar="ID", help="the teacher model (required unless in --body)")
    p.add_argument("--method", metavar="NAME", help="unkd | rd | cd | rrd | none (default: unkd)")
    p.add_argument("--student-model", metavar="NAME", help="mf | lightgcn (default: mf)")
    p.add_argument("--lambda", dest="lambda_kd", type=float, metavar="X", help="weight of the distillation loss")
    p.add_argument("--publish", action="store_true", help="publish the student when it succeeds (an admin key)")
    p.add_argument("--force", action="store_true", help="with --publish: even if the publish gate refuses")
    _job_flags(p)
    p = _leaf(ksub, "publish", cmd_jobs_submit, "publish a model (as `unkd models publish`)", [common, waiting])
    _publish_flags(p)
    p.add_argument("--body", metavar="FILE", help="a JSON publish body to start from ('-': stdin)")

    p = _leaf(jsub, "list", cmd_jobs_list, "list jobs, newest first", [common])
    p.add_argument("--state", "--status", dest="state", choices=JOB_STATES)
    p.add_argument("--kind", choices=JOB_KINDS)
    p.add_argument("--limit", type=_count, default=20)
    p.add_argument("--offset", type=int, default=0)
    p = _leaf(jsub, "show", cmd_jobs_show, "a job's status, progress, metrics and result", [common, waiting])
    p.add_argument("job_id", metavar="ID")
    p = _leaf(jsub, "cancel", cmd_jobs_cancel, "cancel a job (queued: now; running: at its next epoch)", [common])
    p.add_argument("job_id", metavar="ID")

    models = sub.add_parser("models", help="list and publish the models of a running API")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    p = _leaf(msub, "list", cmd_models_list, "teachers and students, newest first; * marks the served one",
              [common])
    p.add_argument("--limit", type=_count, default=20)
    p.add_argument("--offset", type=int, default=0)
    p = _leaf(msub, "publish", cmd_models_publish, "serve a model (an admin key); the publish gate may refuse (409)",
              [common, waiting])
    _publish_flags(p)

    p = _leaf(sub, "recommend", cmd_recommend, "top-k items for a user from the served model", [common])
    p.add_argument("user", metavar="USER")
    p.add_argument("-k", "--k", type=_count, default=20, help="items (default: 20)")
    p.add_argument("--exclude", nargs="+", action="append", metavar="ITEM", help="never these items")
    p.add_argument("--include", nargs="+", action="append", metavar="ITEM", help="only these items")
    p.add_argument("--groups", nargs="+", action="append", type=int, metavar="G",
                   help="only these popularity groups (0 = head)")
    p.add_argument("--fallback", choices=["popular", "debiased"],
                   help="answer a user the model does not know with this list instead of 404")
    p.add_argument("--include-seen", action="store_true", help="keep the user's training items")

    events = sub.add_parser("events", help="send user events (views, clicks, purchases) to a running API")
    esub = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    p = _leaf(esub, "push", cmd_events_push,
              "send a CSV (user_id,item_id,type[,ts,rec_id,event_id]) or JSON-lines file of events "
              "(a write key); safe to run again: each event is stored once", [common])
    p.add_argument("file", metavar="FILE", help="the events file; '-' reads stdin")
    p.add_argument("--batch", type=_count, default=500, metavar="N",
                   help="events per request (default: 500; the API takes up to 1000)")
# fmt: on
