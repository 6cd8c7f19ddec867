"""Prometheus metrics of one API process, served at /metrics.

- unkd_http_request_duration_seconds{method, route}: latency histogram per route template
  (unmatched paths share route="<unmatched>", so a scan cannot blow up the label space).
- unkd_http_requests_total{method, route, status}
- unkd_auth_failures_total{reason}: requests refused for a missing or wrong API key (missing,
  invalid) or a key whose role is below the route's (role).
- unkd_jobs_submitted_total{kind}: jobs this process accepted.
- unkd_events_total{result}: events of POST /v1/events this process stored, or dropped as a
  repeated event_id (result="duplicate").
- unkd_jobs_total{kind, status} and unkd_jobs{status}: read from the Redis registry at
  scrape time, so they count the work of every worker, not just this process.
- unkd_exposure_*{model_id[, group]}: live exposure of the served models (the active one,
  an experiment's arms), read from Redis at scrape time, so summed over every API process
  (service/serving/exposure/). GET /v1/serving/exposure as gauges, one name per figure and
  span (`window`: the last 10 minutes, `since_publish`): requests, slots, head_share,
  group_share{group}, arp, coverage, gini, latency_p50_seconds, latency_p99_seconds; and
  unkd_exposure_offline_group_share{group} (the offline report's exposure_share@20),
  unkd_exposure_arm_weight (arms only), unkd_exposure_up. Labels are model_id and group
  only, for the models served now: the series are bounded by the arms and G.
- unkd_outcomes_*{model_id[, group]}: events attributed to the served models' answers
  (service/serving/outcomes/), read from Redis at scrape time like exposure: per span
  (`window`, `since_publish`) exposures, clicks, purchases, click_rate_per_1000,
  purchase_rate_per_1000, tail_click_share, group_click_rate_per_1000{group};
  unkd_outcomes_unattributed{reason} (since the counters began); with an experiment of two
  arms unkd_outcomes_test_p_value (always-valid), unkd_outcomes_test_decided and
  unkd_outcomes_test_difference_per_1000 (B - A); unkd_outcomes_up. A scrape is a look of
  the test (its running minimum is kept in Redis), which the always-valid p-value allows.

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
    from service.serving.outcomes.schemas import OutcomeScope, OutcomesReport
    from service.serving.schemas import ExposureReport, ExposureScope

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


# (name, help, value in the series' unit) of the per-model figures of one span
_SCOPE_FIGURES: tuple[tuple[str, str, Callable[[ExposureScope], float | None]], ...] = (
    ("requests", "answers counted (user lists)", lambda s: s.requests),
    ("slots", "items shown", lambda s: s.slots),
    ("head_share", "share of the slots given to popularity group 0", lambda s: s.head_share),
    ("arp", "average recommendation popularity (mean training interactions)", lambda s: s.arp),
    ("coverage", "distinct items shown / catalogue size", lambda s: s.coverage),
    ("gini", "Gini index of the items' counts", lambda s: s.gini),
    (
        "latency_p50_seconds",
        "median answer latency",
        lambda s: None if s.latency_ms.p50 is None else s.latency_ms.p50 / 1e3,
    ),
    (
        "latency_p99_seconds",
        "99th percentile answer latency",
        lambda s: None if s.latency_ms.p99 is None else s.latency_ms.p99 / 1e3,
    ),
)


class ExposureCollector(Collector):
    """Live exposure of the served models, read from Redis when Prometheus scrapes."""

    def __init__(self, get_report: Callable[[], ExposureReport | None]) -> None:
        self.get_report = get_report

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "unkd_exposure_up", "1 when the live exposure counts were read from Redis"
        )
        try:
            report = self.get_report()
        except Exception as exc:  # a scrape must not fail because Redis is down
            logger.warning("metrics: live exposure unreadable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        if report is None:  # the app is not started
            return
        up.add_metric([], 1)
        yield up
        for span in ("window", "since_publish"):
            families = []
            for name, doc, value in _SCOPE_FIGURES:
                family = GaugeMetricFamily(
                    f"unkd_exposure_{span}_{name}", f"{doc} ({span})", labels=["model_id"]
                )
                for m in report.models:
                    v = value(getattr(m, span))
                    if v is not None:
                        family.add_metric([m.model_id], float(v))
                families.append(family)
            shares = GaugeMetricFamily(
                f"unkd_exposure_{span}_group_share",
                f"share of the slots given to each popularity group ({span})",
                labels=["model_id", "group"],
            )
            for m in report.models:
                for g in getattr(m, span).groups:
                    if g.share is not None:
                        shares.add_metric([m.model_id, str(g.group)], g.share)
            yield from families
            yield shares
        offline = GaugeMetricFamily(
            "unkd_exposure_offline_group_share",
            "each group's exposure_share@20 in the model's offline report",
            labels=["model_id", "group"],
        )
        weight = GaugeMetricFamily(
            "unkd_exposure_arm_weight", "share of users of each experiment arm", labels=["model_id"]
        )
        for m in report.models:
            for g in m.window.groups:
                if g.offline_share is not None:
                    offline.add_metric([m.model_id, str(g.group)], g.offline_share)
            if m.weight is not None:
                weight.add_metric([m.model_id], m.weight)
        yield offline
        yield weight


_OUTCOME_FIGURES: tuple[tuple[str, str, Callable[[OutcomeScope], float | None]], ...] = (
    ("exposures", "items shown", lambda s: s.exposures),
    ("clicks", "clicks attributed to the answers", lambda s: s.clicks),
    ("purchases", "purchases attributed to the answers", lambda s: s.purchases),
    ("click_rate_per_1000", "clicks per 1,000 exposures", lambda s: s.click_rate.per_1000),
    (
        "purchase_rate_per_1000",
        "purchases per 1,000 exposures",
        lambda s: s.purchase_rate.per_1000,
    ),
    ("tail_click_share", "share of clicks on groups 1 .. G-1", lambda s: s.tail_click_share),
)


class OutcomesCollector(Collector):
    """Outcomes of the served models and the arms' test, read from Redis when scraped."""

    def __init__(self, get_report: Callable[[], OutcomesReport | None]) -> None:
        self.get_report = get_report

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("unkd_outcomes_up", "1 when the outcome counts were read from Redis")
        try:
            report = self.get_report()
        except Exception as exc:  # a scrape must not fail because Redis is down
            logger.warning("metrics: outcomes unreadable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        if report is None:  # the app is not started
            return
        up.add_metric([], 1)
        yield up
        for span in ("window", "since_publish"):
            for name, doc, value in _OUTCOME_FIGURES:
                family = GaugeMetricFamily(
                    f"unkd_outcomes_{span}_{name}", f"{doc} ({span})", labels=["model_id"]
                )
                for m in report.models:
                    v = value(getattr(m, span))
                    if v is not None:
                        family.add_metric([m.model_id], float(v))
                yield family
            groups = GaugeMetricFamily(
                f"unkd_outcomes_{span}_group_click_rate_per_1000",
                f"clicks per 1,000 exposures of each popularity group ({span})",
                labels=["model_id", "group"],
            )
            for m in report.models:
                for g in getattr(m, span).groups:
                    if g.click_rate.per_1000 is not None:
                        groups.add_metric([m.model_id, str(g.group)], g.click_rate.per_1000)
            yield groups
        lost = GaugeMetricFamily(
            "unkd_outcomes_unattributed",
            "events no answer explains, by reason (since the counters began)",
            labels=["reason"],
        )
        for reason, n in report.unattributed.total.items():
            lost.add_metric([reason], float(n))
        yield lost
        test = report.test
        if test is None:
            return
        labels = ["arm_a", "arm_b"]
        arms = [test.arm_a, test.arm_b]
        for name, doc, v in (
            ("p_value", "always-valid p-value of the arms' click rates (mSPRT)", test.p_value),
            ("decided", "1 once the p-value fell to alpha", float(test.decided)),
            (
                "difference_per_1000",
                "B's clicks per 1,000 exposures - A's",
                test.difference_per_1000,
            ),
        ):
            family = GaugeMetricFamily(f"unkd_outcomes_test_{name}", doc, labels=labels)
            if v is not None:
                family.add_metric(arms, float(v))
            yield family


class ServiceMetrics:
    """The collectors of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "unkd_http_request_duration_seconds",
            "request latency by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "unkd_http_requests",
            "requests by route and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "unkd_auth_failures",
            "requests refused: missing or wrong API key, or a role too low",
            ["reason"],
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "unkd_jobs_submitted",
            "jobs accepted by this API process",
            ["kind"],
            registry=self.registry,
        )
        self.events = Counter(
            "unkd_events",
            "events of POST /v1/events by result: stored, or duplicate (event_id seen before)",
            ["result"],
            registry=self.registry,
        )
        self._source: Callable[[], Registry | None] = lambda: None
        self.registry.register(RegistryCollector(lambda: self._source()))
        self._exposure: Callable[[], ExposureReport | None] = lambda: None
        self.registry.register(ExposureCollector(lambda: self._exposure()))
        self._outcomes: Callable[[], OutcomesReport | None] = lambda: None
        self.registry.register(OutcomesCollector(lambda: self._outcomes()))

    def watch_registry(self, source: Callable[[], Registry | None]) -> None:
        self._source = source

    def watch_exposure(self, source: Callable[[], ExposureReport | None]) -> None:
        self._exposure = source

    def watch_outcomes(self, source: Callable[[], OutcomesReport | None]) -> None:
        self._outcomes = source

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
