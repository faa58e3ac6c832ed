"""dstbench.stats (percentiles, bootstrap CI of ratios of medians) and dstbench.table (text tables)."""

from __future__ import annotations

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
