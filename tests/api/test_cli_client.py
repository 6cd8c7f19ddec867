"""`unkd jobs | models | recommend` (service/client) against a live API on a real Redis.

The API runs under uvicorn in its own process (tests/support's LiveAPI), with API keys, a
tiny synthetic dataset, a teacher and two students of random embeddings (no training),
one of them published. The commands run in-process through `service.cli.main`, as the
`unkd` script runs them, reading the URL and the key from the environment. Job records a
test needs in a given state are written to the registry directly; the one real job (a
3-epoch teacher, then a publish) runs on a real worker started only for the last tests.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from service import cli
from service.core import keys
from service.core.bundle_format import build_bundle
from service.core.config import Settings
from service.core.registry import JobRecord, PublishEntry, Registry
from service.stack.redis_server import free_port
from tests.reliability.conftest import seed_dataset, seed_model
from tests.support.config import make_test_settings
from tests.support.fixtures import watch_log
from tests.support.live_api import LiveAPI
from tests.support.processes import ROOT
from tests.support.redis_dbs import RedisDatabases
from tests.support.workers import WorkerProcess
from training.dataset import Dataset
from training.manifest import Lineage

ADMIN, WRITER = "cli-admin-key-0123", "cli-write-key-0123"
KEYS = [f"ops:admin:{ADMIN}", f"ci:write:{WRITER}"]
DATASET = "ds-rel0"  # seed_dataset's id
# head_share@20, ndcg@20 in the registry, where the publish gate reads them.
FIGURES = {"teacher-1": (0.50, 0.30), "student-good": (0.40, 0.29), "student-biased": (0.60, 0.30)}


@dataclass
class World:
    settings: Settings
    registry: Registry
    dataset: Dataset
    api: LiveAPI
    root: Path


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest,
    redis_databases: RedisDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("cli-client")
    settings = make_test_settings(
        "cli",
        redis_url=redis_databases.reserve(),
        data_dir=root / "data",
        api_keys=KEYS,
        reload_poll_s=0.2,
        device="cpu",
        job_max_retries=0,
    )
    registry = Registry.from_url(settings.redis_url or "")
    dataset = seed_dataset(settings, registry, n_users=60, n_items=40)
    for seed_no, (model_id, (head, ndcg)) in enumerate(FIGURES.items(), 1):
        kind = "teacher" if model_id.startswith("teacher") else "student"
        seed_model(settings, registry, dataset, model_id, kind=kind, seed=seed_no)
        lineage = Lineage(dataset_id=DATASET, teacher_id=None if kind == "teacher" else "teacher-1")
        registry.add_model(
            registry.get_model(model_id).model_copy(
                update={"lineage": lineage, "metrics": {"head_share@20": head, "ndcg@20": ndcg}}
            )
        )
    bundle = settings.bundles_dir.resolve() / "student-good-test"
    build_bundle(
        settings.models_dir.resolve() / "student-good", dataset, bundle, model_id="student-good"
    )
    registry.record_publish(PublishEntry(model_id="student-good", bundle_dir=str(bundle)))
    api = LiveAPI(settings, root / "api.log")
    watch_log(request, "CLI test API", api.log)
    try:
        api.start("/readyz")  # 200 once the published model is loaded
        yield World(settings, registry, dataset, api, root)
    finally:
        api.stop()
        registry.close()


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture()
def unkd(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """unkd(*argv, key=ADMIN): run `unkd argv` in-process against the live API, the key in
    UNKD_API_KEY (None: unset); the exit status and what it wrote."""
    monkeypatch.setenv("UNKD_API_URL", world.api.url)

    def run(*argv: str, key: str | None = ADMIN) -> Run:
        if key is None:
            monkeypatch.delenv("UNKD_API_KEY", raising=False)
        else:
            monkeypatch.setenv("UNKD_API_KEY", key)
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse: --help (0), usage errors (2)
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def queued_job(registry: Registry) -> str:
    """A teacher job record that stays queued: written to the registry, never sent to a queue."""
    job_id = uuid.uuid4().hex
    registry.create_job(
        JobRecord(id=job_id, kind="teacher", params={"dataset_id": DATASET, "config": {}})
    )
    return job_id


def user_of(world: World, i: int = 0) -> str:
    return str(world.dataset.user_ids[i])


# -- help and usage ----------------------------------------------------------------------------


def test_unkd_help_lists_the_client_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ")}
    assert {"jobs", "models", "recommend"} <= listed, out.stdout


def test_subcommand_help_and_usage_errors_exit_2(unkd, tmp_path: Path) -> None:
    r = unkd("jobs", "--help")
    assert r.code == 0 and all(c in r.out for c in ("submit", "list", "show", "cancel"))
    r = unkd("jobs", "submit", "teacher")
    assert r.code == 2
    assert (
        r.err.strip()
        == "unkd jobs submit teacher: error: a teacher job needs --dataset ID (or dataset_id in --body)"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = unkd("jobs", "submit", "teacher", "--body", str(bad))
    assert r.code == 2 and f"--body {bad}: not JSON" in r.err
    r = unkd("jobs", "submit", "distill", "--teacher", "teacher-1", "--set", "epochs")
    assert r.code == 2 and "expected FIELD=VALUE" in r.err
    r = unkd("jobs", "list", "--state", "nope")
    assert r.code == 2 and "invalid choice: 'nope'" in r.err
    assert unkd("recommend", "0", "-k", "0").code == 2


# -- jobs -----------------------------------------------------------------------------------------


def test_jobs_submit_sends_the_documented_body_then_show_and_cancel(
    unkd, world: World, tmp_path: Path
) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"teacher_id": "teacher-1", "method": "rd", "epochs": 7}))
    r = unkd(
        "jobs",
        "submit",
        "distill",
        "--body",
        str(base),
        "--method",
        "unkd",
        "--dim",
        "10",
        "--lambda",
        "0.5",
        "--set",
        "unkd.groups=2",
        "--set",
        "warm_start=none",
        "--json",
        key=WRITER,
    )
    assert r.code == 0, r.err
    accepted = r.json()
    assert accepted["kind"] == "distill" and accepted["status"] == "queued"
    job_id = accepted["id"]
    config = world.registry.get_job(job_id).params["config"]
    assert (config["method"], config["dim"], config["lambda_kd"], config["epochs"]) == (
        "unkd",
        10,
        0.5,
        7,
    )
    assert config["unkd"]["groups"] == 2 and config["warm_start"] == "none"

    r = unkd("jobs", "show", job_id)
    assert r.code == 0, r.err
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in r.out.splitlines())
    assert (fields["id"], fields["kind"], fields["status"], fields["model"]) == (
        job_id,
        "distill",
        "queued",
        "-",
    )
    assert fields["param teacher_id"] == "teacher-1" and fields["cancel requested"] == "False"
    assert unkd("jobs", "show", job_id, "--json").json()["params"]["teacher_id"] == "teacher-1"

    r = unkd("jobs", "cancel", job_id, key=WRITER)
    assert (r.code, r.out.strip()) == (0, f"job {job_id} cancelled")
    assert world.registry.get_job(job_id).status == "cancelled"
    r = unkd(
        "jobs",
        "submit",
        "teacher",
        "--dataset",
        DATASET,
        "--model",
        "ease",
        "--tune",
        "3",
        key=WRITER,
    )
    assert r.code == 0 and "teacher job " in r.out and "unkd jobs show" in r.out, r.err
    teacher_job = r.out.split()[2]
    params = world.registry.get_job(teacher_job).params
    assert params["config"]["model"] == "ease" and params["tune"]["trials"] == 3
    assert unkd("jobs", "cancel", teacher_job, "--json").json()["status"] == "cancelled"


def test_submit_reads_the_body_from_stdin_and_prints_the_apis_422(
    unkd, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"kind": "teacher", "dataset_id": DATASET, "model": "lightgcn", "n_layers": 2}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(body)))
    r = unkd("jobs", "submit", "teacher", "--body", "-", "--epochs", "5", "--json", key=WRITER)
    assert r.code == 0, r.err
    job = world.registry.get_job(r.json()["id"])
    assert (job.params["config"]["model"], job.params["config"]["n_layers"]) == ("lightgcn", 2)
    assert job.params["config"]["epochs"] == 5
    assert unkd("jobs", "cancel", job.id).code == 0
    monkeypatch.setattr("sys.stdin", io.StringIO('{"kind": "distill"}'))
    r = unkd("jobs", "submit", "teacher", "--body", "-", "--dataset", DATASET)
    assert r.code == 2 and "--body says kind 'distill', the command 'teacher'" in r.err
    r = unkd(
        "jobs", "submit", "distill", "--teacher", "teacher-1", "--set", "unkd.groupz=2", key=WRITER
    )
    assert (r.code, r.out) == (1, "")
    assert (
        r.err
        == "error: body.distill.unkd.groupz: Extra inputs are not permitted (got 2) (HTTP 422)\n"
    )


def test_jobs_list_filters_and_pages(unkd, world: World) -> None:
    queued = queued_job(world.registry)
    failed = queued_job(world.registry)
    world.registry.finish_job(failed, "failed", error="epoch 3: loss is NaN")
    r = unkd("jobs", "list", "--state", "failed")
    assert r.code == 0, r.err
    header, rule, *rows = r.out.splitlines()
    assert header.split()[:4] == ["id", "kind", "status", "progress"] and set(rule) <= {"-", " "}
    assert any(row.startswith(failed) and "epoch 3: loss is NaN" in row for row in rows), r.out
    assert not any(row.startswith(queued) for row in rows)
    page = unkd("jobs", "list", "--state", "queued", "--json").json()
    assert queued in [j["id"] for j in page["items"]] and all(
        j["status"] == "queued" for j in page["items"]
    )
    r = unkd("jobs", "list", "--limit", "1")
    total = unkd("jobs", "list", "--json").json()["total"]
    assert len(r.out.splitlines()) == 4 and f"(1 of {total} jobs; --offset 1 for more)" in r.out


def test_jobs_show_wait_and_cancel_exit_status(unkd, world: World) -> None:
    registry = world.registry
    done = queued_job(registry)
    registry.finish_job(done, "succeeded", model_id="teacher-1")
    r = unkd("jobs", "show", done, "--wait", "--interval", "0.05")
    assert r.code == 0 and r.out.strip() == f"job {done} (teacher) succeeded: model teacher-1", r
    failed = queued_job(registry)
    registry.finish_job(failed, "failed", error="dim: 5000 exceeds the memory budget")
    r = unkd("jobs", "show", failed, "--wait")
    assert (
        r.code == 1
        and f"error: job {failed} (teacher) failed: dim: 5000 exceeds the memory budget" in r.err
    )
    cancelled = queued_job(registry)
    assert unkd("jobs", "cancel", cancelled, key=WRITER).code == 0
    r = unkd("jobs", "show", cancelled, "--wait", "--json")
    assert (
        r.code == 1
        and r.json()["status"] == "cancelled"
        and f"job {cancelled} (teacher) cancelled" in r.err
    )
    # The API's refusals: one line, the detail and the status.
    r = unkd("jobs", "cancel", failed)
    assert r.code == 1
    assert r.err == f"error: job_id='{failed}': job already failed, nothing to cancel (HTTP 409)\n"
    r = unkd("jobs", "show", "no-such-job")
    assert r.code == 1 and r.err == "error: job_id='no-such-job': no such job (HTTP 404)\n"


# -- keys and reachability --------------------------------------------------------------------


def test_missing_wrong_and_low_keys_print_the_api_message(unkd, world: World, monkeypatch) -> None:
    job = queued_job(world.registry)
    r = unkd("jobs", "cancel", job, key=None)
    assert r.code == 1 and r.err.count("\n") == 1
    assert r.err.startswith("error: Authorization: missing bearer token") and "(HTTP 401)" in r.err
    assert "set UNKD_API_KEY to an API key" in r.err
    r = unkd("jobs", "cancel", job, key="not-a-key-at-all")
    assert r.code == 1
    assert (
        r.err
        == "error: Authorization: API key not accepted (HTTP 403); the key was read from $UNKD_API_KEY\n"
    )
    r = unkd("models", "publish", "student-good", key=WRITER)
    assert (
        r.code == 1 and "needs a key with role admin; key 'ci' has role write (HTTP 403)" in r.err
    )
    monkeypatch.setenv("OPS_KEY", WRITER)  # --key-env: the key from another variable
    r = unkd("jobs", "cancel", job, "--key-env", "OPS_KEY", key=None)
    assert (r.code, r.out.strip()) == (0, f"job {job} cancelled"), r.err


def test_an_unreachable_api_is_one_line_naming_the_url(unkd) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = unkd("models", "list", "--api", url)
    assert r.code == 1 and r.out == ""
    assert r.err == (
        f"error: cannot reach the unkd API at {url} (connection refused); start it with "
        "`unkd up`, or point --api / $UNKD_API_URL at it\n"
    )


# -- models and recommendations ----------------------------------------------------------------


def test_models_list_marks_the_served_model(unkd) -> None:
    r = unkd("models", "list", key=None)  # reads stay open
    assert r.code == 0, r.err
    header, _, *rows = r.out.splitlines()
    assert header.split() == [
        "served",
        "id",
        "kind",
        "model",
        "dim",
        "dataset",
        "teacher",
        "ndcg@20",
        "recall@20",
        "head_share@20",
    ]
    by_id = {row.split()[1] if row.startswith("*") else row.split()[0]: row for row in rows}
    assert set(FIGURES) <= set(by_id)
    assert by_id["student-good"].startswith("*") and not by_id["student-biased"].startswith("*")
    assert by_id["student-biased"].split()[-1] == "0.6000" and "mf/unkd" in by_id["student-biased"]
    items = unkd("models", "list", "--json").json()["items"]
    assert [m["id"] for m in items if m["active"]] == ["student-good"]


def test_models_publish_refused_by_the_gate_prints_the_rule_and_the_override(
    unkd, world: World
) -> None:
    jobs_before = world.registry.list_jobs()[1]
    r = unkd("models", "publish", "student-biased")
    assert r.code == 1 and r.out == ""
    error, hint = r.err.splitlines()
    assert error.startswith(
        "error: model_id='student-biased': publish gate refused it: head_share@20"
    )
    assert "0.6000, above 1 x its teacher teacher-1's 0.5000" in error and error.endswith(
        "(HTTP 409)"
    )
    assert hint.startswith(
        "hint: publish it anyway with `unkd models publish student-biased --force`"
    )
    assert world.registry.list_jobs()[1] == jobs_before  # a refused publish queues nothing
    r = unkd("jobs", "submit", "publish", "student-biased")  # the same through `jobs submit`
    assert r.code == 1 and "publish gate refused it" in r.err


def test_recommend_prints_a_table_or_the_json(unkd, world: World) -> None:
    user = user_of(world)
    r = unkd("recommend", user, "-k", "5", key=None)
    assert r.code == 0, r.err
    title, header, _, *rows = r.out.splitlines()
    assert title == f"user {user}: top 5 from model student-good"
    assert header.split() == ["rank", "item", "score", "group"] and len(rows) == 5
    answer = unkd("recommend", user, "-k", "5", "--json").json()
    assert answer["model_id"] == "student-good"
    assert [row.split()[1] for row in rows] == [it["item_id"] for it in answer["items"]]
    assert [row.split()[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert [float(row.split()[2]) for row in rows] == [
        round(it["score"], 4) for it in answer["items"]
    ]
    first, second = answer["items"][0]["item_id"], answer["items"][1]["item_id"]
    trimmed = unkd(
        "recommend", user, "-k", "5", "--exclude", first, second, "no-such-item", "--json"
    )
    ids = [it["item_id"] for it in trimmed.json()["items"]]
    assert len(ids) == 5 and first not in ids and second not in ids
    assert trimmed.json()["unknown_items"] == {"exclude": ["no-such-item"]}
    r = unkd("recommend", user, "-k", "3", "--exclude", "no-such-item", "--exclude", first)
    assert r.code == 0 and first not in [row.split()[1] for row in r.out.splitlines()[3:]]
    assert r.err == "note: exclude: ids the served model does not know, ignored: no-such-item\n"
    r = unkd("recommend", "a-new-visitor", "-k", "4", "--fallback", "debiased")
    assert (
        r.code == 0
        and r.out.splitlines()[0]
        == "user a-new-visitor: top 4 from model student-good, fallback debiased"
    )
    r = unkd("recommend", "a-new-visitor")
    assert (
        r.code == 1
        and r.err
        == "error: user_id='a-new-visitor': no such user in model student-good (HTTP 404)\n"
    )


# -- with a real worker (last: it takes the queue) --------------------------------------------------


@pytest.fixture(scope="module")
def worker(request: pytest.FixtureRequest, world: World) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(world.settings, world.root / "worker.log", "cli")
    watch_log(request, "CLI test worker", worker.log)
    yield worker.start()
    worker.stop()


def test_submit_wait_follows_a_real_job_to_the_end(
    unkd, world: World, worker: WorkerProcess
) -> None:
    r = unkd(
        "jobs",
        "submit",
        "teacher",
        "--dataset",
        DATASET,
        "--model",
        "mf",
        "--dim",
        "8",
        "--epochs",
        "3",
        "--set",
        "eval_every=1",
        "--wait",
        "--interval",
        "0.1",
        key=WRITER,
    )
    assert r.code == 0, (r.err, worker.tail())
    summary = r.out.strip()
    assert " (teacher) succeeded in " in summary and ": model teacher-" in summary, summary
    job_id, model_id = summary.split()[1], summary.rsplit(" ", 1)[1]
    # The bar: on stderr, named after the job, seen running, ending at 3 of 3 epochs.
    assert r.err.startswith(f"teacher job {job_id} queued\n")
    assert f"teacher {job_id[:12]}: " in r.err
    assert "status=running" in r.err and "3/3" in r.err and "status=succeeded" in r.err
    assert model_id in unkd("models", "list").out
    # Then publish the biased student anyway (the gate's override) and see it served.
    r = unkd("models", "publish", "student-biased", "--force", "--wait", "--interval", "0.1")
    assert r.code == 0 and " (publish) succeeded in " in r.out, (r.err, worker.tail())
    entry = world.registry.publish_history(limit=1)[0][0]
    assert (entry.model_id, entry.forced, entry.key_name) == ("student-biased", True, "ops")
    deadline = time.monotonic() + 20
    user = user_of(world)
    while (served := unkd("recommend", user, "--json").json()["model_id"]) != "student-biased":
        assert time.monotonic() < deadline, f"still served by {served}"
        time.sleep(0.1)


# -- events push -------------------------------------------------------------------------------


def test_events_push_sends_a_file_once_and_names_a_bad_line(
    unkd, world: World, tmp_path: Path
) -> None:
    csv_file = tmp_path / "events.csv"
    rows = [f"cli-user-{i},i{i % 7},click,,r{i}," for i in range(1203)]  # 3 batches of 500
    csv_file.write_text("user_id,item_id,type,ts,rec_id,event_id\n" + "\n".join(rows) + "\n")
    client = redis.Redis.from_url(world.settings.redis_url or "", decode_responses=True)
    before = client.xlen(keys.events_stream())
    first = unkd("events", "push", str(csv_file), "--json", key=WRITER)
    assert first.code == 0, first.err
    assert first.json() == {"received": 1203, "stored": 1203, "duplicates": 0}
    again = unkd("events", "push", str(csv_file), key=WRITER)  # a second push stores nothing
    assert again.code == 0 and "0 stored, 1203 already stored" in again.out
    assert client.xlen(keys.events_stream()) == before + 1203
    tail = client.xrevrange(keys.events_stream(), count=1)[0][1]
    assert tail["user_id"] == "cli-user-1202" and tail["rec_id"] == "r1202"
    lines = tmp_path / "events.jsonl"
    lines.write_text(
        '{"user_id": "a", "item_id": "b", "type": "view", "event_id": "j1"}\n'
        '{"user_id": "a", "item_id": "b", "type": "stare"}\n'
    )
    bad = unkd("events", "push", str(lines), key=WRITER)
    assert bad.code == 1 and "events.jsonl line 2: type" in bad.err
    assert client.xlen(keys.events_stream()) == before + 1203  # the bad batch kept nothing
    client.close()
