"""`unkd report`: the offline report and comparison pages, and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from tests.report_samples import sample_family


def test_report_page_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = sample_family(tmp_path / "m")
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(dirs["student-unkd-1"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "student-unkd-1" in page
    assert page.count('<rect class="bar') == 4 * 2 + 4 * 3 and "<a href" not in page


def test_comparison_page_offline(tmp_path: Path) -> None:
    dirs = list(sample_family(tmp_path / "m").values())
    out = tmp_path / "compare.html"
    assert main(["report", str(dirs[0]), "--compare", *map(str, dirs[1:]), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count('<rect class="bar') == 4 * 4 + 4 * 5 and 'class="num best"' in page


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = sample_family(tmp_path / "a", methods=("unkd",))["student-unkd-1"]
    b = sample_family(tmp_path / "b", methods=("rd",), fingerprint="e" * 32)["student-rd-1"]
    out = tmp_path / "x.html"
    assert main(["report", str(a), "--compare", str(b), "--out", str(out)]) == 2
    assert "error: model 'student-rd-1' was trained on dataset 'eeee" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--out", str(out)]) == 2
    assert "no report.json" in capsys.readouterr().err
    assert main(["report", str(a), "--compare", str(a), "--out", str(out)]) == 2
    assert "given twice" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{not json")
    assert main(["report", str(tmp_path / "bad"), "--out", str(out)]) == 2
    assert "report.json: not valid JSON" in capsys.readouterr().err
    assert not out.exists()
