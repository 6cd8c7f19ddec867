"""The offline `unkd` commands, run as a user would: a subprocess per command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.formats import RawInteractions, write_interactions
from training.synthetic import generate_synthetic

UNKD = [sys.executable, "-m", "service.cli"]


def unkd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*UNKD, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = generate_synthetic(
        n_users=150, n_items=100, dim=8, skew=1.0, interactions_per_user=20, seed=1
    )
    # All interactions (train + held out) in one raw file: the CLI splits it itself.
    allp = np.concatenate([ds.train, ds.valid, ds.test])
    raw = RawInteractions(user=ds.user_ids[allp[:, 0]], item=ds.item_ids[allp[:, 1]])
    return write_interactions(raw, tmp_path_factory.mktemp("raw") / "log.csv", "csv")


def test_prepare_train_distill_evaluate(csv_file: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    r = unkd("data", "prepare", str(csv_file), "--out", str(tmp_path / "ds"), cwd=repo)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["users"] == 150 and len(stats["popularity_groups"]) == 4

    r = unkd(
        "train-teacher",
        str(tmp_path / "ds"),
        "--dim",
        "16",
        "--epochs",
        "3",
        "--out",
        str(tmp_path / "t"),
        cwd=repo,
    )
    assert r.returncode == 0, r.stderr
    assert "epoch" in r.stderr, "a progress bar is shown on stderr"
    assert (tmp_path / "t" / "manifest.json").is_file()

    r = unkd(
        "distill",
        str(tmp_path / "ds"),
        "--teacher",
        str(tmp_path / "t"),
        "--method",
        "unkd",
        "--dim",
        "4",
        "--epochs",
        "3",
        "--out",
        str(tmp_path / "s"),
        cwd=repo,
    )
    assert r.returncode == 0, r.stderr

    # DATA may be the raw file: prepared on the fly with the same defaults, same fingerprint.
    r = unkd("evaluate", str(csv_file), "--model", str(tmp_path / "s"), "--json", cwd=repo)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for name in ("recall@20", "ndcg@20", "arp@20", "coverage@20", "gini@20", "pop_rsp@20"):
        assert isinstance(report["metrics"][name], float), name
    groups = report["groups"]
    assert [g["group"] for g in groups] == [0, 1, 2, 3]
    assert groups[0]["items"] < groups[-1]["items"], "head first"
    assert {"items", "test_share", "exposure_share@20", "recall@20"} <= set(groups[0])
    assert "teacher" in report and "deltas" in report

    r = unkd("evaluate", str(tmp_path / "ds"), "--model", str(tmp_path / "s"), cwd=repo)
    assert r.returncode == 0 and "ndcg@20" in r.stdout.lower()


def test_bad_inputs_fail_with_a_clear_message(csv_file: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    r = unkd("data", "prepare", str(empty), "--out", str(tmp_path / "x"), cwd=repo)
    assert r.returncode == 2 and "empty.csv" in r.stderr and "empty" in r.stderr.lower()

    r = unkd("train-teacher", str(csv_file), "--dim", "0", "--out", str(tmp_path / "t"), cwd=repo)
    assert r.returncode == 2 and "dim" in r.stderr
    assert not (tmp_path / "t").exists()

    r = unkd(
        "distill",
        str(csv_file),
        "--teacher",
        str(tmp_path / "none"),
        "--method",
        "magic",
        "--out",
        str(tmp_path / "s"),
        cwd=repo,
    )
    assert r.returncode == 2 and "method" in r.stderr

    other = generate_synthetic(
        n_users=150, n_items=100, dim=8, skew=1.0, interactions_per_user=20, seed=9
    )
    other.save(tmp_path / "other")
    r = unkd(
        "train-teacher",
        str(tmp_path / "other"),
        "--dim",
        "4",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "t2"),
        cwd=repo,
    )
    assert r.returncode == 0, r.stderr
    r = unkd("evaluate", str(csv_file), "--model", str(tmp_path / "t2"), cwd=repo)
    assert r.returncode == 2 and "trained on dataset" in r.stderr


# A PNG's signature and IHDR chunk, then binary; latin-1 "café" mid-file in each text format.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))
LATIN1 = [  # (format, file name, content, line of the byte 0xe9)
    ("csv", "log.csv", b"user,item\nu1,i1\ncaf\xe9,i2\nu3,i3\n", 3),
    ("tsv", "log.tsv", b"user\titem\nu1\ti1\ncaf\xe9\ti2\n", 3),
    ("recbole", "ml.inter", b"user_id:token\titem_id:token\nu1\ti1\ncaf\xe9\ti2\n", 3),
    ("movielens", "u.data", b"1\t10\t5\t100\n2\tcaf\xe9\t3\t200\n", 2),
    ("movielens", "ratings.dat", b"1::10::5::100\n2::caf\xe9::3::200\n", 2),
    ("lines", "train.txt", b"2 a b\n1 caf\xe9\n", 2),
]
BAD = b"\xe9"


def assert_one_line_error(r: subprocess.CompletedProcess[str], *named: str) -> None:
    """Exit status 2, nothing on stdout, one `error: ...` line on stderr naming `named`."""
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert all(n in lines[0] for n in named), (named, r.stderr)


@pytest.mark.parametrize(("fmt", "name", "content", "line"), LATIN1, ids=[c[1] for c in LATIN1])
def test_undecodable_input_is_one_line_naming_file_and_line(
    tmp_path: Path, fmt: str, name: str, content: bytes, line: int
) -> None:
    repo = Path(__file__).resolve().parents[2]
    png = tmp_path / "file.png"  # the fuzzer's case: a picture declared as interactions
    png.write_bytes(PNG)
    r = unkd("data", "prepare", str(png), "--format", fmt, "--out", str(tmp_path / "a"), cwd=repo)
    assert_one_line_error(r, str(png), "line 1, byte offset 0", "UTF-8")
    latin1 = tmp_path / name
    latin1.write_bytes(content)
    r = unkd("data", "prepare", str(latin1), "--out", str(tmp_path / "b"), cwd=repo)
    assert_one_line_error(r, str(latin1), f"line {line}, byte offset {content.index(BAD)}")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_garbage_parquet_is_one_line(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    path = tmp_path / "log.parquet"
    path.write_bytes(b"PAR1" + PNG + b"PAR1")
    r = unkd("data", "prepare", str(path), "--out", str(tmp_path / "x"), cwd=repo)
    assert_one_line_error(r, str(path), "cannot read as parquet")


def test_synthetic_dataset_and_help_on_every_command(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    r = unkd(
        "data",
        "synthetic",
        "--out",
        str(tmp_path / "syn"),
        "--n-users",
        "120",
        "--n-items",
        "80",
        "--skew",
        "1.5",
        cwd=repo,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["users"] == 120

    from training.dataset import Dataset

    ds = Dataset.load(tmp_path / "syn")
    assert ds.truth is not None and ds.info["generator"]["skew"] == 1.5
    for cmd in (
        ["data", "prepare"],
        ["data", "synthetic"],
        ["train-teacher"],
        ["distill"],
        ["evaluate"],
    ):
        r = unkd(*cmd, "--help", cwd=repo)
        assert r.returncode == 0 and "usage:" in r.stdout, cmd
