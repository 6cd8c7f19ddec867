"""What the client prints: aligned tables, job summaries and the progress bar of a job.

Tables and summaries go to stdout; the progress bar (tqdm, on the job's `progress`
fields as GET /v1/jobs/{id} reports them) goes to stderr, so `--json` output on stdout
stays machine-readable while a bar runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from service.client.api import TERMINAL, JobStatus

HEADLINE = ("ndcg@20", "recall@20", "head_share@20")  # the model figures `models list` shows


def say(text: str = "") -> None:
    """A line of the command's output (stdout)."""
    sys.stdout.write(f"{text}\n")


def warn(text: str) -> None:
    """A line for the person at the terminal (stderr): errors, hints, notes."""
    sys.stderr.write(f"{text}\n")


def fmt(value: Any) -> str:
    """A cell: floats with 4 decimals (1 from 100 up), None as '-'."""
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return "-" if value is None else str(value)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = ()
) -> str:
    """Rows under a header and a rule, columns padded to their widest cell; the columns
    numbered in `right` are right-aligned (numbers)."""
    cells = [list(headers), *[[fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def progress_text(status: JobStatus) -> str:
    """`epoch 12/400`, `trial 3/20`, or the stage while neither is known."""
    p = status["progress"]
    if p.get("trials"):
        return f"trial {p['trial']}/{p['trials']}"
    if p.get("epochs"):
        return f"epoch {p['epoch']}/{p['epochs']}"
    return p.get("stage") or status["status"]


def job_summary(status: JobStatus) -> str:
    """One line: `job <id> (<kind>) <status>[ in Ns][: model <id>][: <error>]`."""
    text = f"job {status['id']} ({status['kind']}) {status['status']}"
    elapsed = status["timings"].get("elapsed_s")
    if status["status"] in TERMINAL and elapsed is not None:
        text += f" in {elapsed:.1f}s"
    if status["status"] == "succeeded" and status.get("model_id"):
        text += f": model {status['model_id']}"
        cap = status.get("head_share_cap")
        if cap:  # a capped student: met or missed, with both figures (never silent)
            met = "met" if cap["met"] else "MISSED"
            sign = "<=" if cap["met"] else ">"
            text += (
                f"; head-share cap {met}: {cap['student']:.4f} {sign} teacher's "
                f"{cap['teacher']:.4f}"
            )
    elif status.get("error"):
        text += f": {status['error']}"
    return text


def job_details(status: JobStatus) -> str:
    """`jobs show`: one field per line."""
    timings = status["timings"]
    rows: list[tuple[str, Any]] = [
        ("id", status["id"]),
        ("kind", status["kind"]),
        ("status", status["status"]),
        ("progress", progress_text(status)),
        ("stage", status["progress"].get("stage")),
        ("model", status.get("model_id")),
        ("error", status.get("error")),
        ("attempts", status.get("attempts")),
        ("cancel requested", status.get("cancel_requested")),
        ("queued at", timings.get("queued_at")),
        ("started at", timings.get("started_at")),
        ("finished at", timings.get("finished_at")),
        ("elapsed s", timings.get("elapsed_s")),
    ]
    rows += [(f"metric {name}", value) for name, value in sorted(status.get("metrics", {}).items())]
    for name, value in status.get("params", {}).items():
        rows.append((f"param {name}", value))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {fmt(value)}" for name, value in rows)


class JobBar:
    """A tqdm bar over a job's epochs (or a tuning job's trials), fed each polled status.

    The postfix shows the status, the stage and the latest loss and validation NDCG@20.
    """

    # Until the job reports epochs or trials (queued, starting, a publish job): no counter.
    NO_COUNT = "{desc}: {elapsed}{postfix}"

    def __init__(self, status: JobStatus, file: TextIO | None = None) -> None:
        from tqdm import tqdm  # only a waiting command pays for it

        self.bar = tqdm(
            total=None,
            desc=f"{status['kind']} {status['id'][:12]}",
            unit="epoch",
            bar_format=self.NO_COUNT,
            file=file or sys.stderr,
            dynamic_ncols=True,
            leave=True,
            mininterval=0,
        )

    def update(self, status: JobStatus) -> None:
        p = status["progress"]
        if p.get("trials"):
            self.bar.unit, self.bar.total, self.bar.n = "trial", p["trials"], p["trial"]
        elif p.get("epochs"):
            self.bar.unit, self.bar.total, self.bar.n = "epoch", p["epochs"], p["epoch"]
        if self.bar.total is not None:
            self.bar.bar_format = None  # tqdm's own: bar, count, rate
        if status["status"] in TERMINAL and not p.get("trials") and p.get("epoch"):
            # early stopping: the bar ends where training did, not at the epoch bound
            self.bar.total = self.bar.n = p["epoch"]
        post = {"status": status["status"], "stage": p.get("stage")}
        metrics = status.get("metrics", {})
        if "loss" in metrics:
            post["loss"] = f"{metrics['loss']:.4f}"
        if "valid_ndcg@20" in metrics:
            post["ndcg@20"] = f"{metrics['valid_ndcg@20']:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
