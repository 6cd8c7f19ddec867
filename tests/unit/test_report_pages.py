"""Report pages: the numbers each chart plots equal the report's, the SVG draws one bar
per group and series, the comparison marks the right best values, and every page is
self-contained and escapes what it shows."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from service.core.records import ModelInfo
from service.reports.charts import (
    BarChart,
    LineChart,
    Series,
    fmt_value,
    nice_ticks,
    render_bar_chart,
    render_line_chart,
)
from service.reports.figures import (
    better,
    compare_exposure_chart,
    compare_group_recall_chart,
    comparison,
    exposure_chart,
    group_recall_chart,
    headline_rows,
    training_charts,
)
from service.reports.render import render_compare_page, render_report_page
from service.reports.views import (
    MixedDatasetsError,
    ModelView,
    check_same_dataset,
    load_model_dir,
    view_from_manifest,
    view_from_record,
)
from tests.report_samples import sample_family, sample_manifest, sample_report, student_report
from training.errors import DataError
from training.manifest import Lineage, QualityReport

SVG = "{http://www.w3.org/2000/svg}"


def svg_bars(svg: str) -> list[ET.Element]:
    """The bars of one rendered chart (parsing it also proves the markup is well-formed XML)."""
    root = ET.fromstring(svg)
    return [e for e in root.iter(f"{SVG}rect") if "bar" in e.get("class", "").split()]


def svg_points(svg: str) -> list[ET.Element]:
    return [e for e in ET.fromstring(svg).iter(f"{SVG}circle") if e.get("class") == "point"]


@pytest.fixture()
def teacher_report() -> dict:
    return sample_report(0)


@pytest.fixture()
def raw_student(teacher_report: dict) -> dict:
    """The student's report.json as a plain dict: the numbers charts must show."""
    return student_report(1, teacher_report)


@pytest.fixture()
def student(raw_student: dict) -> ModelView:
    manifest = sample_manifest(
        "student-unkd-1", kind="student", method="unkd", dim=10, teacher_id="teacher-1"
    )
    return view_from_manifest(manifest, QualityReport.model_validate(raw_student))


def test_group_recall_chart_plots_the_report_numbers(student, raw_student) -> None:
    chart = group_recall_chart(student)
    report = raw_student
    assert [s.name for s in chart.series] == ["teacher-1", "student-unkd-1"]
    assert chart.series[0].values == tuple(g["recall@20"] for g in report["teacher"]["groups"])
    assert chart.series[1].values == tuple(g["recall@20"] for g in report["groups"])
    assert chart.categories[0].startswith("G0 · head") and chart.categories[-1].startswith(
        "G3 · tail"
    )
    assert chart.bar_count == 4 * 2
    bars = svg_bars(render_bar_chart(chart))
    assert len(bars) == 8
    drawn = {
        (b.get("data-series"), b.get("data-category")): float(b.get("data-value")) for b in bars
    }
    for s in chart.series:
        for cat, value in zip(chart.categories, s.values, strict=True):
            assert drawn[(s.name, cat.split("\n")[0])] == value


def test_exposure_chart_sets_slot_shares_against_test_shares(student, raw_student) -> None:
    chart = exposure_chart(student)
    report = raw_student
    assert [s.name for s in chart.series] == [
        "share of test positives",
        "teacher's slots",
        "student-unkd-1's slots",
    ]
    assert chart.series[0].values == tuple(g["test_share"] for g in report["groups"])
    assert chart.series[1].values == tuple(
        g["exposure_share@20"] for g in report["teacher"]["groups"]
    )
    assert chart.series[2].values == tuple(g["exposure_share@20"] for g in report["groups"])
    assert chart.percent and len(svg_bars(render_bar_chart(chart))) == 4 * 3


def test_teacher_charts_have_no_teacher_series(teacher_report: dict) -> None:
    view = view_from_manifest(
        sample_manifest("t", kind="teacher", method=None, dim=64),
        QualityReport.model_validate(teacher_report),
    )
    assert len(group_recall_chart(view).series) == 1 and len(exposure_chart(view).series) == 2
    assert len(svg_bars(render_bar_chart(exposure_chart(view)))) == 4 * 2
    assert all(r.teacher is None and r.delta is None for r in headline_rows(view))


def test_other_k_and_group_count(teacher_report: dict) -> None:
    report = sample_report(3, n_groups=6)
    view = view_from_manifest(None, QualityReport.model_validate(report), model_id="m")
    chart = group_recall_chart(view, k=50)
    assert chart.series[0].values == tuple(g["recall@50"] for g in report["groups"])
    assert len(svg_bars(render_bar_chart(chart))) == 6


def test_training_curve_plots_the_history(student) -> None:
    loss, valid = training_charts(student)
    assert student.training is not None
    history = [r.model_dump() for r in student.training.history]
    assert loss.x == tuple(float(r["epoch"]) for r in history)
    assert loss.series[0].values == tuple(r["loss"] for r in history)
    assert valid.series[0].name == "NDCG@20"
    assert valid.series[0].values == tuple(r["valid_ndcg@20"] for r in history)
    assert loss.marker_x == student.training.best_epoch
    points = svg_points(render_line_chart(valid))
    assert len(points) == len(history) * 2
    assert [float(p.get("data-value")) for p in points[: len(history)]] == list(
        valid.series[0].values
    )


def test_no_history_no_curve(teacher_report: dict) -> None:
    view = view_from_manifest(None, QualityReport.model_validate(teacher_report), model_id="m")
    assert training_charts(view) == []
    assert "No training history recorded" in render_report_page(view)


def test_headline_rows_and_directions(student, raw_student) -> None:
    rows = {r.key: r for r in headline_rows(student)}
    report = raw_student
    assert set(rows) >= {
        "recall@10",
        "recall@20",
        "recall@50",
        "ndcg@50",
        "ips_recall@20",
        "ips_ndcg@20",
        "arp@20",
        "coverage@20",
        "gini@20",
        "pop_rsp@20",
        "pop_reo@20",
    }
    for key, row in rows.items():
        assert row.value == report["metrics"][key]
        assert row.teacher == report["teacher"]["metrics"][key]
        assert row.delta == report["deltas"][key]
    assert {
        better(k) for k in ("arp@20", "gini@20", "pop_rsp@20", "pop_reo@20", "head_share@20")
    } == {"lower"}
    assert better("recall@20") == better("coverage@20") == better("group1.recall@20") == "higher"
    assert better("dtr@20") == "one" and better("overlap@20") == ""
    assert better("bias_amplification.arp@20") == "lower"


def test_comparison_marks_the_best_per_row(tmp_path: Path) -> None:
    dirs = sample_family(tmp_path)
    views = [load_model_dir(p) for p in dirs.values()]
    raw = [json.loads((p / "report.json").read_text()) for p in dirs.values()]
    data = comparison(views)
    assert [m["id"] for m in data["models"]] == [
        "teacher-1",
        "student-unkd-1",
        "student-rd-1",
        "student-none-1",
    ]
    rows = {r["key"]: r for r in data["rows"]}
    recall = rows["recall@20"]["values"]
    assert rows["recall@20"]["best"] == [max(recall, key=lambda m: recall[m])]
    gini = rows["gini@20"]["values"]
    assert rows["gini@20"]["best"] == [min(gini, key=lambda m: gini[m])]
    amp = rows["bias_amplification.arp@20"]
    assert amp["values"]["teacher-1"] is None and len(amp["best"]) == 1
    for g, group in enumerate(raw[1]["groups"]):
        assert rows[f"group{g}.recall@20"]["values"]["student-unkd-1"] == group["recall@20"]
    assert json.loads(json.dumps(data)) == data  # JSON-ready as it is

    page = render_compare_page(views)
    assert page.count('class="num best"') == sum(len(r["best"]) for r in data["rows"])
    bars = svg_bars(_only_svg(page, "group-recall"))
    assert len(bars) == 4 * len(views)
    assert len(svg_bars(_only_svg(page, "exposure"))) == 4 * (len(views) + 1)
    chart = compare_group_recall_chart(views, 20)
    assert chart.series[2].values == tuple(g["recall@20"] for g in raw[2]["groups"])
    assert compare_exposure_chart(views, 20).series[0].values == tuple(
        g["test_share"] for g in raw[0]["groups"]
    )
    assert data["models"][0]["created_at"] == "2026-01-02T03:04:05Z"


def _only_svg(page: str, chart_id: str) -> str:
    start = page.index(f'data-chart="{chart_id}"')
    start = page.rindex("<svg", 0, start)
    return page[start : page.index("</svg>", start) + len("</svg>")]


def test_mixed_datasets_are_refused_naming_the_model(tmp_path: Path) -> None:
    a = sample_family(tmp_path / "a", methods=("unkd",))
    b = sample_family(tmp_path / "b", methods=("rd",), fingerprint="e" * 32)
    views = [load_model_dir(a["student-unkd-1"]), load_model_dir(b["student-rd-1"])]
    with pytest.raises(MixedDatasetsError, match="'student-rd-1' was trained on dataset 'eeee"):
        comparison(views)
    rec = ModelInfo(id="x", kind="student", model="mf", dim=8, lineage=Lineage(dataset_id="ds-1"))
    r1 = view_from_record(rec, QualityReport.model_validate(sample_report(1)))
    r2 = view_from_record(
        rec.model_copy(update={"id": "y", "lineage": Lineage(dataset_id="ds-2")}),
        QualityReport.model_validate(sample_report(2)),
    )
    with pytest.raises(
        MixedDatasetsError, match="'y' was trained on dataset 'ds-2', not on 'ds-1'"
    ):
        check_same_dataset([r1, r2])


def test_pages_escape_user_input_and_are_self_contained(teacher_report: dict) -> None:
    evil = '<script>alert("x")</script>&'
    rec = ModelInfo(
        id="m<1>",
        kind="student",
        method="unkd",
        model="mf",
        dim=8,
        lineage=Lineage(dataset_id=evil, teacher_id=evil),
        parameters={"note": evil},
    )
    report = QualityReport.model_validate(student_report(1, teacher_report))
    view = view_from_record(rec, report, dataset_name=evil)
    for page in (
        render_report_page(view, link=lambda m: f"/r/{m}"),
        render_compare_page([view, view]),
    ):
        assert "<script" not in page and "m<1>" not in page
        assert "&lt;script&gt;" in page and "m&lt;1&gt;" in page
        assert "src=" not in page and "<link" not in page
        assert page.count("http") == page.count("http://www.w3.org/2000/svg")  # no network


def test_real_report_from_training_evaluation(tiny_dataset) -> None:
    from training.evaluation import attach_teacher, evaluate_topk, most_popular_topk

    users_lists = most_popular_topk(
        tiny_dataset, __import__("numpy").arange(tiny_dataset.n_users), 50
    )
    report = evaluate_topk(tiny_dataset, users_lists)
    student = QualityReport.model_validate(attach_teacher(report, report))
    view = view_from_manifest(None, student, model_id="most-popular")
    chart = exposure_chart(view)
    assert chart.series[-1].values == tuple(g["exposure_share@20"] for g in report["groups"])
    page = render_report_page(view)
    assert len(svg_bars(_only_svg(page, "group-recall"))) == 2 * report["protocol"]["groups"]
    rows = {r.key: r for r in headline_rows(view)}
    assert (
        rows["pop_reo@20"].value == report["metrics"]["pop_reo@20"]
        and rows["pop_reo@20"].delta == 0
    )


PROTOCOL = sample_report(0)["protocol"] | {"ks": [20], "groups": 1}
GROUP = {
    "group": 0,
    "items": 5,
    "catalog_share": 1.0,
    "train_share": 1.0,
    "test_share": 1.0,
    "users": 3,
}


def test_minimal_and_empty_reports_still_render() -> None:
    minimal = QualityReport.model_validate(
        {
            "protocol": PROTOCOL,
            "users_evaluated": 3,
            "metrics": {"recall@20": 0.5},
            "groups": [GROUP | {"recall@20": 0.7}],
            "teacher": {"metrics": {}, "groups": []},
        }
    )
    view = view_from_record(ModelInfo(id="m", kind="student", model="mf", dim=4), minimal)
    assert not view.has_teacher  # a teacher part without groups draws no teacher bars
    assert len(svg_bars(_only_svg(render_report_page(view), "group-recall"))) == 1
    empty = view_from_manifest(
        None,
        QualityReport(protocol=PROTOCOL, users_evaluated=0, metrics={}, groups=[]),
        model_id="x",
    )
    assert "<!DOCTYPE html>" in render_report_page(empty)
    assert "<!DOCTYPE html>" in render_compare_page([view, empty]) and render_compare_page([])


def test_invalid_report_names_the_file_and_field(tmp_path: Path) -> None:
    bad = sample_report(0)
    bad["groups"][1]["recall@20"] = "high"
    (tmp_path / "report.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"report\.json: .*'groups\.1\.recall@20'"):
        load_model_dir(tmp_path)


def test_chart_helpers() -> None:
    assert nice_ticks(0, 0.27) == [0.0, 0.1, 0.2, 0.3]
    assert nice_ticks(1.365, 1.39) == [1.365, 1.37, 1.375, 1.38, 1.385, 1.39]
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert (
        fmt_value(None) == "–"
        and fmt_value(0.1234, percent=True) == "12.3%"
        and fmt_value(123.4) == "123"
    )
    chart = BarChart("c", "t", ("a", "b"), (Series("s", (None, 0.5), "#000"),), "y")
    bars = svg_bars(render_bar_chart(chart))
    assert len(bars) == 2 and bars[0].get("data-value") == "" and "missing" in bars[0].get("class")
    line = LineChart("l", "t", (1.0, 2.0, 3.0), (Series("s", (0.1, None, 0.3), "#000"),), "x", "y")
    assert len(svg_points(render_line_chart(line))) == 2


def test_renderer_imports_no_web_framework_or_torch() -> None:
    code = (
        "import sys, service.reports.render, service.reports.figures, service.reports.charts; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
