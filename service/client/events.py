"""`unkd events push FILE`: a file of user events into POST /v1/events, in batches.

The file is CSV with a header row (columns user_id, item_id, type, and optionally ts,
rec_id, event_id) or JSON lines (one event object per line); `-` reads stdin. A `.jsonl`
or `.ndjson` name, or a first character `{`, means JSON lines.

Every event is sent with an event_id: the file's own, else one made from the file's name,
the line number and the line, so pushing the same file again (after an interruption, say)
stores nothing twice. A batch refused for being unreachable or 503 (Redis down) is sent
again, a few times, before the command gives up; a 422 stops it at once, naming the line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.client.api import ApiClient, ApiError, ApiUnreachable
from service.client.bodies import UsageError

FIELDS = ("user_id", "item_id", "type", "ts", "rec_id", "event_id")
RETRIES = 5
RETRY_PAUSE_S = 1.0


def _event_id(source: str, line_no: int, line: str) -> str:
    return hashlib.sha1(f"{source}\n{line_no}\n{line}".encode()).hexdigest()[:32]


def read_events(text: str, source: str, json_lines: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, event) for each event of a file's text; UsageError on a malformed line."""
    if json_lines:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{source} line {n}: not JSON ({exc.msg})") from None
            if not isinstance(event, dict):
                raise UsageError(f"{source} line {n}: expected a JSON object")
            event.setdefault("event_id", _event_id(source, n, line))
            yield n, event
        return
    reader = csv.DictReader(io.StringIO(text))
    missing = [f for f in FIELDS[:3] if f not in (reader.fieldnames or [])]
    if missing:
        raise UsageError(f"{source}: the CSV header lacks {', '.join(missing)}")
    for row in reader:
        n = reader.line_num
        fields: dict[str, Any] = {
            k: v for k, v in row.items() if k in FIELDS and v not in (None, "")
        }
        if "ts" in fields:
            try:
                fields["ts"] = float(fields["ts"])
            except ValueError:
                raise UsageError(
                    f"{source} line {n}: ts={fields['ts']!r} is not a number"
                ) from None
        fields.setdefault(
            "event_id", _event_id(source, n, ",".join(row.get(f) or "" for f in FIELDS))
        )
        yield n, fields


def _send(client: ApiClient, batch: list[dict[str, Any]]) -> dict[str, int]:
    """POST one batch, again after a pause while the API is unreachable or answers 503."""
    for attempt in range(RETRIES):
        try:
            return client.post_events(batch)
        except ApiUnreachable:
            if attempt == RETRIES - 1:
                raise
        except ApiError as exc:
            if exc.status != 503 or attempt == RETRIES - 1:
                raise
        time.sleep(RETRY_PAUSE_S)
    raise AssertionError("unreachable")  # the loop returns or raises


def push(client: ApiClient, path: str, batch_size: int, *, progress: bool = True) -> dict[str, int]:
    """Send the events of `path` in batches; returns the summed counts of the 202 answers.

    Raises:
        UsageError: the file is missing or malformed.
        ApiError: the API refused a batch (a 422 names the file's line).
    """
    if path == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        source = Path(path).name
    json_lines = path.endswith((".jsonl", ".ndjson")) or text.lstrip().startswith("{")
    events = list(read_events(text, source, json_lines))
    totals = {"received": 0, "stored": 0, "duplicates": 0}
    from tqdm import tqdm  # only this command pays for it

    with tqdm(
        total=len(events), unit="event", file=sys.stderr, disable=not progress, desc="events"
    ) as bar:
        for start in range(0, len(events), batch_size):
            chunk = events[start : start + batch_size]
            try:
                answer = _send(client, [e for _, e in chunk])
            except ApiError as exc:
                if exc.status == 422:
                    exc.detail = _with_lines(exc.detail, [n for n, _ in chunk], source)
                raise
            for name in totals:
                totals[name] += int(answer[name])
            bar.update(len(chunk))
            bar.set_postfix(stored=totals["stored"], duplicates=totals["duplicates"], refresh=False)
    return totals


def _with_lines(detail: str, lines: list[int], source: str) -> str:
    """A 422's `body.events.<i>.<field>` also as the file's line number."""
    for i, n in enumerate(lines):
        detail = detail.replace(f"body.events.{i}.", f"{source} line {n}: ", 1)
    return detail
