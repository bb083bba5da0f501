"""Small-sample statistics for the claims (suite/claims.py): intervals for paired differences over
seeds, and for the ratio of two seed spreads.

Why Student's t and not a percentile bootstrap: a claim is usually read from 2-5 seeds, and a
percentile bootstrap of 2 paired differences is just [min, max], so two seeds that happen to agree
would make a verdict. The t interval (exact when the differences are normal) is wide at small n:
two seeds decide only an effect that is large against their disagreement (a 1000x gap in max|x|),
never a 0.01-nat loss difference. The exact sign-flip permutation p-value is reported beside it as a
distribution-free check (its smallest possible two-sided value is 2 / 2^n).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy

LEVEL = 0.95  # two-sided confidence level of every interval (ours)
T_METHOD = "paired differences over seeds; Student-t 95% interval of their mean (df = n - 1)"
F_METHOD = "seed std ratio; F-distribution 95% interval (normal seeds, df = n - 1 each)"
COUNT_METHOD = "counts of runs (exact; no interval)"

HOLDS, FAILS, INCONCLUSIVE, UNTESTABLE = "holds", "does not hold", "inconclusive", "not testable here"


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval; `n` values entered it."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    p: float | None = None  # exact sign-flip permutation p-value (two-sided), paired intervals only


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Student-t interval of the mean of `values` (paired differences); None below 2 values."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n < 2:
        return None
    m, sd = statistics.fmean(vals), statistics.stdev(vals)
    half = float(_scipy.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(m, m - half, m + half, n, T_METHOD, sign_flip_p(vals))


def sign_flip_p(values: Sequence[float]) -> float:
    """Two-sided exact permutation p-value of "mean 0" for paired differences: the share of the 2^n
    sign patterns whose |mean| is at least the observed one (n <= 16; beyond, the normal
    approximation of the same statistic)."""
    vals = [float(v) for v in values]
    n = len(vals)
    observed = abs(sum(vals))
    if n > 16:
        z = observed / math.sqrt(sum(v * v for v in vals)) if any(vals) else 0.0
        return float(2 * _scipy.norm.sf(z))
    tol = 1e-12 * max(1.0, observed)
    hits = sum(abs(sum(s * v for s, v in zip(signs, vals))) >= observed - tol
               for signs in itertools.product((1, -1), repeat=n))
    return hits / 2 ** n


def std_ratio_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Interval of std(a) / std(b) from the F distribution; None unless both have >= 2 values and
    b's spread is not zero."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a), statistics.variance(b)
    if vb == 0:
        return None
    r = va / vb
    df_a, df_b = len(a) - 1, len(b) - 1
    lo = r / float(_scipy.f.ppf(0.5 + level / 2, df_a, df_b))
    hi = r / float(_scipy.f.ppf(0.5 - level / 2, df_a, df_b))
    return Interval(math.sqrt(r), math.sqrt(lo), math.sqrt(hi), min(len(a), len(b)), F_METHOD)


def decide(iv: Interval, threshold: float, greater: bool) -> str:
    """holds when the interval lies wholly on the claim's side of `threshold` (above it when
    `greater`), does not hold when wholly on the other side, inconclusive when it straddles it."""
    above, below = iv.low > threshold, iv.high < threshold
    if above or below:
        return HOLDS if above == greater else FAILS
    return INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim made "at every size / matched cell": holds only if every group holds; does not hold
    if any group does not; otherwise inconclusive."""
    if not verdicts:
        return UNTESTABLE
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE
