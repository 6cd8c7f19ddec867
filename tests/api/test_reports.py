"""Report pages, comparison and dashboard routes against the real-Redis fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.core.config import Settings
from service.core.registry import ActiveModel, ModelRecord, Registry
from tests.report_samples import register_family


@pytest.fixture()
def registry(settings: Settings) -> Registry:
    return Registry.from_url(settings.redis_url or "")


def test_report_page(client: TestClient, registry: Registry, tmp_path: Path) -> None:
    ids = register_family(registry, tmp_path / "m", "ds-1", name="ml <100k>")
    registry.set_active(ActiveModel(model_id="student-unkd-1", bundle_dir="/nowhere"))
    r = client.get("/v1/models/student-unkd-1/report.html")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in r.headers["content-security-policy"]  # no script allowed at all
    page = r.text
    assert (
        page.count('<rect class="bar') == 4 * 2 + 4 * 3
    )  # group recall (teacher, model), exposure
    assert "ml &lt;100k&gt;" in page and "ml <100k>" not in page  # dataset name escaped
    assert 'href="../teacher-1/report.html"' in page and 'href="../../../"' in page
    assert 'class="badge live">serving' in page
    assert "Training curve" in page and 'data-chart="training-loss"' in page
    teacher = client.get(f"/v1/models/{ids[0]}/report.html").text
    assert teacher.count('<rect class="bar') == 4 * 1 + 4 * 2


def test_report_page_404s(client: TestClient, registry: Registry, tmp_path: Path) -> None:
    r = client.get("/v1/models/nope/report.html")
    assert r.status_code == 404 and r.json() == {"detail": "model_id='nope': no such model"}
    registry.add_model(
        ModelRecord(id="empty", kind="teacher", model="mf", dim=8, path=str(tmp_path / "missing"))
    )
    r = client.get("/v1/models/empty/report.html")
    assert r.status_code == 404
    assert r.json() == {"detail": "model_id='empty': no such quality report for this model"}
    assert client.get("/v1/models/bad id!/report.html").status_code == 422


def test_compare_json(client: TestClient, registry: Registry, tmp_path: Path) -> None:
    ids = register_family(registry, tmp_path / "m", "ds-1")
    r = client.get(
        "/v1/compare", params={"models": ",".join(ids) + "," + ids[0]}
    )  # duplicate dropped
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["id"] for m in body["models"]] == ids
    assert body["k"] == 20 and body["dataset"] == {
        "id": "ds-1",
        "name": "synthetic",
        "fingerprint": "ds-1",
    }
    rows = {row["key"]: row for row in body["rows"]}
    recall = rows["recall@20"]["values"]
    assert rows["recall@20"]["best"] == [max(recall, key=lambda m: recall[m])]
    arp = rows["arp@20"]
    assert arp["better"] == "lower" and arp["best"] == [
        min(arp["values"], key=lambda m: arp["values"][m])
    ]


def test_compare_refusals(client: TestClient, registry: Registry, tmp_path: Path) -> None:
    a = register_family(registry, tmp_path / "a", "ds-1", methods=("unkd",))
    b = register_family(registry, tmp_path / "b", "ds-2", methods=("rd",), suffix="-b")
    for path in ("/v1/compare", "/v1/compare.html"):
        r = client.get(path, params={"models": f"{a[1]},{b[1]}"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == (
            f"models: model {b[1]!r} was trained on dataset 'ds-2', not on 'ds-1' like {a[1]!r}: "
            "compare models of one dataset"
        )
        r = client.get(path, params={"models": f"{a[1]},ghost"})
        assert r.status_code == 404 and r.json() == {"detail": "models='ghost': no such model"}
        r = client.get(path, params={"models": "a,<b>"})
        assert r.status_code == 422 and r.json() == {"detail": "models: '<b>' is not a model id"}
        assert client.get(path, params={"models": " , "}).status_code == 422
        assert client.get(path).status_code == 422
        many = ",".join(f"m{i}" for i in range(13))
        assert client.get(path, params={"models": many}).json() == {
            "detail": "models: at most 12 models, got 13"
        }


def test_compare_page(client: TestClient, registry: Registry, tmp_path: Path) -> None:
    ids = register_family(registry, tmp_path / "m", "ds-1")
    r = client.get("/v1/compare.html", params={"models": ",".join(ids)})
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    assert page.count('class="num best"') == sum(
        len(row["best"])
        for row in client.get("/v1/compare", params={"models": ",".join(ids)}).json()["rows"]
    )
    assert page.count('<rect class="bar') == 4 * len(ids) + 4 * (len(ids) + 1)
    assert f'href="models/{ids[1]}/report.html"' in page


def test_dashboard_and_static(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert 'src="static/dashboard.js"' in r.text and 'href="static/report.css"' in r.text
    js = client.get("/static/dashboard.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert ".innerHTML" not in js.text and "insertAdjacentHTML" not in js.text  # text only
    assert client.get("/static/report.css").headers["content-type"].startswith("text/css")
    for name in ("dashboard.html", "..%2Fmain.py", "nope.js"):
        assert client.get(f"/static/{name}").status_code == 404


def test_demo_comparison_through_the_api(
    client: TestClient, registry: Registry, tmp_path: Path
) -> None:
    from service.reports.cli import write_api_comparison

    ids = register_family(registry, tmp_path / "m", "ds-1", name="demo-synthetic")
    out = write_api_comparison(client, ids, tmp_path / "out" / "compare.html")
    page = out.read_text()
    assert "Comparison · demo-synthetic" in page and "<a href" not in page
    assert page.count('<rect class="bar') == 4 * len(ids) + 4 * (len(ids) + 1)
