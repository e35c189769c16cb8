"""The statistics behind the gate: paired tests with a margin, α spending, Holm, and power.

Everything here is a pure function of counts. The gate compares two models on the *same* rows, so
the evidence is in the discordant rows: ``wins`` where only the candidate is right, ``losses``
where only the champion is. With ``n`` rows, the observed difference in accuracy is
``(wins - losses) / n``.

* :func:`score_test` tests H0: Δ ≤ margin against H1: Δ > margin (Tango's score test for paired
  proportions; with margin 0 it is McNemar's z). Its numerator is computed exactly, so a
  difference that equals the margin gives z = 0 whatever the floats say. The gate's superiority
  test uses it with a continuity correction (it errs towards not promoting); the class guard
  without (it errs towards vetoing).
* :func:`lower_bound` inverts it: the one-sided confidence bound on Δ.
* :func:`alpha_for` spends a champion's error budget over its challengers with
  ``α_k = α · 6 / (π² k²)``, which sums to α over any number of challenges.
* :func:`detectable` and :func:`rows_needed` say what an evaluation of this size and discordance
  could see at 80% power.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist

POWER = 0.8
SPENDING_RULE = "alpha_k = alpha * 6 / (pi^2 * k^2)"
_NORMAL = NormalDist()
_SPEND = 6 / math.pi**2


def exact(value: float) -> Fraction:
    """The decimal a person wrote (0.01 is 1/100, not the float nearest to it)."""
    return Fraction(repr(float(value)))


def upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal, accurate far into the tail."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def critical(alpha: float) -> float:
    """The one-sided critical value z with P(Z > z) = alpha."""
    return _NORMAL.inv_cdf(1 - alpha)


@dataclass(frozen=True)
class ScoreTest:
    statistic: float
    p_value: float


def _restricted_losses(wins: int, losses: int, n: int, margin: float) -> float:
    """The maximum-likelihood P(only the champion is right) when Δ is exactly ``margin``."""
    w = -wins - losses + (2 * n - wins + losses) * margin
    root = math.sqrt(max(w * w + 8 * n * losses * margin * (1 - margin), 0.0))
    return (root - w) / (4 * n)


def score_z(wins: int, losses: int, n: int, margin: float | Fraction, continuity: bool = False) -> float:
    """Tango's score statistic for H0: Δ = margin on paired binary outcomes.

    With ``continuity``, the excess over the margin is moved half a row towards zero (never past
    it), which keeps the test at its level when few rows disagree.
    """
    if n <= 0:
        return 0.0
    excess = Fraction(wins - losses) - n * (margin if isinstance(margin, Fraction) else exact(margin))
    if continuity:
        excess = max(abs(excess) - Fraction(1, 2), Fraction(0)) * (1 if excess > 0 else -1)
    d = float(margin)
    variance = n * (2 * _restricted_losses(wins, losses, n, d) + d * (1 - d))
    if excess == 0:
        return 0.0
    if variance <= 0:
        return math.copysign(math.inf, excess)
    return float(excess) / math.sqrt(variance)


def score_test(wins: int, losses: int, n: int, margin: float | Fraction, continuity: bool = False) -> ScoreTest:
    """One-sided test of H0: Δ ≤ margin against H1: Δ > margin."""
    z = score_z(wins, losses, n, margin, continuity)
    return ScoreTest(statistic=z, p_value=upper_tail(z))


def lower_bound(wins: int, losses: int, n: int, alpha: float, continuity: bool = False) -> float:
    """The one-sided (1 - alpha) lower confidence bound on Δ: the margins the test would reject."""
    if n <= 0:
        return -1.0
    target, low, high = critical(alpha), -1 + 1e-12, 1 - 1e-12
    for _ in range(80):  # z decreases in the margin; 80 halvings reach float resolution
        mid = (low + high) / 2
        if score_z(wins, losses, n, mid, continuity) > target:
            low = mid
        else:
            high = mid
    return low


def holm(p_values: Sequence[float], level: float) -> list[bool]:
    """Holm's step-down: which hypotheses are rejected with family-wise error at most ``level``."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > level / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


# -- spending a champion's α over its challengers -------------------------------------------------
def alpha_for(alpha: float, k: int) -> float:
    """The significance level of the k-th challenge (k = 1, 2, ...) against one champion."""
    if k < 1:
        raise ValueError(f"challenges are counted from 1, got {k}")
    return alpha * _SPEND / k**2


def alpha_spent(alpha: float, k: int) -> float:
    """What the first k challenges spent together (always below alpha)."""
    return alpha * _SPEND * sum(1 / j**2 for j in range(1, k + 1))


# -- power --------------------------------------------------------------------------------------
def _sds(delta: float, discordance: float, margin: float) -> tuple[float, float]:
    """Per-row standard deviations of the paired difference under H0 (at the margin) and at ``delta``.

    A candidate better by ``delta`` disagrees with the champion on at least that share of rows, so
    the discordance used is never below ``delta``.
    """
    disagree = max(discordance, delta)
    return math.sqrt(max(disagree - margin**2, 1e-12)), math.sqrt(max(disagree - delta**2, 1e-12))


def _power(delta: float, n: int, discordance: float, margin: float, alpha: float, power: float) -> float:
    """Approximate power of :func:`score_test` against a true ``delta``, minus the target."""
    null_sd, alt_sd = _sds(delta, discordance, margin)
    return _NORMAL.cdf((math.sqrt(n) * (delta - margin) - critical(alpha) * null_sd) / alt_sd) - power


def detectable(n: int, discordance: float, margin: float, alpha: float, power: float = POWER) -> float | None:
    """The smallest true Δ the test finds with ``power`` on n rows where the models disagree on a
    share ``discordance`` of them; None when not even a perfect candidate would be found."""
    if n <= 0:
        return None
    low, high = margin, 1.0 - 1e-9
    if high <= low or _power(high, n, discordance, margin, alpha, power) < 0:
        return None
    for _ in range(60):
        mid = (low + high) / 2
        if _power(mid, n, discordance, margin, alpha, power) < 0:
            low = mid
        else:
            high = mid
    return high


def rows_needed(delta: float, discordance: float, margin: float, alpha: float, power: float = POWER) -> int | None:
    """Paired rows for the test to find a true ``delta`` with ``power``; None if delta <= margin."""
    if delta <= margin:
        return None
    null_sd, alt_sd = _sds(delta, discordance, margin)
    return math.ceil(((critical(alpha) * null_sd + _NORMAL.inv_cdf(power) * alt_sd) / (delta - margin)) ** 2)


def detectable_with_se(se: float, margin: float, alpha: float, power: float = POWER) -> float:
    """The same for a statistic with a known standard error (the bootstrap path)."""
    return margin + (critical(alpha) + _NORMAL.inv_cdf(power)) * se


def rows_needed_with_se(
    delta: float, se: float, n: int, margin: float, alpha: float, power: float = POWER
) -> int | None:
    """Rows for a statistic whose standard error on ``n`` rows is ``se`` (it shrinks as 1/sqrt(n))."""
    if delta <= margin or se <= 0:
        return None
    return math.ceil(n * ((critical(alpha) + _NORMAL.inv_cdf(power)) * se / (delta - margin)) ** 2)
