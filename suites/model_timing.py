"""Inference latency of a trained model against the dense model of the same architecture, for the accuracy suite.

The converted model (``method.to_inference``) and a dense model with the
same layer shapes are timed interleaved in the same process with
``dstbench.timing`` (warm-up, calibrated blocks, rotated rounds, explicit
threads) at each batch of ``inputs``. The columns of one batch carry its
label as suffix (``records.TIMED_BATCHES``: ``_b1``, ``_beval``): the batch (samples), the rounds ``n``,
the model's p50/p90/p99 seconds per call and dispersion, dense's p50, the
paired speedup over dense with its 95% bootstrap interval
(``speedup_vs_dense``, ``speedup_vs_dense_lo``, ``speedup_vs_dense_hi``) and
both models' per-round seconds (``samples_s``, ``dense_samples_s``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from dstbench import records, stats, timing

def kernel_impls(model: nn.Module) -> str:
    """The kernel implementations of the layers of ``model`` that report one (``impl``), sorted and joined by '+'."""
    return "+".join(sorted({m.impl for m in model.modules() if isinstance(getattr(m, "impl", None), str)}))


def time_against_dense(model: nn.Module, dense: nn.Module, inputs: Mapping[str, Tensor], *, rounds: int,
                       min_time: float, threads: int, device: torch.device) -> dict[str, Any]:
    """Time ``model`` and ``dense`` interleaved at every batch of ``inputs``; the row columns (module docstring).

    Args:
        model: the trained model in its inference format, in eval mode.
        dense: a dense model with the same layer shapes, in eval mode.
        inputs: batch label -> input batch (B, ...) on ``device``.
        rounds: samples per model and batch.
        min_time: seconds each timed block lasts at least.
        threads: intra-op threads during the timed calls.
        device: where the models run.
    """
    columns: dict[str, Any] = {}
    for label, x in inputs.items():
        with torch.inference_mode():
            samples = timing.interleaved({"model": lambda: model(x), "dense": lambda: dense(x)}, rounds=rounds,
                                         min_time=min_time, threads=threads, device=device)
        own, base = samples["model"].samples_s, samples["dense"].samples_s
        pct = stats.percentiles(own, (50, 90, 99))
        values = {"batch": len(x), "n": len(own), "p50_s": pct[50], "p90_s": pct[90], "p99_s": pct[99],
                  "dispersion": stats.dispersion(own), "dense_p50_s": stats.percentiles(base, (50,))[50],
                  **stats.speedup_columns("speedup_vs_dense", base, own), "samples_s": own, "dense_samples_s": base}
        columns.update({records.timed_column(name, label): value for name, value in values.items()})
    return columns
