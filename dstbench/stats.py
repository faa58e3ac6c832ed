"""Summary statistics: percentiles and bootstrap intervals of ratios of medians (timings), and the tests of
accuracy differences (a t-interval over seeds, McNemar's test on paired per-sample outcomes).

All functions take plain sequences of floats (seconds, or any unit) or
booleans and return floats, so that suites, ``compare`` and ``report`` can
share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

#: bootstrap resamples; enough for stable 2.5%/97.5% percentiles
N_BOOT = 2000


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[int | float, float]:
    """The ``qs`` percentiles (0-100, linear interpolation) of ``samples``; {q: value}."""
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        raise ValueError("percentiles of an empty sample")
    return {q: float(v) for q, v in zip(qs, np.percentile(values, qs))}


def dispersion(samples: Sequence[float]) -> float:
    """How spread out the samples are: interquartile range / median (0 for identical samples).

    The spread of the middle half relative to the typical value; unlike a
    standard deviation, a single outlier round barely moves it.
    """
    q1, median, q3 = percentiles(samples, (25, 50, 75)).values()
    return float((q3 - q1) / median) if median else math.inf


@dataclass(frozen=True)
class RatioCI:
    """A ratio of medians with its bootstrap confidence interval [lo, hi]."""

    ratio: float
    lo: float
    hi: float


def ratio_of_medians(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    paired: bool,
    confidence: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> RatioCI:
    """median(numerator) / median(denominator) with a percentile-bootstrap confidence interval.

    A speedup of method M over baseline B is ``ratio_of_medians(B_times, M_times)``.

    Args:
        numerator, denominator: samples (for example per-call seconds).
        paired: resample the same indices from both (samples taken in the same
            rounds, where sample i of each was measured side by side); they
            must then have the same length. Otherwise each is resampled
            independently (two separate runs).
        confidence: coverage of the interval, in (0, 1).
        n_boot: number of bootstrap resamples.
        seed: seed of the resampling, so that the interval is reproducible.
    Returns:
        RatioCI(ratio, lo, hi). The interval is widened where needed to
        contain the ratio itself (the bootstrap distribution of a median of
        few samples can miss it by a hair); with a single sample in either
        input it collapses to the ratio.
    """
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    if num.size == 0 or den.size == 0:
        raise ValueError("ratio of medians of an empty sample")
    if paired and num.size != den.size:
        raise ValueError(f"paired samples need equal lengths, got {num.size} and {den.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ratio = float(np.median(num) / np.median(den))
    if num.size < 2 or den.size < 2:
        return RatioCI(ratio, ratio, ratio)
    rng = np.random.default_rng(seed)
    idx_num = rng.integers(0, num.size, size=(n_boot, num.size))
    idx_den = idx_num if paired else rng.integers(0, den.size, size=(n_boot, den.size))
    boot = np.median(num[idx_num], axis=1) / np.median(den[idx_den], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail])
    return RatioCI(ratio, float(min(lo, ratio)), float(max(hi, ratio)))


def speedup_columns(prefix: str, baseline: Sequence[float] | None, own: Sequence[float]) -> dict[str, float | None]:
    """``{prefix, prefix_lo, prefix_hi}``: the paired speedup of ``own`` over ``baseline`` (per-round seconds).

    All three are None when there is no baseline (for example CSR in a dtype it does not support).
    """
    if baseline is None:
        return {prefix: None, f"{prefix}_lo": None, f"{prefix}_hi": None}
    ci = ratio_of_medians(baseline, own, paired=True)
    return {prefix: ci.ratio, f"{prefix}_lo": ci.lo, f"{prefix}_hi": ci.hi}


@dataclass(frozen=True)
class MeanCI:
    """The mean of ``n`` values with its t-interval [lo, hi] (NaN bounds when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """The mean of ``values`` with the Student-t confidence interval mean ± t(n-1) · sd / sqrt(n).

    For a paired difference over seeds (method minus baseline at the same
    seed), in whatever unit the values have (e.g. percentage points).
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean of an empty sample")
    mean = float(x.mean())
    if x.size < 2:
        return MeanCI(mean, math.nan, math.nan, 1)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return MeanCI(mean, mean - half, mean + half, int(x.size))


#: below this many discordant pairs McNemar's test is the exact binomial one, from it on the chi-square one
MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True)
class McNemar:
    """McNemar's test of two classifiers on the same samples.

    Attributes:
        b: samples A gets right and B wrong.
        c: samples A gets wrong and B right.
        statistic: the chi-square statistic (|b - c| - 1)^2 / (b + c), or b for the exact test.
        p: the two-sided p-value.
        exact: whether the exact binomial test was used.
    """

    b: int
    c: int
    statistic: float
    p: float
    exact: bool


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool], exact: bool | None = None) -> McNemar:
    """McNemar's test on paired per-sample outcomes (True = classified correctly) of classifiers A and B.

    Only the discordant samples count (b: A right and B wrong, c: the other
    way round). Under H0 each is b or c with probability 1/2. ``exact=True``
    takes the two-sided binomial test of b out of b + c; ``exact=False`` the
    chi-square test with continuity correction, (|b - c| - 1)^2 / (b + c)
    with 1 degree of freedom; ``None`` the exact test when b + c <
    ``MCNEMAR_EXACT_BELOW``, else the chi-square one. No discordant sample
    gives p = 1.
    """
    a = np.asarray(a_correct, dtype=bool)
    other = np.asarray(b_correct, dtype=bool)
    if a.shape != other.shape:
        raise ValueError(f"paired outcomes need equal shapes, got {a.shape} and {other.shape}")
    b, c = int((a & ~other).sum()), int((~a & other).sum())
    if exact is None:
        exact = b + c < MCNEMAR_EXACT_BELOW
    if b + c == 0:
        return McNemar(b, c, 0.0, 1.0, exact)
    if exact:
        return McNemar(b, c, float(b), float(scipy_stats.binomtest(b, b + c, 0.5).pvalue), True)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemar(b, c, float(statistic), float(scipy_stats.chi2.sf(statistic, 1)), False)
