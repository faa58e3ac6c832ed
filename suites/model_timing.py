"""Inference latency of a trained model against dense models of the same architecture, for the accuracy suite.

The converted model (``method.to_inference``) and the dense model with the
same layer shapes, in each dense library of ``suites.dense_baselines``
(torch's default; on the CPU, every linear through oneDNN, and through
OpenBLAS in float32), are timed interleaved in the same process with
``dstbench.timing`` (warm-up, calibrated blocks, rotated rounds, explicit
threads, each library's thread pool kept quiet: ``dstbench.threadpools``)
at each batch of ``inputs``. The columns of one batch carry its label as
suffix (``records.TIMED_BATCHES``: ``_b1``, ``_beval``): the batch
(samples), the rounds ``n``, the model's p50/p90/p99 seconds per call and
dispersion; the fastest dense model's name (``dense_impl``, by median) and
p50; the paired speedup over it with its 95% bootstrap interval
(``speedup_vs_dense``, ``speedup_vs_dense_lo``, ``speedup_vs_dense_hi``) and
over torch's default dense model (``speedup_vs_torch_dense`` and its
interval); the per-round seconds of the model and of the fastest dense one
(``samples_s``, ``dense_samples_s``). ``dense_impls`` lists the dense
models timed.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from dstbench import records, stats, threadpools, timing
from dstbench.suites import dense_baselines

#: the timed model's name among the interleaved functions (not a dense library's)
MODEL = "model"

def kernel_impls(model: nn.Module) -> str:
    """The kernel implementations of the layers of ``model`` that report one (``impl``), sorted and joined by '+'."""
    return "+".join(sorted({m.impl for m in model.modules() if isinstance(getattr(m, "impl", None), str)}))


def time_against_dense(model: nn.Module, denses: Mapping[str, nn.Module], inputs: Mapping[str, Tensor], *,
                       rounds: int, min_time: float, threads: int, device: torch.device) -> dict[str, Any]:
    """Time ``model`` and every dense model interleaved at every batch of ``inputs``; the row columns (module
    docstring).

    Args:
        model: the trained model in its inference format, in eval mode.
        denses: name (``dense_baselines.NAMES``) -> a dense model with the same layer shapes, in eval mode; the
            first is torch's default.
        inputs: batch label -> input batch (B, ...) on ``device``.
        rounds: samples per model and batch.
        min_time: seconds each timed block lasts at least.
        threads: intra-op threads during the timed calls.
        device: where the models run.
    """
    torch_dense = next(iter(denses))
    pools = threadpools.PoolLimits(threads, dense_baselines.BLAS)
    columns: dict[str, Any] = {"dense_impls": list(denses)}
    for label, x in inputs.items():
        fns = {MODEL: lambda: model(x), **{name: (lambda d=dense: d(x)) for name, dense in denses.items()}}
        with torch.inference_mode():
            samples = timing.interleaved(fns, rounds=rounds, min_time=min_time, threads=threads, device=device,
                                         block_context=pools.block, torch_threads=pools.torch_threads(fns))
        fastest = min(denses, key=lambda name: statistics.median(samples[name].samples_s))
        own, base = samples[MODEL].samples_s, samples[fastest].samples_s
        pct = stats.percentiles(own, (50, 90, 99))
        values = {"batch": len(x), "n": len(own), "p50_s": pct[50], "p90_s": pct[90], "p99_s": pct[99],
                  "dispersion": stats.dispersion(own), "dense_impl": fastest,
                  "dense_p50_s": stats.percentiles(base, (50,))[50],
                  **stats.speedup_columns("speedup_vs_dense", base, own),
                  **stats.speedup_columns("speedup_vs_torch_dense", samples[torch_dense].samples_s, own),
                  "samples_s": own, "dense_samples_s": base}
        columns.update({records.timed_column(name, label): value for name, value in values.items()})
    return columns
