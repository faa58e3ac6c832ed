"""dstbench.stats (percentiles, bootstrap CI of ratios of medians, t-intervals, McNemar) and dstbench.table (text tables)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dstbench import stats
from dstbench.table import Column, fmt_ratio_ci, format_table


def test_percentiles_of_one_to_hundred() -> None:
    pct = stats.percentiles(list(range(1, 101)), (50, 90, 99))
    assert pct == pytest.approx({50: 50.5, 90: 90.1, 99: 99.01})
    with pytest.raises(ValueError):
        stats.percentiles([])


def test_ratio_is_ratio_of_medians_and_interval_contains_it() -> None:
    rng = np.random.default_rng(1)
    base = 2.0 + 0.1 * rng.standard_normal(15)
    fast = 1.0 + 0.05 * rng.standard_normal(15)
    ci = stats.ratio_of_medians(base, fast, paired=True)
    assert ci.ratio == pytest.approx(np.median(base) / np.median(fast))
    assert ci.lo <= ci.ratio <= ci.hi
    assert 1.7 < ci.lo and ci.hi < 2.3


def test_identical_paired_samples_give_exactly_one() -> None:
    samples = [3.0, 1.0, 2.0, 5.0]
    assert stats.ratio_of_medians(samples, samples, paired=True) == stats.RatioCI(1.0, 1.0, 1.0)


def test_pairing_cancels_drift_shared_by_both_samples() -> None:
    """Round i of both methods shares a drift factor; paired resampling sees a constant ratio 2, unpaired does not."""
    drift = np.linspace(1.0, 3.0, 12)
    base, fast = 2.0 * drift, 1.0 * drift
    paired = stats.ratio_of_medians(base, fast, paired=True)
    unpaired = stats.ratio_of_medians(base, fast, paired=False)
    assert paired.lo == pytest.approx(2.0) and paired.hi == pytest.approx(2.0)
    assert unpaired.hi - unpaired.lo > 0.5


def test_bootstrap_is_reproducible_and_checks_inputs() -> None:
    a, b = [1.0, 1.2, 0.9, 1.1], [0.5, 0.6, 0.55, 0.45]
    assert stats.ratio_of_medians(a, b, paired=True, seed=3) == stats.ratio_of_medians(a, b, paired=True, seed=3)
    with pytest.raises(ValueError, match="equal lengths"):
        stats.ratio_of_medians(a, b[:3], paired=True)
    with pytest.raises(ValueError):
        stats.ratio_of_medians([], b, paired=False)
    single = stats.ratio_of_medians([2.0], [1.0], paired=False)
    assert single == stats.RatioCI(2.0, 2.0, 2.0)


def test_format_table_aligns_columns() -> None:
    rows = [{"name": "dense", "t": 1.5, "x": None}, {"name": "dynadiag", "t": 12.25, "x": 3}]
    text = format_table(rows, [Column("name", "name"), Column("time", lambda r: f"{r['t']:.2f}", ">"), Column("x", "x", ">")])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "time", "x"]
    assert lines[2] == "dense      1.50  -"
    assert lines[3] == "dynadiag  12.25  3"
    assert len({len(line) for line in lines[1:]}) == 1


def test_ratio_format() -> None:
    assert fmt_ratio_ci(2.3456, 2.2, 2.5) == "2.35x [2.20,2.50]"
    assert fmt_ratio_ci(None, None, None) == "-"


def test_mcnemar_matches_hand_computed_values() -> None:
    # 10 samples only A gets right, 2 only B, 5 both: b = 10, c = 2
    a = [True] * 10 + [False] * 2 + [True] * 5
    b = [False] * 10 + [True] * 2 + [True] * 5
    exact = stats.mcnemar(a, b)
    assert (exact.b, exact.c, exact.exact) == (10, 2, True)  # 12 discordant pairs < 25: exact
    assert exact.p == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # 2 * P(X <= 2), X ~ Binomial(12, 1/2)
    chi = stats.mcnemar(a, b, exact=False)
    assert chi.statistic == pytest.approx(49 / 12)  # (|10 - 2| - 1)^2 / 12
    assert chi.p == pytest.approx(math.erfc(math.sqrt(49 / 12 / 2)))  # chi-square(1) tail = erfc(sqrt(x / 2))
    assert stats.mcnemar(b, a).p == exact.p  # symmetric
    assert stats.mcnemar(a, a).p == 1.0  # no discordant sample


def test_mcnemar_switches_to_chi_square_from_25_discordant_pairs() -> None:
    a = [True] * 20 + [False] * 5
    b = [False] * 20 + [True] * 5
    test = stats.mcnemar(a, b)
    assert not test.exact and test.statistic == pytest.approx((15 - 1) ** 2 / 25)
    with pytest.raises(ValueError):
        stats.mcnemar([True], [True, False])


def test_mean_ci_is_the_student_t_interval() -> None:
    ci = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * sd / sqrt(4), sd^2 = 5/3
    assert (ci.mean, ci.n) == (2.5, 4)
    assert (ci.lo, ci.hi) == pytest.approx((2.5 - half, 2.5 + half))
    one = stats.mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.lo) and math.isnan(one.hi)
