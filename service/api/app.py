"""The FastAPI app: create_app(settings) and the lifespan that connects Redis, Celery and
the serving index.

    uvicorn --factory service.api.app:create_app        (settings from UNKD_* variables)
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from service.api.errors import install_error_handlers
from service.api.limits import BodyLimitMiddleware
from service.api.prometheus import MetricsMiddleware, ServiceMetrics
from service.api.routes import (
    datasets,
    events,
    experiment,
    exposure,
    jobs,
    models,
    ops,
    outcomes,
    pipelines,
    publishing,
    reports,
    versions,
)
from service.core.artifacts import ArtifactStore
from service.core.config import Settings, get_settings
from service.core.events import EventLog
from service.core.queue import make_celery
from service.core.registry import Registry
from service.serving import item_routes
from service.serving import routes as serving_routes
from service.serving.exposure.counter import ExposureCounter
from service.serving.exposure.reader import ExposureReader, offline_group_shares
from service.serving.fresh import FreshFeed, FreshItems
from service.serving.index_store import IndexStore
from service.serving.outcomes.consumer import OutcomeConsumer
from service.serving.outcomes.reader import OutcomeReader
from service.serving.outcomes.schemas import OutcomesReport
from service.serving.schemas import ExposureReport

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_logging_configured = False


def configure_logging(level: str) -> None:
    """Once per process: a stderr handler on the root logger (uvicorn keeps its own)."""
    global _logging_configured
    if _logging_configured:
        return
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    _logging_configured = True


def _start_index_store(store: IndexStore, retry_s: float) -> threading.Event:
    """Start the serving index watcher; while Redis is down, keep trying in the background.

    The API comes up either way: /healthz answers, /readyz and the registry routes say 503
    until Redis is back. Returns the event that ends the retry loop.
    """
    stop = threading.Event()
    try:
        store.start()
        return stop
    except (redis.RedisError, OSError) as exc:
        logger.warning("Redis unreachable at startup (%s); retrying every %.1fs", exc, retry_s)

    def retry() -> None:
        while not stop.wait(retry_s):
            try:
                store.start()
                logger.info("Redis reachable: serving index watcher started")
                return
            except (redis.RedisError, OSError):
                continue

    threading.Thread(target=retry, name="index-store-start", daemon=True).start()
    return stop


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Connect the registry, build the Celery client, start the index watcher, the
    exposure flusher, the outcome consumer and the fresh-items feed; undo on exit."""
    settings: Settings = app.state.settings
    if not settings.redis_url:
        raise RuntimeError(
            "UNKD_REDIS_URL is not set: the API needs the stack's Redis (`unkd up` starts one)"
        )
    registry = Registry.from_url(settings.redis_url, timeout_s=settings.redis_timeout_s)
    celery_app = make_celery(settings, set_as_current=False)
    # Exposure counts hold binary item arrays: a client of its own, without decode_responses.
    exposure_redis = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    counter = (
        ExposureCounter(exposure_redis, settings.exposure_flush_s)
        if settings.exposure_counting
        else None
    )
    artifacts = ArtifactStore.from_settings(settings)
    reader = ExposureReader(
        exposure_redis,
        lambda model_id: offline_group_shares(registry, artifacts, model_id),
    )
    # Attributing events to answers runs where answers are counted: one consumer per process.
    events_redis = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s + 2.0,  # above the consumer's blocking read
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        decode_responses=True,
    )
    # Passes every 0.25 s at most: an idle pass costs Redis 3 commands, and a stop waits for
    # the pass's blocking read.
    consumer = (
        OutcomeConsumer(events_redis, period_s=min(0.25, settings.exposure_flush_s))
        if settings.exposure_counting
        else None
    )
    store = IndexStore(settings, registry, exposure=counter)
    log_redis = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    fresh = FreshItems(
        settings.fresh_max_users, settings.fresh_items_per_user, settings.fresh_ttl_s
    )
    feed_block_ms = 500
    # Its own connection: XREAD BLOCK holds it, with a read timeout beyond the block.
    feed_redis = redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s + feed_block_ms / 1000,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    feed = FreshFeed(
        feed_redis,
        fresh,
        settings.events_positive_types,
        tail_entries=settings.fresh_tail_entries,
        block_ms=feed_block_ms,
        retry_s=settings.reload_poll_s,
    )
    app.state.event_log = EventLog(
        log_redis, settings.events_dedup_ttl_s, settings.events_stream_maxlen
    )
    app.state.fresh = fresh
    app.state.registry = registry
    app.state.celery = celery_app
    app.state.index_store = store
    app.state.exposure_counter = counter
    app.state.exposure_reader = reader
    app.state.outcome_consumer = consumer
    outcome_reader = OutcomeReader(exposure_redis)
    app.state.outcome_reader = outcome_reader
    app.state.metrics.watch_registry(lambda: registry)

    def served_exposure() -> ExposureReport:
        state = store.snapshot()
        return reader.report(
            state.models() if state is not None else [], counting=counter is not None
        )

    app.state.metrics.watch_exposure(served_exposure)

    def served_outcomes() -> OutcomesReport:
        state = store.snapshot()
        if state is None:
            return outcome_reader.report([], None)
        return outcome_reader.report(state.models(), state.experiment)

    app.state.metrics.watch_outcomes(served_outcomes)
    if counter is not None:
        counter.start()
    if consumer is not None:
        consumer.start()
    feed.start()
    stop_retry = _start_index_store(store, settings.reload_poll_s)
    logger.info(
        "API up: queues %s/%s, data dir %s",
        settings.train_queue,
        settings.light_queue,
        settings.data_dir,
    )
    try:
        yield
    finally:
        stop_retry.set()
        store.stop()
        if consumer is not None:
            consumer.stop()
        feed.stop()
        if counter is not None:
            counter.stop()  # flushes what is left
        app.state.metrics.watch_registry(lambda: None)
        app.state.metrics.watch_exposure(lambda: None)
        app.state.metrics.watch_outcomes(lambda: None)
        celery_app.close()
        exposure_redis.close()
        events_redis.close()
        feed_redis.close()
        log_redis.close()
        registry.close()
        logger.info("API stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app; tests pass their own Settings, uvicorn's factory mode passes none."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="unkd-serve",
        version=VERSION,
        description="Popularity-unbiased knowledge distillation (UnKD) as a service: "
        "datasets, teacher and distillation jobs, quality reports, FAISS serving.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: counts 413s too
    install_error_handlers(app)
    # The serving routers come first: a request is matched against the routers in this order,
    # and the recommendation routes are the hot path (no path of another router overlaps them).
    for router in (
        serving_routes.router,
        item_routes.router,
        datasets.router,
        versions.router,
        events.router,
        jobs.router,
        models.router,
        publishing.router,
        exposure.router,
        outcomes.router,
        experiment.router,
        pipelines.router,
        ops.router,
        reports.router,
    ):
        app.include_router(router)
    return app
