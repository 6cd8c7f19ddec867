"""The statistics of outcomes, pure functions: Wilson intervals of a rate and the always-valid
comparison of two arms' click rates (no Redis, no numpy state).

Unit of analysis: one exposure (an item shown in one slot of one answer) is one trial, a
click on it one success. Exposures of one user are not independent, so the intervals are
somewhat too narrow when a few users see most of the slots; they are the figures a reader
compares, not a census.

Comparing two arms while the experiment runs: a fixed-sample z-test read every few minutes
rejects a true null far more often than its alpha says (with 20 looks, about a quarter of A/A
tests at alpha 0.05). The test here is the mixture sequential probability ratio test (mSPRT)
with a normal mixture, the "always-valid p-values" of Johari, Koomen, Pekelis and Walsh,
"Peeking at A/B Tests" (KDD 2017; Johari, Pekelis, Walsh, "Always valid inference", 2017):
with theta = p_B - p_A, its estimate d and that estimate's variance V (the plug-in
p(1-p)/n of each arm, the normal approximation the paper uses for Bernoulli data),

    Lambda = sqrt(V / (V + tau2)) * exp(tau2 * d^2 / (2 V (V + tau2)))

is the likelihood ratio of "theta ~ N(0, tau2)" against "theta = 0". Under the null it is a
nonnegative martingale with mean 1, so by Ville's inequality P(Lambda ever reaches 1/alpha)
<= alpha, however often one looks. The always-valid p-value is the running minimum of
1 / Lambda over the looks; the test is decided once it falls to alpha, and stays decided.

The mixing variance tau2 is fixed before the data (a data-chosen tau would break the
guarantee): MIXING_SD = 0.002, i.e. a difference of 2 clicks per 1,000 exposures. The paper
advises a tau of the size of the effects one expects: at click rates of a few per cent a
worthwhile change of a recommender moves the rate by tens of per cent of itself, 1 to 5 per
1,000. Any tau keeps the test valid; a wrong one only costs power (it decides later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile
ALPHA = 0.05
MIXING_SD = 0.002
MIXING_VARIANCE = MIXING_SD**2


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion; None without trials.

    More successes than trials (an item clicked twice after one showing) count as a rate
    of 1 for the interval.
    """
    if trials <= 0:
        return None
    n = float(trials)
    p = min(successes, trials) / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _variance(x_a: int, n_a: int, x_b: int, n_b: int) -> tuple[float, float]:
    """(d, V): the difference of the rates B - A and its plug-in variance."""
    p_a = min(x_a, n_a) / n_a
    p_b = min(x_b, n_b) / n_b
    return p_b - p_a, p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b


def msprt_lambda(x_a: int, n_a: int, x_b: int, n_b: int, tau2: float = MIXING_VARIANCE) -> float:
    """The mixture likelihood ratio of the module doc (1.0 where it is not defined yet: an arm
    without exposures, or no click anywhere so that V = 0)."""
    if n_a <= 0 or n_b <= 0:
        return 1.0
    d, v = _variance(x_a, n_a, x_b, n_b)
    if v <= 0.0:
        return 1.0
    log_lambda = 0.5 * math.log(v / (v + tau2)) + tau2 * d * d / (2 * v * (v + tau2))
    return math.exp(min(log_lambda, 700.0))


def msprt_p_value(x_a: int, n_a: int, x_b: int, n_b: int, tau2: float = MIXING_VARIANCE) -> float:
    """1 / Lambda at this look, capped at 1 (the always-valid p-value is its running minimum
    over the looks: `running_p`)."""
    return min(1.0, 1.0 / msprt_lambda(x_a, n_a, x_b, n_b, tau2))


def running_p(previous: float | None, now: float) -> float:
    """The always-valid p-value after one more look."""
    return now if previous is None else min(previous, now)


def msprt_interval(
    x_a: int,
    n_a: int,
    x_b: int,
    n_b: int,
    alpha: float = ALPHA,
    tau2: float = MIXING_VARIANCE,
) -> tuple[float, float] | None:
    """The always-valid (1 - alpha) confidence interval of p_B - p_A at this look: the theta
    whose mixture ratio against theta stays below 1/alpha,
    d +- sqrt(V (V + tau2) / tau2 * (2 log(1/alpha) + log((V + tau2) / V)))."""
    if n_a <= 0 or n_b <= 0:
        return None
    d, v = _variance(x_a, n_a, x_b, n_b)
    if v <= 0.0:
        return None
    half = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((v + tau2) / v)))
    return d - half, d + half


@dataclass(frozen=True)
class Rate:
    """Successes per 1,000 trials with its Wilson 95 % interval (None without trials)."""

    per_1000: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, successes: int, trials: int) -> Rate:
        interval = wilson(successes, trials)
        if interval is None:
            return cls(None, None, None)
        return cls(1000.0 * successes / trials, 1000.0 * interval[0], 1000.0 * interval[1])
