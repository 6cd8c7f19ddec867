"""Datasets: upload an interactions file or generate the built-in synthetic one; list; show.

Preparation (parse, filter, split, popularity groups) runs in the threadpool during the
request: it needs numpy and pyarrow only, never torch, and a malformed file is answered
at once with a 422 that names the file, line and field. The prepared dataset is saved in
this process's data dir, then committed to the artifact store under datasets/<id> (an
object store when UNKD_ARTIFACT_URL is set: uploaded, the local copy kept as cache); its
record holds the store's location, which every worker resolves, and the events stream's
last id when the request began (`events_cursor`): the events its versions start after
(service/api/routes/versions.py).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.auth import WriteAccess
from service.api.deps import RegistryDep, SettingsDep
from service.api.schemas import (
    MAX_OFFSET,
    DatasetList,
    DatasetOut,
    Id,
    SyntheticDatasetRequest,
    UploadOptions,
)
from service.api.uploads import FILE_FIELD, UploadError, receive_upload
from service.core.artifacts import ArtifactStore, dataset_key
from service.core.config import Settings
from service.core.registry import DatasetRecord
from service.core.versions import stream_last_id
from training.errors import DataError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        **UploadOptions.model_json_schema()["properties"],
                    },
                }
            },
            "application/json": {"schema": SyntheticDatasetRequest.model_json_schema()},
        },
    }
}


def new_dataset_id() -> str:
    return f"ds-{secrets.token_hex(6)}"


def _validated(model: type[BaseModel], data: Any, loc: tuple[str, ...]) -> Any:
    """Validate like FastAPI does for a body, so a 422 names the field the same way."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {**err, "loc": (*loc, *err["loc"])}
            for err in exc.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from exc


def _store(prepared: Path, dataset_id: str, settings: Settings) -> str:
    """Commit a prepared dataset directory to the artifact store; returns what the record
    holds: its path (data dir, as before) or its URL."""
    store = ArtifactStore.from_settings(settings)
    try:
        return store.commit(dataset_key(dataset_id), prepared)
    except BaseException:
        if not store.in_place:  # registered nowhere: not kept on this host either
            shutil.rmtree(prepared, ignore_errors=True)
        raise


def _prepare_upload(
    path: Path, opts: UploadOptions, dataset_id: str, settings: Settings
) -> DatasetRecord:
    from training.prepare import prepare_dataset  # numpy/pyarrow; kept off the import path

    try:
        dataset = prepare_dataset(
            path,
            fmt=opts.format,
            split=opts.split,
            seed=opts.seed,
            holdout=opts.holdout,
            min_user_interactions=opts.min_user_interactions,
            min_item_interactions=opts.min_item_interactions,
            name=opts.name or path.name,
        )
    except DataError as exc:
        raise DataError(f"{FILE_FIELD}: {exc}".replace(str(path), path.name)) from exc
    location = _store(
        dataset.save(settings.datasets_dir.resolve() / dataset_id), dataset_id, settings
    )
    return DatasetRecord(
        id=dataset_id,
        name=dataset.name,
        source="upload",
        fingerprint=dataset.fingerprint,
        path=location,
        options={"filename": path.name, **opts.model_dump(exclude={"name"})},
        statistics=dataset.statistics(),
    )


def _generate(req: SyntheticDatasetRequest, dataset_id: str, settings: Settings) -> DatasetRecord:
    from training.synthetic import SYNTHETIC_DEFAULTS, generate_synthetic

    params = req.synthetic.model_dump(exclude_none=True)
    name = req.name or "synthetic"
    try:
        dataset = generate_synthetic(**params, name=name)
    except ValueError as exc:
        raise DataError(f"synthetic: {exc}") from exc
    location = _store(
        dataset.save(settings.datasets_dir.resolve() / dataset_id), dataset_id, settings
    )
    return DatasetRecord(
        id=dataset_id,
        name=name,
        source="synthetic",
        fingerprint=dataset.fingerprint,
        path=location,
        options={**SYNTHETIC_DEFAULTS, **params},
        statistics=dataset.statistics(),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAccess],
    openapi_extra=_BODY_DOC,
    responses={413: {"description": "upload larger than upload_max_bytes"}},
)
async def create_dataset(
    request: Request, settings: SettingsDep, registry: RegistryDep
) -> DatasetOut:
    """Register a dataset: multipart upload (field `file`) or JSON {"synthetic": {...}}."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    dataset_id = new_dataset_id()
    # Read before preparing: an event stored meanwhile goes to the first version, not nowhere.
    cursor = await run_in_threadpool(stream_last_id, registry.redis)
    if ctype == "multipart/form-data":
        staging = settings.uploads_dir.resolve() / dataset_id
        try:
            upload = await receive_upload(request, staging, settings.upload_max_bytes)
            opts = _validated(UploadOptions, upload.fields, ("body",))
            if upload.path is None:  # receive_upload refuses a body without one
                raise UploadError(422, f"{FILE_FIELD}: missing")
            record = await run_in_threadpool(
                _prepare_upload, upload.path, opts, dataset_id, settings
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    elif ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise UploadError(422, f"body: invalid JSON ({exc})") from exc
        req = _validated(SyntheticDatasetRequest, body, ("body",))
        record = await run_in_threadpool(_generate, req, dataset_id, settings)
    else:
        raise UploadError(
            415,
            f"Content-Type: {ctype or 'none'} not accepted; send multipart/form-data "
            f"(field '{FILE_FIELD}') or application/json ({{\"synthetic\": {{...}}}})",
        )
    record = record.model_copy(update={"events_cursor": cursor})
    await run_in_threadpool(registry.add_dataset, record)
    logger.info(
        "dataset %s registered (%s, %s users x %s items)",
        record.id,
        record.source,
        record.statistics.get("users"),
        record.statistics.get("items"),
    )
    return DatasetOut.of(record)


@router.get("")
def list_datasets(
    registry: RegistryDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> DatasetList:
    """List datasets, newest first."""
    items, total = registry.list_datasets(limit=limit, offset=offset)
    return DatasetList(
        items=[DatasetOut.of(r) for r in items], total=total, limit=limit, offset=offset
    )


@router.get("/{dataset_id}")
def get_dataset(dataset_id: Id, registry: RegistryDep) -> DatasetOut:
    """One dataset: statistics, split sizes and popularity groups."""
    return DatasetOut.of(registry.get_dataset(dataset_id))
