"""Kernel micro-benchmarks (pytest-benchmark): one linear layer's forward in each method's inference format.

Run them with ``pytest tests/benchmarks --benchmark-only`` (the default test
command skips them). Benchmarks are grouped by case, shape, sparsity, batch
and device, so pytest-benchmark's table compares the formats of one layer
side by side. Each benchmark's ``extra_info`` holds the case keys, the
kernel that ran (``impl``) and its speedup over dense with a 95% interval,
measured in the same test by timing dense and the method interleaved
(``dstbench.timing``), as the inference suite does.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from dstbench import stats, timing
from dstbench.registry import make_method

#: name -> (in_features, out_features): ViT-B/16's MLP and attention output projection
CASES = {"b16-fc1": (768, 3072), "b16-proj": (768, 768)}
SPARSITIES = (0.9, 0.99)
BATCHES = (1, 197)
METHODS = ("dense", "rigl", "srigl", "dynadiag")
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
#: interleaved rounds and seconds per timed block of the speedup measurement
SPEEDUP_ROUNDS = 7
SPEEDUP_MIN_TIME = 0.02


def _call(layer: nn.Module, x: torch.Tensor, device: str) -> Callable[[], object]:
    if device == "cuda":
        def run() -> object:
            y = layer(x)
            torch.cuda.synchronize()
            return y
        return run
    return lambda: layer(x)


def speedup_over_dense(dense: Callable[[], object], own: Callable[[], object], device: str) -> stats.RatioCI:
    """Median dense time / median own time over interleaved rounds, with its paired bootstrap 95% interval."""
    samples = timing.interleaved({"dense": dense, "own": own}, rounds=SPEEDUP_ROUNDS, min_time=SPEEDUP_MIN_TIME,
                                 threads=torch.get_num_threads(), device=torch.device(device))
    return stats.ratio_of_medians(samples["dense"].samples_s, samples["own"].samples_s, paired=True)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"s{s:g}")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_forward(benchmark, device: str, case: str, sparsity: float, batch: int, method: str) -> None:  # noqa: ANN001
    """y = layer(x) for x of shape (batch, in_features), the layer in ``method``'s inference format."""
    fin, fout = CASES[case]
    torch.manual_seed(0)
    linear = nn.Linear(fin, fout).to(device)
    layer = make_method(method, sparsity=sparsity).sparsify_linear(linear)
    dense = make_method("dense").sparsify_linear(linear)
    x = torch.randn(batch, fin, device=device)
    benchmark.group = f"{case} {fin}x{fout} s={sparsity:g} b={batch} {device}"
    with torch.inference_mode():
        own = _call(layer, x, device)
        ratio = (stats.RatioCI(1.0, 1.0, 1.0) if method == "dense"
                 else speedup_over_dense(_call(dense, x, device), own, device))
        benchmark.extra_info.update({
            "case": case, "in_features": fin, "out_features": fout, "sparsity": sparsity, "batch": batch,
            "dtype": "float32", "device": device, "threads": torch.get_num_threads(), "method": method,
            "impl": layer.impl, "speedup_vs_dense": ratio.ratio, "speedup_vs_dense_lo": ratio.lo,
            "speedup_vs_dense_hi": ratio.hi,
        })
        y = benchmark(own)
    assert y.shape == (batch, fout)
