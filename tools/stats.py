"""Statistics of a results table: mean ± sample std, Student-t confidence intervals, Welch's t-test.

Everything a reproduction table needs over a handful of seeds, in plain Python (no SciPy):

- ``summary(values)``: n, mean, sample standard deviation (n − 1 denominator) and the two-sided
  95 % confidence interval of the mean, mean ± t(0.975, n − 1) · s / √n;
- ``welch(a, b)``: Welch's unequal-variance t-test (Welch 1947): t, the Welch–Satterthwaite degrees
  of freedom and the two-sided p-value;
- ``t_cdf`` and ``t_quantile``: Student's t distribution through the regularised incomplete beta
  function, I_x(a, b), evaluated with its continued fraction (modified Lentz method), as in
  Abramowitz & Stegun 26.5.8 and 26.7.1.

``tests/test_stats.py`` checks them against closed forms (ν = 1, 2, 4) and printed t-table values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 500


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (A&S 26.5.8), by the modified Lentz method."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    total = d
    for m in range(1, _MAX_TERMS):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even step d_{2m}
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # odd step d_{2m+1}
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            total *= c * d
        if abs(c * d - 1.0) < _EPS:
            return total
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete_beta: expected 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (A&S 26.7.1)."""
    if df <= 0:
        raise ValueError(f"t_cdf: expected df > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on :func:`t_cdf` (to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: expected 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Summary:
    """n values: their mean, sample std and 95 % CI of the mean (None where n is too small)."""

    n: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None

    def contains(self, value: float) -> bool | None:
        """Whether ``value`` lies in the interval; None without an interval."""
        if self.low is None or self.high is None:
            return None
        return self.low <= value <= self.high


def summary(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample std (n − 1) and the Student-t interval mean ± t · s / √n."""
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of two samples: the statistic, its degrees of freedom and the p-value."""

    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float]) -> Welch | None:
    """Two-sided Welch t-test of mean(a) = mean(b); None when it is undefined.

    Undefined when a sample has fewer than two values, or when both have zero variance (the
    statistic is then 0/0 or ±∞ with no degrees of freedom).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0.0:
        return None
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = 2.0 * (1.0 - t_cdf(abs(t), df))
    return Welch(t, df, min(1.0, max(0.0, p)))
