"""POST/GET /v1/datasets: uploads (streamed, size-limited), the synthetic generator, and
4xx answers whose detail names the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.core.config import Settings


def interactions_csv(n_users: int = 30, n_items: int = 25, per_user: int = 6) -> bytes:
    rows = ["user,item,rating"]
    rows += [
        f"u{u},i{(u * 7 + k * 3) % n_items},1" for u in range(n_users) for k in range(per_user)
    ]
    return ("\n".join(rows) + "\n").encode()


def test_upload_prepares_and_registers_a_dataset(client: TestClient, settings: Settings) -> None:
    r = client.post(
        "/v1/datasets",
        files={"file": ("clicks.csv", interactions_csv())},
        data={"split": "random", "seed": "3", "name": "clicks"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("ds-") and body["name"] == "clicks" and body["source"] == "upload"
    stats = body["statistics"]
    assert stats["users"] == 30 and stats["items"] == 25 and stats["interactions"] == 180
    assert len(stats["popularity_groups"]) == 4
    assert body["options"]["split"] == "random" and body["options"]["seed"] == 3
    assert "path" not in body
    assert (settings.datasets_dir / body["id"] / "manifest.json").is_file()
    assert not any((settings.uploads_dir).glob("*/*"))  # the raw upload is not kept

    assert client.get(f"/v1/datasets/{body['id']}").json() == body
    listing = client.get("/v1/datasets").json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == body["id"]


def test_synthetic_dataset(client: TestClient) -> None:
    r = client.post(
        "/v1/datasets",
        json={
            "synthetic": {"n_users": 60, "n_items": 40, "interactions_per_user": 8},
            "name": "syn",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["source"] == "synthetic" and body["statistics"]["users"] == 60
    assert body["options"]["n_items"] == 40 and body["options"]["skew"] == 1.0  # defaults filled


def test_malformed_upload_names_the_file_and_line(client: TestClient) -> None:
    bad = b"user,item,rating\nu1,i1,1\nu2,i2,not-a-number\n"
    r = client.post("/v1/datasets", files={"file": ("bad.csv", bad)})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("file: ") and "bad.csv" in detail and "rating" in detail, detail


# A PNG's signature and IHDR chunk, then binary; latin-1 "café" in each text format.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))
LATIN1 = [  # (format, file name, content, line of the byte 0xe9)
    ("csv", "log.csv", b"user,item\nu1,i1\ncaf\xe9,i2\n", 3),
    ("tsv", "log.tsv", b"user\titem\nu1\ti1\ncaf\xe9\ti2\n", 3),
    ("recbole", "ml.inter", b"user_id:token\titem_id:token\nu1\ti1\ncaf\xe9\ti2\n", 3),
    ("movielens", "u.data", b"1\t10\t5\t100\n2\tcaf\xe9\t3\t200\n", 2),
    ("movielens", "ratings.dat", b"1::10::5::100\n2::caf\xe9::3::200\n", 2),
    ("lines", "train.txt", b"2 a b\n1 caf\xe9\n", 2),
]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "recbole", "movielens", "lines", "auto"])
def test_binary_upload_is_422_naming_the_file_and_line(
    client: TestClient, settings: Settings, fmt: str
) -> None:
    r = client.post("/v1/datasets", files={"file": ("photo.png", PNG)}, data={"format": fmt})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(
        "file: photo.png: line 1, byte offset 0: b'\\x89' is not valid UTF-8"
    ), detail
    assert client.get("/v1/datasets").json()["total"] == 0
    assert not any(settings.uploads_dir.glob("*/*"))


@pytest.mark.parametrize(("fmt", "name", "content", "line"), LATIN1, ids=[c[1] for c in LATIN1])
@pytest.mark.parametrize("declared", [True, False])
def test_latin1_upload_is_422_naming_the_line(
    client: TestClient, fmt: str, name: str, content: bytes, line: int, declared: bool
) -> None:
    data = {"format": fmt} if declared else {}
    r = client.post("/v1/datasets", files={"file": (name, content)}, data=data)
    assert r.status_code == 422, r.text
    offset = content.index(b"\xe9")
    assert r.json()["detail"] == (
        f"file: {name}: line {line}, byte offset {offset}: b'\\xe9' is not valid UTF-8; "
        "text interaction files must be UTF-8 (binary data only as Parquet)"
    )


def test_garbage_parquet_upload_is_422_naming_the_file(
    client: TestClient, settings: Settings
) -> None:
    for body in (PNG, b"PAR1" + PNG + b"PAR1"):
        r = client.post("/v1/datasets", files={"file": ("x.parquet", body)})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail.startswith("file: x.parquet: cannot read as parquet"), detail
        assert str(settings.uploads_dir.resolve()) not in detail  # no server path leaks


def test_upload_without_file_field(client: TestClient) -> None:
    r = client.post("/v1/datasets", files={"data": ("x.csv", interactions_csv())})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("data: unexpected file part")
    r = client.post("/v1/datasets", files={"split": (None, "random")})  # multipart, no file
    assert r.status_code == 422
    assert r.json()["detail"] == "file: missing; send the interactions as form field 'file'"


def test_empty_upload(client: TestClient) -> None:
    r = client.post("/v1/datasets", files={"file": ("empty.csv", b"")})
    assert r.status_code == 422 and r.json()["detail"] == "file: the uploaded file is empty"


def test_oversize_upload_is_refused_while_streaming(client: TestClient, settings: Settings) -> None:
    big = b"user,item\n" + b"u1,i1\n" * (settings.upload_max_bytes // 6 + 10)

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        boundary = b"XyZ"
        yield (
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
        )
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]
        yield b"\r\n--" + boundary + b"--\r\n"

    r = client.post(
        "/v1/datasets",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert r.status_code == 413, r.text
    assert (
        r.json()["detail"]
        == f"file: upload exceeds upload_max_bytes={settings.upload_max_bytes} bytes"
    )
    assert not list(Path(settings.uploads_dir).glob("*/*"))
    r = client.post("/v1/datasets", files={"file": ("big.csv", big)})  # with Content-Length
    assert r.status_code == 413


def test_out_of_range_form_fields(client: TestClient) -> None:
    r = client.post(
        "/v1/datasets",
        files={"file": ("x.csv", interactions_csv())},
        data={"holdout": "1.5", "split": "sideways"},
    )
    assert r.status_code == 422
    fields = {e["loc"][-1]: e["msg"] for e in r.json()["detail"]}
    assert set(fields) == {"holdout", "split"} and "less than 1" in fields["holdout"]
    r = client.post(
        "/v1/datasets", files={"file": ("x.csv", interactions_csv())}, data={"colour": "red"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "colour"]


def test_synthetic_parameters_are_validated(client: TestClient) -> None:
    r = client.post("/v1/datasets", json={"synthetic": {"n_users": 1, "shape": "round"}})
    assert r.status_code == 422
    locs = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert locs == {("body", "synthetic", "n_users"), ("body", "synthetic", "shape")}
    r = client.post(
        "/v1/datasets", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("body: invalid JSON")
    r = client.post("/v1/datasets", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["detail"].startswith("Content-Type: text/plain")


def test_unknown_dataset(client: TestClient) -> None:
    r = client.get("/v1/datasets/ds-missing")
    assert r.status_code == 404 and r.json() == {
        "detail": "dataset_id='ds-missing': no such dataset"
    }
    assert client.get("/v1/datasets", params={"limit": 0}).status_code == 422
