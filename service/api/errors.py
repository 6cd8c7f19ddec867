"""Domain errors -> HTTP status, mapped once. Every body keeps FastAPI's {"detail": ...}.

unknown id -> 404, state conflict -> 409, bad data -> 422, no model served yet -> 503,
Redis or the broker unreachable -> 503 (with Retry-After). Each detail names the field at
fault and the reason. Request values refused at run time (k above max_k, a bad filter) are
FastAPI's RequestValidationError, whose 422 FastAPI shapes itself.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(ConflictError, _conflict)
    app.add_exception_handler(NotServingError, _not_serving)
    app.add_exception_handler(DataError, _bad_data)
    app.add_exception_handler(UploadError, _upload)
    app.add_exception_handler(redis.ConnectionError, _unavailable)
    app.add_exception_handler(redis.TimeoutError, _unavailable)
    app.add_exception_handler(OperationalError, _unavailable)
    app.add_exception_handler(ServiceUnavailableError, _unavailable)
