"""Is a method's accuracy different from a baseline's? Paired over seeds (t-interval) and per test sample (McNemar).

Each method at each sparsity is compared with each of the suite's
references (``suites.base.Reference``; the accuracy suite declares dense,
recorded at sparsity 0, and RigL at the same sparsity), on the seeds both
were trained with:

* the mean over seeds of the paired difference in top-1 (method minus
  baseline at the same seed, percentage points) with its 95% Student-t
  interval (``stats.mean_ci``);
* McNemar's test on the per-sample outcomes (right or wrong) of both,
  pooled over those seeds (``stats.mcnemar``): the accuracy suite stores
  every evaluated model's test predictions in its run folder
  (``OUT/predictions/``), named in the row's ``predictions`` and ``labels``.

A difference is significant when McNemar's p < ``ALPHA``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from dstbench import stats
from dstbench.errors import UserError

if TYPE_CHECKING:
    from dstbench.suites.base import Reference

ALPHA = 0.05
KEYS = ["dataset", "model", "method", "sparsity"]


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing (its accuracy row names it); rerun the case, or the accuracy suite into "
                        "a new folder") from None
    except ValueError as exc:
        raise UserError(f"{path} is corrupt ({exc}); rerun the case into a new folder") from None


def outcomes(row: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels (N,), correct (N,) bool) of an accuracy row, from the files its run folder (``row['run']``) holds;
    None for a row that names no predictions (recorded before they were stored)."""
    name = row.get("predictions")
    if not isinstance(name, str):
        return None
    folder = Path(row["run"])
    predictions, labels = _load(folder / name), _load(folder / row["labels"])
    if predictions.shape != labels.shape:
        raise UserError(f"{folder / name} holds {predictions.size} predictions for {labels.size} labels; "
                        "rerun the case into a new folder")
    return labels, predictions == labels


def top1_percent(frame: pd.DataFrame) -> pd.Series:
    """``top1`` in percent: recorded as a fraction (all values <= 1) or already in percent."""
    return frame["top1"] * 100.0 if frame["top1"].max() <= 1.0 else frame["top1"]


def _pooled_mcnemar(pairs: list[tuple[pd.Series, pd.Series]]) -> stats.McNemar | None:
    """McNemar's test of the first rows of ``pairs`` against the second, pooled over the pairs; None if any lacks
    predictions. UserError if a pair was evaluated on different test sets."""
    ours, theirs = [], []
    for row, base in pairs:
        mine, other = outcomes(row), outcomes(base)
        if mine is None or other is None:
            return None
        if not np.array_equal(mine[0], other[0]):
            raise UserError(f"{row['case_id']} ({row['run']}) and {base['case_id']} ({base['run']}) were evaluated on "
                            "different test sets; compare runs of the same dataset split")
        ours.append(mine[1])
        theirs.append(other[1])
    return stats.mcnemar(np.concatenate(ours), np.concatenate(theirs))


def _compare(rows: pd.DataFrame, base: pd.DataFrame, baseline: str) -> dict[str, Any] | None:
    """One method's seeds (``rows``) against the baseline's (``base``), both indexed by seed; None if no seed is shared."""
    seeds = sorted(set(rows.index) & set(base.index))
    if not seeds:
        return None
    ci = stats.mean_ci([rows.at[s, "top1_pct"] - base.at[s, "top1_pct"] for s in seeds])
    test = _pooled_mcnemar([(rows.loc[s], base.loc[s]) for s in seeds])
    return {"baseline": baseline, "seeds": len(seeds), "diff": ci.mean, "diff_lo": ci.lo, "diff_hi": ci.hi,
            "b": test.b if test else None, "c": test.c if test else None, "p": test.p if test else math.nan,
            "exact": test.exact if test else None}


def differences(frame: pd.DataFrame, references: Sequence[Reference]) -> pd.DataFrame:
    """Every method and sparsity against each reference, per dataset and model.

    Args:
        frame: accuracy rows (dataset, model, method, sparsity, seed, top1, case_id) with the ``run`` folder each
            came from and, where recorded, ``predictions`` and ``labels``. A (method, sparsity, seed) recorded
            twice counts once (the last).
        references: the methods to compare with, each at the other's sparsity or at its own recorded one.
    Returns:
        One row per (dataset, model, method, sparsity, baseline), ``baseline`` naming the reference's method:
        ``seeds`` paired, ``diff`` (mean over seeds of method minus baseline top-1, percentage points) with its 95% t-interval ``diff_lo``/``diff_hi`` (NaN for a
        single seed), McNemar's discordant counts ``b`` (method right, baseline wrong) and ``c``, its p-value ``p``
        (NaN without predictions) and whether it was ``exact``. A method is not compared with itself.
    """
    frame = frame.assign(top1_pct=top1_percent(frame)).drop_duplicates(KEYS + ["seed"], keep="last")
    out = []
    for (dataset, model), rows in frame.groupby(["dataset", "model"], sort=False):
        groups = {(m, round(s, 6)): g.set_index("seed") for (m, s), g in rows.groupby(["method", "sparsity"], sort=False)}
        for (method, sparsity), own in groups.items():
            for ref in references:
                if method == ref.method:
                    continue
                bases = [g for (m, level), g in groups.items()
                         if m == ref.method and (level == sparsity or not ref.same_sparsity)]
                result = _compare(own, bases[0], ref.method) if len(bases) == 1 else None
                if result is not None:
                    out.append({"dataset": dataset, "model": model, "method": method, "sparsity": sparsity, **result})
    return pd.DataFrame(out, columns=KEYS + ["baseline", "seeds", "diff", "diff_lo", "diff_hi", "b", "c", "p", "exact"])
