"""bench/reliability_report.py: the table of docs/reliability.md, and a non-zero exit when a
row of it was not run or lacks a figure (a partial run must not pass for the whole table)."""

from __future__ import annotations

import importlib.util
import json
import string
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "reliability_report.py"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def complete_artifact(report: ModuleType) -> dict[str, dict[str, Any]]:
    """Every expected row with every figure its template reads."""
    data: dict[str, dict[str, Any]] = {}
    for key, _test, template in report.ROWS:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        data[key] = {"fault": f"fault {key}", "requests_served": 7, **{name: 1 for name in fields}}
    return data


def run(
    report: ModuleType, tmp_path: Path, data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    artifact = tmp_path / "reliability.json"
    artifact.write_text(json.dumps(data))
    rc = report.main([str(artifact)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_complete_artifact_prints_every_row_and_exits_0(
    report: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(report, tmp_path, complete_artifact(report), capsys)
    assert rc == 0 and err == ""
    rows = out.splitlines()[2:]
    assert len(rows) == len(report.ROWS) and "not run" not in out and "lacks" not in out
    assert rows[0].startswith(f"| fault {report.ROWS[0][0]} | `{report.ROWS[0][1]}` | 7 | – | – |")


def test_a_row_not_run_exits_1_and_names_it(
    report: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = complete_artifact(report)
    key, test, _ = report.ROWS[3]
    del data[key]
    rc, out, err = run(report, tmp_path, data, capsys)
    assert rc == 1
    assert f"| {key} | `{test}` | – | – | – | not run |" in out  # the table still prints
    assert f"1 of {len(report.ROWS)} rows incomplete" in err and f"{key} ({test}): not run" in err


def test_a_row_lacking_a_figure_exits_1(
    report: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = complete_artifact(report)
    key = report.ROWS[0][0]
    del data[key]["final_status"]
    rc, out, err = run(report, tmp_path, data, capsys)
    assert rc == 1 and "(artifact lacks 'final_status')" in out
    assert f"{key} (" in err and "artifact lacks 'final_status'" in err


def test_empty_or_missing_artifact_exits_1(
    report: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(report, tmp_path, {}, capsys)
    assert rc == 1 and out.count("not run") == len(report.ROWS)
    assert f"{len(report.ROWS)} of {len(report.ROWS)} rows incomplete" in err
    assert report.main([str(tmp_path / "absent.json")]) == 1
    assert "not found" in capsys.readouterr().err


def test_every_row_names_an_existing_reliability_test(report: ModuleType) -> None:
    keys = [key for key, _, _ in report.ROWS]
    assert len(set(keys)) == len(keys)
    for _key, test, _template in report.ROWS:
        file, func = test.split("::")
        source = SCRIPT.parents[1] / "tests" / "reliability" / file
        assert source.is_file() and f"def {func}(" in source.read_text(), test
