"""`unkd report`: write a model's quality-report page, or a comparison page, offline.

    unkd report MODEL_DIR --out report.html                   one model's report
    unkd report MODEL_DIR --compare DIR [DIR …] --out c.html  several models side by side

Reads only each directory's report.json and manifest.json, through training.manifest's
readers (no Redis, no API, no torch); the pages are the ones the API serves, without links
between them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


def cmd_report(args: argparse.Namespace) -> int:
    """Render the page(s) and write them to --out; 2 with one clear line on bad input."""
    from service.reports.render import render_compare_page, render_report_page
    from service.reports.views import load_model_dir

    try:
        views = [load_model_dir(Path(p)) for p in [args.model_dir, *(args.compare or [])]]
        if args.compare:
            seen: set[str] = set()
            for v in views:
                if v.id in seen:
                    raise ValueError(f"model {v.id!r} is given twice")
                seen.add(v.id)
            page = render_compare_page(views)
        else:
            page = render_report_page(views[0])
    except (OSError, ValueError) as exc:  # missing report.json, bad or invalid JSON, a model twice
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(out.resolve())
    return 0


def write_api_comparison(http: httpx.Client, model_ids: list[str], out: Path) -> Path:
    """The comparison page of registered models, read through the REST API (`unkd demo`).

    Rendered here rather than fetched from /v1/compare.html so that the saved file has
    no links into an API that may be gone when it is opened.
    """
    from service.core.records import ModelInfo
    from service.reports.render import render_compare_page
    from service.reports.views import view_from_record
    from training.manifest import QualityReport

    views = []
    names: dict[str, str] = {}
    for mid in model_ids:
        body = http.get(f"/v1/models/{mid}").raise_for_status().json()  # ModelOut
        record = ModelInfo.model_validate(body)
        report = QualityReport.model_validate(
            http.get(f"/v1/models/{mid}/report").raise_for_status().json()
        )
        dataset_id = record.lineage.dataset_id
        if dataset_id and dataset_id not in names:
            names[dataset_id] = (
                http.get(f"/v1/datasets/{dataset_id}").raise_for_status().json()["name"]
            )
        views.append(
            view_from_record(
                record,
                report,
                active=body["active"] is True,
                dataset_name=names.get(dataset_id or ""),
            )
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_compare_page(views), encoding="utf-8")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add `report` to the `unkd` parser (service/cli.py)."""
    p = sub.add_parser(
        "report", help="write a model's quality-report page (or a comparison) as HTML"
    )
    p.add_argument("model_dir", help="model directory (report.json, manifest.json)")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="DIR",
        help="more model directories of the same dataset: write the comparison page",
    )
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.set_defaults(func=cmd_report)
