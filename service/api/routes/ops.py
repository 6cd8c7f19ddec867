"""Operations: liveness, readiness (Redis reachable and an index loaded), Prometheus metrics."""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Response, status

from service.api.deps import IndexStoreDep, MetricsDep, RegistryDep
from service.api.schemas import Health, Readiness

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/readyz", responses={503: {"model": Readiness, "description": "not ready"}})
def readyz(response: Response, registry: RegistryDep, store: IndexStoreDep) -> Readiness:
    """Readiness: Redis answers PING and a published model is loaded."""
    try:
        redis_ok = registry.ping()
    except (redis.RedisError, OSError) as exc:
        logger.warning("readyz: Redis unreachable (%s)", exc)
        redis_ok = False
    bundle = store.current
    ready = redis_ok and bundle is not None
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        status="ready" if ready else "not ready",
        redis=redis_ok,
        index_loaded=bundle is not None,
        model_id=bundle.model_id if bundle else None,
    )


@router.get(
    "/metrics", response_class=Response, responses={200: {"content": {PROMETHEUS_CONTENT_TYPE: {}}}}
)
def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics of this API process (and job counts from the registry)."""
    return Response(content=metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)
