"""Domain errors -> HTTP status, mapped once. Every body keeps FastAPI's {"detail": ...}.

unknown id -> 404, state conflict -> 409, bad data -> 422, no model served yet -> 503,
Redis or the broker unreachable -> 503 (with Retry-After). Each detail names the field at
fault and the reason. Request values refused at run time (k above max_k, a bad filter) are
FastAPI's RequestValidationError, whose 422 FastAPI shapes itself; `_invalid` only keeps that
422 a 422 when the refused input holds a lone surrogate (JSON's "\ud800", which pydantic
refuses as `string_unicode` and echoes back): FastAPI's own handler then fails to encode
its answer as UTF-8 and the client got a 500.
"""

from __future__ import annotations

import json
import logging

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError

from service.api.uploads import UploadError
from service.core.records import ConflictError, NotFoundError, NotServingError
from training.errors import DataError

logger = logging.getLogger(__name__)


class ServiceUnavailableError(RuntimeError):
    """A dependency (Redis, the broker) cannot serve the request now."""


def _detail(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"detail": detail}, headers=headers)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return _detail(404, str(exc))


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return _detail(409, str(exc))


async def _not_serving(_: Request, exc: Exception) -> JSONResponse:
    return _detail(503, str(exc))


async def _bad_data(_: Request, exc: Exception) -> JSONResponse:
    return _detail(422, str(exc))


async def _upload(_: Request, exc: Exception) -> JSONResponse:
    status_code = exc.status_code if isinstance(exc, UploadError) else 422
    return _detail(status_code, str(exc))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("%s %s: dependency unavailable: %r", request.method, request.url.path, exc)
    what = "registry (Redis)" if isinstance(exc, redis.RedisError) else "job queue (broker)"
    if isinstance(exc, ServiceUnavailableError):
        what = str(exc)
    return _detail(503, f"{what}: unavailable, retry later", headers={"Retry-After": "5"})


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    try:
        return await request_validation_exception_handler(request, exc)
    except UnicodeEncodeError:  # a lone surrogate echoed in "input": escaped, the JSON is equal
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(ConflictError, _conflict)
    app.add_exception_handler(NotServingError, _not_serving)
    app.add_exception_handler(DataError, _bad_data)
    app.add_exception_handler(UploadError, _upload)
    app.add_exception_handler(redis.ConnectionError, _unavailable)
    app.add_exception_handler(redis.TimeoutError, _unavailable)
    app.add_exception_handler(OperationalError, _unavailable)
    app.add_exception_handler(ServiceUnavailableError, _unavailable)
