"""tools/stats.py against closed forms and printed t-table values, on fixed numbers.

Closed forms of Student's t CDF: ν = 1 is the Cauchy distribution, 1/2 + atan(t)/π; ν = 2 is
1/2 + t / (2√(2 + t²)); ν = 4 is 1/2 + (3/4)·x·(1 − x²/3) with x = t/√(4 + t²). The ν = 2 quantile
inverts to t = (2p − 1)/√(2p(1 − p)).
"""

from __future__ import annotations

import math
import statistics

import pytest

from tools import stats


def cdf_closed(t: float, df: int) -> float:
    if df == 1:
        return 0.5 + math.atan(t) / math.pi
    if df == 2:
        return 0.5 + t / (2 * math.sqrt(2 + t * t))
    x = t / math.sqrt(4 + t * t)  # df == 4
    return 0.5 + 0.75 * x * (1 - x * x / 3)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("t", [-7.5, -2.0, -0.3, 0.0, 0.4, 1.0, 2.776, 12.7])
def test_t_cdf_matches_closed_forms(t: float, df: int) -> None:
    assert stats.t_cdf(t, df) == pytest.approx(cdf_closed(t, df), abs=1e-13)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_inverts_the_two_degree_closed_form(p: float) -> None:
    assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)))
    assert stats.t_quantile(1 - p, 2) == pytest.approx(-stats.t_quantile(p, 2))


# Two-sided 95 % critical values as t-tables print them (3 decimals).
TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize(("df", "value"), TABLE.items())
def test_t_quantile_matches_the_printed_table(df: int, value: float) -> None:
    assert round(stats.t_quantile(0.975, df), 3) == value


def test_summary_of_fixed_numbers() -> None:
    s = stats.summary([84.0, 86.0, 88.0])
    assert (s.n, s.mean, s.std) == (3, 86.0, 2.0)
    half = 4.302652729749464 * 2.0 / math.sqrt(3)  # t(0.975, 2) · s / √n
    assert s.low == pytest.approx(86.0 - half) and s.high == pytest.approx(86.0 + half)
    assert s.contains(80.0) is False and s.contains(90.9) is True
    one = stats.summary([5.0])
    assert (one.n, one.mean, one.std, one.low, one.contains(5.0)) == (1, 5.0, None, None, None)
    assert stats.summary([]).mean is None


def test_welch_of_fixed_numbers_matches_the_closed_form() -> None:
    # a = 1, 2, 3 and b = 4, 5, 6: variances 1 and 1, t = −3/√(2/3), df = 4 exactly.
    test = stats.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert test.t == pytest.approx(-3 / math.sqrt(2 / 3))
    assert test.df == pytest.approx(4.0)
    assert test.p == pytest.approx(2 * (1 - cdf_closed(3 / math.sqrt(2 / 3), 4)), abs=1e-12)
    assert test.p == pytest.approx(0.021311641128756, abs=1e-12)


def test_welch_unequal_variances_uses_the_satterthwaite_degrees() -> None:
    a, b = [10.0, 12.0, 14.0, 16.0], [11.0, 11.5]
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 2
    test = stats.welch(a, b)
    assert test.df == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 1))
    assert test.t == pytest.approx((13.0 - 11.25) / math.sqrt(va + vb))
    assert 0.0 < test.p < 1.0 and stats.welch(b, a).p == pytest.approx(test.p)


def test_welch_is_undefined_without_two_values_or_any_variance() -> None:
    assert stats.welch([1.0], [2.0, 3.0]) is None
    assert stats.welch([2.0, 2.0], [3.0, 3.0]) is None
    equal = stats.welch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert equal.t == 0.0 and equal.p == pytest.approx(1.0)


def test_bad_arguments_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"expected 0 < p < 1, got 1\.5"):
        stats.t_quantile(1.5, 3)
    with pytest.raises(ValueError, match=r"expected df > 0, got 0"):
        stats.t_cdf(1.0, 0)
