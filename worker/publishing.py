"""Publishing a model: the gate, the serving bundle, then the active pointer and the history.

A publish job runs `publish_body`; a distill job that asks to publish its student calls
`publish_model` once the student is registered. Both read how to publish from their payload
(service.core.payloads.PublishOptions).
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from service.core.artifacts import ArtifactStore, bundle_key
from service.core.bundle_format import build_bundle, read_bundle
from service.core.payloads import PublishOptions, PublishPayload
from service.core.registry import GatePolicy, PublishEntry, PublishGateError, StagedBundle
from training.progress import ProgressEvent
from worker.inputs import load_dataset
from worker.jobs import JobContext, JobType

logger = logging.getLogger(__name__)


def publish_model(
    ctx: JobContext[Any], model_id: str, options: PublishOptions
) -> PublishEntry | StagedBundle:
    """Check the publish gate, build the serving bundle, load it back to validate, then
    move the active pointer and record the publish in the history.

    options: `force` (skip the gate), `gate_policy` (the API's policy at submission; else
    this worker's settings), `key_name` (who asked, for the history) and `activate` (false:
    build and store the bundle and record it as staged, for experiment arms; no gate,
    nothing served changes).
    """
    settings = ctx.settings
    force, activate = options.force, options.activate
    policy = options.gate_policy or GatePolicy.of(settings)
    # Checked here, not only at submission: the served model may have changed since.
    checks = ctx.registry.gate_checks(model_id, policy) if activate else []
    failed = [c for c in checks if c.passed is False]
    if failed and not force:
        raise PublishGateError(model_id, failed)
    model = ctx.registry.get_model(model_id)
    dataset_id = str(model.lineage.dataset_id)
    store = ArtifactStore.from_settings(settings)
    key = bundle_key(model_id, ctx.job.id)
    bundle_dir = settings.bundles_dir.resolve() / key.rsplit("/", 1)[-1]  # built here, then put
    ctx.reporter(ProgressEvent(stage="publish", message=f"building {settings.index_factory} index"))
    # A redelivered job finds its bundle: built here (data dir), or already in the shared store.
    if store.in_place or not store.exists(key):
        if not (bundle_dir / "meta.json").is_file():
            build_bundle(
                store.resolve(model.path),
                load_dataset(ctx.registry, store, dataset_id),
                bundle_dir,
                model_id=model_id,
                index_factory=settings.index_factory,
                nprobe=settings.nprobe,
                ef_search=settings.hnsw_ef_search,
            )
        read_bundle(bundle_dir, nprobe=settings.nprobe, ef_search=settings.hnsw_ef_search)
        store.put(key, bundle_dir)  # data dir: already in place; else uploaded, manifest last
        if not store.in_place:
            shutil.rmtree(bundle_dir, ignore_errors=True)  # the store holds it now
    location = store.location(key)  # data dir: str(bundle_dir), as pointers always held
    if not activate:
        staged = ctx.registry.record_staged(
            StagedBundle(
                model_id=model_id,
                bundle_dir=location,
                key_name=options.key_name,
                job_id=ctx.job.id,
            )
        )
        logger.info("job %s: staged model %s at %s (not served)", ctx.job.id, model_id, location)
        return staged
    entry = ctx.registry.record_publish(
        PublishEntry(
            model_id=model_id,
            bundle_dir=location,
            key_name=options.key_name,
            forced=force,
            job_id=ctx.job.id,
            gate=checks,
        )
    )
    logger.info(
        "job %s: published model %s from %s%s",
        ctx.job.id,
        model_id,
        location,
        " (publish gate forced)" if force and failed else "",
    )
    return entry


def publish_body(ctx: JobContext[PublishPayload]) -> str:
    model_id = ctx.payload.model_id
    try:
        publish_model(ctx, model_id, ctx.payload.publish_options())
    finally:
        ctx.registry.release_publish(model_id, ctx.job.id)
    return model_id


PUBLISH_JOB = JobType(PublishPayload, publish_body)
