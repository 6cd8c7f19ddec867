"""The training jobs' bodies: a teacher, and a student distilled from one (then published
when its payload asks).

Each resolves its inputs (worker/inputs.py), trains through training.pipelines here, in
shards on every worker (worker/fanout.py) or as a study of trials (worker/tuning.py), and
registers its model (worker/jobs.py). A model an earlier delivery saved is registered, not
trained again.
"""

from __future__ import annotations

from service.core.bundle_format import BundleError
from service.core.payloads import DistillPayload, TeacherPayload
from training import pipelines
from training.device import resolve_device
from training.manifest import Lineage
from worker.fanout import distill_in_shards, fans_out, remove_shards
from worker.inputs import distill_inputs, distill_teacher, teacher_inputs
from worker.jobs import JobContext, JobType, finished_before, register_model
from worker.publishing import publish_model
from worker.tuning import tune_distill, tune_teacher


def teacher_body(ctx: JobContext[TeacherPayload]) -> str:
    payload = ctx.payload
    artifact = finished_before(ctx)
    if artifact is None and payload.tune is not None:  # trials on every worker, the best kept
        artifact = tune_teacher(ctx, payload.tune)
    elif artifact is None:
        inputs = teacher_inputs(payload, ctx.settings, ctx.registry, ctx.store)
        artifact = pipelines.train_teacher(
            inputs.dataset,
            inputs.config,
            ctx.model_dir,
            device=resolve_device(ctx.settings.device),
            on_progress=ctx.reporter,
            should_stop=ctx.stop,
            model_id=ctx.model_id,
            dataset_id=inputs.dataset_id,
        )
    register_model(ctx, artifact, Lineage(dataset_id=payload.dataset_id, teacher_id=None))
    return ctx.model_id


def distill_body(ctx: JobContext[DistillPayload]) -> str:
    payload = ctx.payload
    teacher = distill_teacher(payload, ctx.registry)
    artifact = finished_before(ctx)
    if artifact is None and payload.tune is not None:
        artifact = tune_distill(ctx, payload.tune)
    elif artifact is None:
        inputs = distill_inputs(payload, ctx.settings, ctx.registry, ctx.store)
        if fans_out(ctx.settings, inputs.dataset.n_users, inputs.config):  # ranked by every worker
            artifact = distill_in_shards(ctx, inputs)
        else:
            artifact = pipelines.distill_student(
                inputs.dataset,
                inputs.teacher_dir,
                inputs.config,
                ctx.model_dir,
                device=resolve_device(ctx.settings.device),
                on_progress=ctx.reporter,
                should_stop=ctx.stop,
                model_id=ctx.model_id,
                dataset_id=inputs.dataset_id,
            )
    lineage = Lineage(dataset_id=str(teacher.lineage.dataset_id), teacher_id=teacher.id)
    register_model(ctx, artifact, lineage)
    publish_student(ctx)
    return ctx.model_id


def publish_student(ctx: JobContext[DistillPayload]) -> None:
    """A distill job that asks to publish: a gated publish (PublishGateError) fails the job
    and keeps the model."""
    if not ctx.payload.publish:
        return
    try:
        publish_model(ctx, ctx.model_id, ctx.payload.publish_options())
    except BundleError as exc:
        raise BundleError(
            f"model {ctx.model_id} was trained, but publishing it failed: {exc}"
        ) from exc


TEACHER_JOB = JobType(TeacherPayload, teacher_body)
# A fanned-out job's shards outlive its retries, not the job.
DISTILL_JOB = JobType(DistillPayload, distill_body, ended=remove_shards)
