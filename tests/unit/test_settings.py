"""Settings: UNKD_ environment, validators that refuse impossible values, derived paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.config import Settings, get_settings
from service.core.queue import make_celery, queue_for, settings_of


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UNKD_REDIS_URL", "UNKD_DATA_DIR", "UNKD_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.redis_url is None and s.api_keys == [] and s.device == "auto"
    assert (s.train_queue, s.light_queue) == ("train", "light")
    assert s.models_dir == Path("data") / "models" and s.bundles_dir == Path("data") / "bundles"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNKD_REDIS_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("UNKD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("UNKD_API_KEYS", " key-aaaaaaaa , key-bbbbbbbb ,")
    monkeypatch.setenv("UNKD_LOG_LEVEL", "debug")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.redis_url == "redis://127.0.0.1:6390/2" and s.data_dir == tmp_path
    assert s.api_keys == ["key-aaaaaaaa", "key-bbbbbbbb"] and s.log_level == "DEBUG"


def test_empty_redis_url_means_unset() -> None:
    assert Settings(redis_url="").redis_url is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("redis_url", "http://localhost"),
        ("api_keys", ["short"]),
        ("nprobe", 0),
        ("device", "tpu"),
        ("upload_max_bytes", 10),
        ("train_queue", ""),
        ("log_level", "LOUD"),
    ],
)
def test_impossible_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert info.value.errors()[0]["loc"][0] == field


def test_get_settings_is_cached() -> None:
    assert get_settings() is get_settings()


def test_celery_app_from_settings() -> None:
    s = Settings(redis_url="redis://127.0.0.1:1/0", train_queue="gpu", job_soft_time_limit_s=100)
    app = make_celery(s, set_as_current=False)
    conf = app.conf
    assert conf.broker_url == s.redis_url and conf.result_backend == s.redis_url
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_track_started
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > s.job_soft_time_limit_s
    assert conf.task_routes["unkd.train_teacher"] == {"queue": "gpu"}
    assert conf.task_routes["unkd.publish"] == {"queue": "light"}
    assert queue_for("distill", s) == "gpu" and queue_for("publish", s) == "light"
    assert settings_of(app) is s
    app.close()


def test_celery_app_needs_a_redis_url() -> None:
    with pytest.raises(RuntimeError, match="UNKD_REDIS_URL"):
        make_celery(Settings(redis_url=None))


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    missing = [name for name in Settings.model_fields if f"`UNKD_{name.upper()}`" not in doc]
    assert not missing, f"settings missing from docs/service.md: {missing}"


def test_worker_threads_reach_the_workers_environment() -> None:
    from service.cli import build_parser, worker_env

    args = build_parser().parse_args(["worker", "--threads", "1"])
    env = worker_env(
        {"PATH": "/bin", "OMP_NUM_THREADS": "8"}, {"UNKD_REDIS_URL": "redis://x"}, args.threads
    )
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OPENBLAS_NUM_THREADS"]) == (
        "1",
        "1",
        "1",
    )
    assert env["UNKD_REDIS_URL"] == "redis://x" and env["PATH"] == "/bin"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"  # idle OpenMP threads sleep, not spin
    # Without --threads a thread count already in the environment stays ...
    no_flag = build_parser().parse_args(["worker"]).threads
    kept = worker_env({"OMP_NUM_THREADS": "8", "OMP_WAIT_POLICY": "ACTIVE"}, {}, no_flag)
    assert kept == {"OMP_NUM_THREADS": "8", "OMP_WAIT_POLICY": "ACTIVE"}
    # ... and none becomes the cores this process may use.
    cores = str(len(os.sched_getaffinity(0)))
    fresh = worker_env({}, {}, no_flag)
    assert (fresh["OMP_NUM_THREADS"], fresh["MKL_NUM_THREADS"]) == (cores, cores)
    assert fresh["OMP_WAIT_POLICY"] == "PASSIVE"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--threads", "0"])
