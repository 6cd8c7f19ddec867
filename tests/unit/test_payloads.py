"""Job payloads (service/core/payloads.py): one typed payload per kind, picked by `kind`;
a wrong kind or field is refused with the field named; the JSON form the registry keeps is
the one the API always wrote, and parses back to the same payload."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.config import Settings
from service.core.payloads import (
    DistillPayload,
    PublishPayload,
    TeacherPayload,
    new_job,
    parse_payload,
    payload_of,
)
from service.core.registry import GatePolicy, JobRecord
from training.config import DistillConfig, TeacherConfig, TuneOptions


def _locs(exc: ValidationError) -> list[tuple[str | int, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


def test_kind_picks_the_payload() -> None:
    teacher = parse_payload({"kind": "teacher", "dataset_id": "ds", "config": {"dim": 8}})
    distill = parse_payload({"kind": "distill", "teacher_id": "t", "config": {"method": "rd"}})
    publish = parse_payload({"kind": "publish", "model_id": "m"})
    assert isinstance(teacher, TeacherPayload) and teacher.config.dim == 8
    assert isinstance(distill, DistillPayload) and distill.config.method == "rd"
    assert isinstance(publish, PublishPayload) and publish.activate is True


def test_a_wrong_kind_is_refused_naming_kind() -> None:
    with pytest.raises(ValidationError) as err:
        parse_payload({"kind": "train", "dataset_id": "ds", "config": {}})
    assert "'kind'" in str(err.value) and "'teacher', 'distill', 'publish'" in str(err.value)
    with pytest.raises(ValidationError) as err:
        parse_payload({"dataset_id": "ds", "config": {}})
    assert "'kind'" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (
            {"kind": "teacher", "dataset_id": "ds", "config": {"dim": 0}},
            ("teacher", "config", "dim"),
        ),
        ({"kind": "teacher", "config": {}}, ("teacher", "dataset_id")),
        ({"kind": "teacher", "dataset_id": "", "config": {}}, ("teacher", "dataset_id")),
        ({"kind": "distill", "teacher_id": "t", "config": {}, "bogus": 1}, ("distill", "bogus")),
        (
            {"kind": "distill", "teacher_id": "t", "config": {"method": "x"}},
            ("distill", "config", "method"),
        ),
        ({"kind": "publish", "model_id": "m", "activate": "maybe"}, ("publish", "activate")),
    ],
)
def test_a_wrong_field_is_refused_naming_it(raw: dict, loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as err:
        parse_payload(raw)
    assert loc in _locs(err.value)


def test_json_form_is_what_the_api_always_wrote() -> None:
    """Optional parts appear only when they say something: `tune` when tuning, the publish
    step's fields only with publish; `kind` is the record's, not the payload's."""
    cfg = DistillConfig(method="unkd")
    plain = DistillPayload(teacher_id="t", dataset_id="ds", config=cfg, key_name="k", force=False)
    assert plain.params() == {
        "teacher_id": "t",
        "dataset_id": "ds",
        "config": cfg.model_dump(mode="json"),
        "publish": False,
    }
    gate = GatePolicy(min_ndcg_ratio=0.5)
    tuned = DistillPayload(
        teacher_id="t",
        config=cfg,
        publish=True,
        gate_policy=gate,
        key_name=None,
        force=True,
        tune=TuneOptions(trials=3),
    )
    assert set(tuned.params()) == {
        "teacher_id",
        "dataset_id",
        "config",
        "publish",
        "gate_policy",
        "key_name",
        "force",
        "tune",
    }
    assert tuned.params()["gate_policy"]["min_ndcg_ratio"] == 0.5
    assert tuned.params()["tune"]["trials"] == 3
    teacher = TeacherPayload(dataset_id="ds", config=TeacherConfig(model="mf", dim=4))
    assert set(teacher.params()) == {"dataset_id", "config"}
    publish = PublishPayload(model_id="m", key_name=None)
    assert set(publish.params()) == {"model_id", "force", "key_name", "gate_policy", "activate"}


def test_a_record_carries_its_payload_back() -> None:
    payload = DistillPayload(
        teacher_id="t", config=DistillConfig(method="cd"), publish=True, force=True
    )
    job = new_job("j", payload, output_model_id="student-j")
    assert (job.kind, job.output_model_id) == ("distill", "student-j")
    again = payload_of(JobRecord.model_validate_json(job.model_dump_json()))
    assert again == payload


def test_a_stored_payload_that_no_longer_validates_stays_readable() -> None:
    """An old client's record is read (GET shows it); only its typed payload is refused."""
    job = JobRecord(id="j", kind="teacher", params={"dataset_id": "ds", "config": {"dim": 0}})
    with pytest.raises(ValidationError) as err:
        payload_of(job)
    assert ("teacher", "config", "dim") in _locs(err.value)


@pytest.mark.parametrize(
    ("method", "tune", "n_users", "on_disk"),
    [
        ("unkd", None, 1000, True),  # fans out: lists memory-mapped
        ("unkd", None, 999, False),  # under the fan-out size: in memory
        ("rrd", None, 1000, False),  # RRD reads its lists into memory
        ("none", None, 1000, False),  # no lists
        ("unkd", TuneOptions(trials=2), 1000, False),  # trials never fan out
    ],
)
def test_lists_on_disk(method: str, tune: TuneOptions | None, n_users: int, on_disk: bool) -> None:
    settings = Settings(fanout_min_users=1000)
    payload = DistillPayload(teacher_id="t", config=DistillConfig(method=method), tune=tune)
    assert payload.lists_on_disk(n_users, settings) is on_disk
