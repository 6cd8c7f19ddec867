"""Reading outcomes back: per served model, the exposure counters and the outcome counters of
the window's buckets and of the epoch, in one pipeline; the rates, intervals and the arms'
test computed from them (for the route and /metrics).

Only the exposure hashes are read (slots, slots per group, answers), not the item strings:
a report costs ~2 x 61 small HGETALLs per model.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.core import keys
from service.serving.exposure.counts import BUCKET_S, WINDOW_S, Counts, window_buckets
from service.serving.exposure.delta import SINCE_TTL_S
from service.serving.outcomes.attribution import POSITION_BUCKETS, REASONS
from service.serving.outcomes.schemas import (
    ArmTest,
    OutcomeGroup,
    OutcomeModel,
    OutcomeRate,
    OutcomeScope,
    OutcomesReport,
    Unattributed,
)
from service.serving.outcomes.stats import (
    ALPHA,
    MIXING_VARIANCE,
    Rate,
    msprt_interval,
    msprt_p_value,
)

if TYPE_CHECKING:
    import redis

    from service.serving.experiment import LoadedExperiment
    from service.serving.served_model import ServedModel

METHOD = "mSPRT, normal mixture (Johari et al. 2017): always-valid p-value"

# KEYS[1]: the test's running minimum. ARGV: this look's p-value, the key's TTL. Returns the
# minimum over every look so far, this one included.
RUNNING_MIN_LUA = """
local old = redis.call('GET', KEYS[1])
if old and tonumber(old) <= tonumber(ARGV[1]) then return old end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_counters(raw: Mapping[Any, Any]) -> Counter[str]:
    return Counter({_text(k): int(_text(v)) for k, v in raw.items()})


def rate(successes: int, trials: int) -> OutcomeRate:
    r = Rate.of(successes, trials)
    return OutcomeRate(per_1000=r.per_1000, low=r.low, high=r.high)


def scope(exposure: Counts, outcomes: Counter[str]) -> OutcomeScope:
    """The figures of one span from its exposure counters and its outcome counters."""
    clicks = outcomes["click"]
    tail = sum(outcomes[f"click:g:{g}"] for g in range(1, len(exposure.groups)))
    return OutcomeScope(
        exposures=exposure.slots,
        requests=exposure.requests,
        views=outcomes["view"],
        clicks=clicks,
        purchases=outcomes["purchase"],
        click_rate=rate(clicks, exposure.slots),
        purchase_rate=rate(outcomes["purchase"], exposure.slots),
        tail_click_share=tail / clicks if clicks else None,
        groups=[
            OutcomeGroup(
                group=g,
                exposures=int(shown),
                clicks=outcomes[f"click:g:{g}"],
                purchases=outcomes[f"purchase:g:{g}"],
                click_rate=rate(outcomes[f"click:g:{g}"], int(shown)),
                purchase_rate=rate(outcomes[f"purchase:g:{g}"], int(shown)),
            )
            for g, shown in enumerate(exposure.groups.tolist())
        ],
        clicks_by_position={p: outcomes[f"click:p:{p}"] for p in POSITION_BUCKETS},
    )


@dataclass
class OutcomeReader:
    """Reads the served models' outcomes from Redis (module doc).

    Args:
        redis_client: any client (bytes or str replies).
        clock: seconds since the epoch (tests move time).
    """

    redis: redis.Redis
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._running_min = self.redis.register_script(RUNNING_MIN_LUA)

    def report(
        self, models: Sequence[ServedModel], experiment: LoadedExperiment | None
    ) -> OutcomesReport:
        """The outcomes of `models` (the served ones, arms first) in the window and since
        their epoch began, and the arms' test when `experiment` has two arms."""
        buckets = window_buckets(self.clock())
        pipe = self.redis.pipeline(transaction=False)
        for served in models:
            exposure, outcomes = served.tally.key, served.tally.outcomes
            for b in buckets:
                pipe.hgetall(keys.exposure_bucket(exposure, b))
            pipe.hgetall(keys.exposure_total(exposure))
            for b in buckets:
                pipe.hgetall(keys.outcomes_bucket(outcomes, b))
            pipe.hgetall(keys.outcomes_total(outcomes))
        unattributed = keys.outcomes_unattributed()
        for b in buckets:
            pipe.hgetall(keys.outcomes_bucket(unattributed, b))
        pipe.hgetall(keys.outcomes_total(unattributed))
        replies = pipe.execute()
        n = len(buckets) + 1
        out = []
        for m, served in enumerate(models):
            g = served.bundle.n_groups
            part = replies[2 * n * m : 2 * n * (m + 1)]
            window = Counts.zero(g)
            for raw in part[: n - 1]:
                window.add(Counts.from_hash(raw, g))
            since = Counts.from_hash(part[n - 1], g)
            window_outcomes: Counter[str] = Counter()
            for raw in part[n : 2 * n - 1]:
                window_outcomes.update(decode_counters(raw))
            out.append(
                OutcomeModel(
                    model_id=served.model_id,
                    role=served.role,
                    weight=served.weight,
                    since=served.tally.since,
                    window=scope(window, window_outcomes),
                    since_publish=scope(since, decode_counters(part[2 * n - 1])),
                )
            )
        tail = replies[2 * n * len(models) :]
        lost_window: Counter[str] = Counter()
        for raw in tail[:-1]:
            lost_window.update(decode_counters(raw))
        lost_total = decode_counters(tail[-1])
        return OutcomesReport(
            window_s=WINDOW_S,
            bucket_s=BUCKET_S,
            models=out,
            test=self.arm_test(out, experiment),
            unattributed=Unattributed(
                window={r: lost_window[r] for r in REASONS if lost_window[r]},
                total={r: lost_total[r] for r in REASONS if lost_total[r]},
            ),
        )

    def arm_test(
        self, models: Sequence[OutcomeModel], experiment: LoadedExperiment | None
    ) -> ArmTest | None:
        """The always-valid comparison of two arms' click rates since their epoch (one look:
        its p-value joins the running minimum kept in Redis for this experiment)."""
        if experiment is None or len(experiment.arms) != 2:
            return None
        by_id = {m.model_id: m for m in models}
        a, b = (by_id[arm.model_id].since_publish for arm in experiment.arms)
        x_a, n_a, x_b, n_b = a.clicks, a.exposures, b.clicks, b.exposures
        spec = experiment.spec
        arm_a, arm_b = (arm.model_id for arm in experiment.arms)
        key = keys.outcomes_test(f"{spec.salt}|{spec.started_at.isoformat()}|{arm_a}|{arm_b}")
        p_now = msprt_p_value(x_a, n_a, x_b, n_b)
        p = float(_text(self._running_min(keys=[key], args=[repr(p_now), SINCE_TTL_S])))
        interval = msprt_interval(x_a, n_a, x_b, n_b)
        difference = (
            1000.0 * (min(x_b, n_b) / n_b - min(x_a, n_a) / n_a) if n_a > 0 and n_b > 0 else None
        )
        decided = p <= ALPHA
        better = None
        if decided and difference is not None:
            better = arm_b if difference > 0 else arm_a
        return ArmTest(
            method=METHOD,
            arm_a=arm_a,
            arm_b=arm_b,
            span="since_publish",
            mixing_variance=MIXING_VARIANCE,
            alpha=ALPHA,
            difference_per_1000=difference,
            interval_per_1000=[1000.0 * interval[0], 1000.0 * interval[1]] if interval else None,
            p_value=p,
            decided=decided,
            better=better,
        )
