"""Prometheus metrics of one API process, served at /metrics.

- unkd_http_request_duration_seconds{method, route}: latency histogram per route template
  (unmatched paths share route="<unmatched>", so a scan cannot blow up the label space).
- unkd_http_requests_total{method, route, status}
- unkd_auth_failures_total{reason}: requests refused for a missing or wrong API key (missing,
  invalid) or a key whose role is below the route's (role).
- unkd_jobs_submitted_total{kind}: jobs this process accepted.
- unkd_jobs_total{kind, status} and unkd_jobs{status}: read from the Redis registry at
  scrape time, so they count the work of every worker, not just this process.

Each app gets its own CollectorRegistry: several apps in one process (tests) never clash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from service.core.registry import Registry

logger = logging.getLogger(__name__)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class RegistryCollector(Collector):
    """Job counts from Redis, read when Prometheus scrapes."""

    def __init__(self, get_registry: Callable[[], Registry | None]) -> None:
        self.get_registry = get_registry

    def collect(self) -> Iterator[Metric]:
        registry = self.get_registry()
        up = GaugeMetricFamily("unkd_registry_up", "1 when the Redis registry answered the scrape")
        if registry is None:
            up.add_metric([], 0)
            yield up
            return
        try:
            counts = registry.job_counts()
            current = registry.jobs_by_status()
        except Exception as exc:  # a scrape must not fail because Redis is down
            logger.warning("metrics: registry unreadable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        total = CounterMetricFamily(
            "unkd_jobs", "jobs that reached each status, all workers", labels=["kind", "status"]
        )
        for (kind, status), n in sorted(counts.items()):
            total.add_metric([kind, status], n)
        yield total
        now = GaugeMetricFamily("unkd_jobs_current", "jobs in each status now", labels=["status"])
        for status, n in current.items():
            now.add_metric([status], n)
        yield now


class ServiceMetrics:
    """The collectors of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "unkd_http_request_duration_seconds", "request latency by route template",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "unkd_http_requests", "requests by route and status code",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.auth_failures = Counter(
            "unkd_auth_failures", "requests refused: missing or wrong API key, or a role too low",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        self.jobs_submitted = Counter(
            "unkd_jobs_submitted", "jobs accepted by this API process", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self._source: Callable[[], Registry | None] = lambda: None
        self.registry.register(RegistryCollector(lambda: self._source()))

    def watch_registry(self, source: Callable[[], Registry | None]) -> None:
        self._source = source

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware task overhead on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder: list[int] = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The router stored the matched route in the scope; its template is the label.
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "GET")
            if method not in KNOWN_METHODS:  # any token is a valid method: keep labels bounded
                method = "OTHER"
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
            self.metrics.requests.labels(method, template, str(status_holder[0])).inc()
