"""What a job asks for, one typed payload per job kind: built by the API, read by the worker.

The three kinds form one pydantic union discriminated on `kind`, so a payload is parsed in
one call that picks the model by its kind and refuses a wrong kind or field by name.

The registry's job record keeps a payload as JSON (`JobRecord.params`, `payload.params()`):
the same object `GET /v1/jobs/{id}` shows, and readable even when a record written by an
older client no longer validates; `payload_of(record)` turns it into the typed payload,
which the worker does once per task (worker/jobs.py), so such a record fails its job with
the field named instead of making the job unreadable.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from service.core.config import Settings
from service.core.records import GatePolicy, JobRecord
from training.budget import lists_mapped
from training.config import DistillConfig, TeacherConfig, TuneOptions

PayloadId = Annotated[str, Field(min_length=1, max_length=128)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def _omitted(self) -> set[str]:
        """Fields left out of the JSON form when they say nothing (as the API always wrote it)."""
        return set()

    def params(self) -> dict[str, Any]:
        """The JSON form the job record keeps and the REST API shows (without `kind`, which
        is the record's own field)."""
        return self.model_dump(mode="json", exclude={"kind", *self._omitted()})


class PublishOptions(BaseModel):
    """How a publish goes, whichever job publishes (a publish job, or a distill job that
    publishes its student)."""

    force: bool = False
    activate: bool = True
    gate_policy: GatePolicy | None = None  # the API's policy when the job was submitted
    key_name: str | None = None  # who asked, for the history (never the key)


class TeacherPayload(_Payload):
    """Train a teacher on a registered dataset; `tune`: as a study of trials."""

    kind: Literal["teacher"] = "teacher"
    dataset_id: PayloadId
    config: TeacherConfig
    tune: TuneOptions | None = None

    def _omitted(self) -> set[str]:
        return {"tune"} if self.tune is None else set()


class DistillPayload(_Payload):
    """Distil a registered teacher into a student, then publish it when `publish` says so.

    `dataset_id` is the teacher's at submission, for the record; the worker trains on the
    dataset the teacher's lineage names. The publish fields mean something only with
    `publish` and are left out of the JSON form without it.
    """

    kind: Literal["distill"] = "distill"
    teacher_id: PayloadId
    dataset_id: str | None = None
    config: DistillConfig
    publish: bool = False
    gate_policy: GatePolicy | None = None
    key_name: str | None = None
    force: bool = False
    tune: TuneOptions | None = None

    def _omitted(self) -> set[str]:
        out = {"tune"} if self.tune is None else set()
        return out if self.publish else out | {"gate_policy", "key_name", "force"}

    def publish_options(self) -> PublishOptions:
        return PublishOptions(
            force=self.force, gate_policy=self.gate_policy, key_name=self.key_name
        )

    def lists_on_disk(self, n_users: int, settings: Settings) -> bool:
        """Whether the job's candidate lists stay on disk (its memory budget's `mapped`): a
        job that fans out keeps them there (training.budget.lists_mapped); a tuning job's
        trials never fan out, so theirs are in memory."""
        return self.tune is None and lists_mapped(n_users, self.config, settings.fanout_min_users)


class PublishPayload(_Payload):
    """Publish a registered model: its serving bundle, then (unless `activate` is false) the
    active pointer."""

    kind: Literal["publish"] = "publish"
    model_id: PayloadId
    force: bool = False
    key_name: str | None = None
    gate_policy: GatePolicy | None = None
    activate: bool = True

    def publish_options(self) -> PublishOptions:
        return PublishOptions(
            force=self.force,
            activate=self.activate,
            gate_policy=self.gate_policy,
            key_name=self.key_name,
        )


JobPayload = Annotated[
    TeacherPayload | DistillPayload | PublishPayload, Field(discriminator="kind")
]
# A training job's payload: what a tuning job (worker/tuning.py) is made of.
TrainingPayload = TeacherPayload | DistillPayload

_PAYLOAD: TypeAdapter[TeacherPayload | DistillPayload | PublishPayload] = TypeAdapter(JobPayload)


def parse_payload(raw: dict[str, Any]) -> TeacherPayload | DistillPayload | PublishPayload:
    """A payload from its JSON form with `kind`; pydantic's ValidationError names the field
    (its location starts with the kind: `teacher.config.dim`)."""
    return _PAYLOAD.validate_python(raw)


def payload_of(job: JobRecord) -> TeacherPayload | DistillPayload | PublishPayload:
    """The typed payload of a job record (its params, of the record's kind)."""
    return parse_payload({**job.params, "kind": job.kind})


def new_job(
    job_id: str,
    payload: TeacherPayload | DistillPayload | PublishPayload,
    *,
    output_model_id: str | None = None,
) -> JobRecord:
    """The queued record of a job asking for `payload`."""
    return JobRecord(
        id=job_id, kind=payload.kind, output_model_id=output_model_id, params=payload.params()
    )
