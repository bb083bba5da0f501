"""suite/stats.py against numbers worked out by hand (t and F quantiles from printed tables)."""

import math

import pytest

from suite import stats
from suite.stats import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE, Interval


def test_two_seeds_that_agree_roughly_give_a_wide_t_interval():
    # mean 2, sd sqrt(2), se 1, t(0.975, df 1) = 12.7062 (tables)
    iv = stats.mean_interval([1.0, 3.0])
    assert (iv.estimate, iv.n) == (2.0, 2)
    assert iv.low == pytest.approx(2 - 12.7062, abs=1e-3) and iv.high == pytest.approx(2 + 12.7062, abs=1e-3)
    # sign patterns of (1, 3): sums 4, -2, 2, -4; two reach |4|
    assert iv.p == 0.5


def test_three_tight_seeds_give_a_narrow_interval():
    # mean 2.7, sd 0.1, se 0.1 / sqrt(3), t(0.975, df 2) = 4.3027
    iv = stats.mean_interval([2.7, 2.6, 2.8])
    half = 4.3027 * 0.1 / math.sqrt(3)
    assert iv.low == pytest.approx(2.7 - half, abs=1e-4) and iv.high == pytest.approx(2.7 + half, abs=1e-4)
    assert iv.p == pytest.approx(2 / 8)  # only all-plus and all-minus reach |8.1|


def test_one_value_has_no_interval():
    assert stats.mean_interval([5.0]) is None
    assert stats.mean_interval([]) is None


def test_std_ratio_interval_from_the_f_distribution():
    # var(a) = 1, var(b) = 4: ratio of stds 0.5; F(0.975; 2, 2) = 39 (tables)
    iv = stats.std_ratio_interval([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert iv.estimate == pytest.approx(0.5)
    assert iv.low == pytest.approx(math.sqrt(0.25 / 39), rel=1e-6)
    assert iv.high == pytest.approx(math.sqrt(0.25 * 39), rel=1e-6)
    assert stats.std_ratio_interval([1.0], [1.0, 2.0]) is None
    assert stats.std_ratio_interval([1.0, 2.0], [3.0, 3.0]) is None  # no spread to compare with


def test_decide_and_combine():
    iv = Interval(1.0, 0.5, 1.5, 3, "m")
    assert stats.decide(iv, 0.0, greater=True) == HOLDS
    assert stats.decide(iv, 2.0, greater=True) == FAILS
    assert stats.decide(iv, 1.0, greater=True) == INCONCLUSIVE
    assert stats.decide(iv, 2.0, greater=False) == HOLDS
    assert stats.decide(iv, 0.0, greater=False) == FAILS
    assert stats.combine([HOLDS, HOLDS]) == HOLDS
    assert stats.combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert stats.combine([HOLDS, FAILS, INCONCLUSIVE]) == FAILS
    assert stats.combine([]) == UNTESTABLE


def test_sign_flip_beyond_sixteen_uses_the_normal_approximation():
    p = stats.sign_flip_p([1.0] * 20)
    # z = 20 / sqrt(20) = 4.472: two-sided p = 7.74e-6
    assert p == pytest.approx(7.74e-6, rel=0.01)
