"""Request bodies from the command line: `unkd jobs submit` and `unkd models publish`.

A job body is the JSON POST /v1/jobs documents (service/api/schemas.py: TeacherJobRequest,
DistillJobRequest; a publish takes PublishRequest's body), built in three layers: a raw
`--body FILE` ('-': stdin), then the flags given (a flag not given sends nothing, so the
API's defaults apply), then each `--set FIELD=VALUE`. Nothing is validated here beyond
what a request needs to be sent at all; the API answers 422 naming the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Flags that set a field of a job body: argparse dest -> body field.
BODY_FIELDS = {
    "dataset": "dataset_id",
    "teacher": "teacher_id",
    "model": "model",
    "method": "method",
    "student_model": "student_model",
    "dim": "dim",
    "lambda_kd": "lambda_kd",
    "epochs": "epochs",
    "seed": "seed",
}
# The field each kind cannot go without, and its flag.
REQUIRED = {"teacher": ("dataset_id", "--dataset"), "distill": ("teacher_id", "--teacher")}


class UsageError(Exception):
    """A command line the client cannot turn into a request: exit status 2."""


def read_body(source: str) -> dict[str, Any]:
    """The JSON object of `--body FILE` ('-': stdin)."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        body = json.loads(text)
    except OSError as exc:
        raise UsageError(f"--body {source}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"--body {source}: not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise UsageError(f"--body {source}: expected a JSON object, got {type(body).__name__}")
    return body


def assign(body: dict[str, Any], assignment: str) -> None:
    """`--set a.b=VALUE`: body["a"]["b"] = VALUE, read as JSON when it parses (numbers,
    true, lists), else as a string."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise UsageError(
            f"--set {assignment!r}: expected FIELD=VALUE, e.g. --set epochs=20 or --set unkd.groups=4"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    *parents, leaf = path.split(".")
    node = body
    for name in parents:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise UsageError(f"--set {assignment!r}: {name} is not an object")
        node = child
    node[leaf] = value


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /v1/jobs body (or, for `publish`, the publish body) of `jobs submit KIND`:
    `--body` first, then the flags given, then each `--set`."""
    body = read_body(args.body) if args.body else {}
    if args.kind == "publish":
        return publish_body(body, args)
    if body.setdefault("kind", args.kind) != args.kind:
        raise UsageError(f"--body says kind {body['kind']!r}, the command {args.kind!r}")
    body.update(
        {
            field: getattr(args, dest)
            for dest, field in BODY_FIELDS.items()
            if getattr(args, dest, None) is not None
        }
    )
    if getattr(args, "publish", False):
        body["publish"] = True
    if getattr(args, "force", False):
        body["force"] = True
    if args.tune is not None:
        body["tune"] = {**(body.get("tune") or {}), "trials": args.tune}
    for assignment in args.set or ():
        assign(body, assignment)
    field, flag = REQUIRED[args.kind]
    if not body.get(field):
        raise UsageError(f"a {args.kind} job needs {flag} ID (or {field} in --body)")
    return body


def publish_body(body: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The POST /v1/models/{id}/publish body: `body` with the gate's overrides given."""
    if args.force:
        body["force"] = True
    if getattr(args, "stage", False):
        body["activate"] = False
    for field in ("max_head_share_ratio", "min_ndcg_ratio"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    return body
