"""Time the CUDA kernels' design choices on ViT-B/16's linear shapes, to settle them on a GPU (needs one).

    python -m dstbench.kernels.cuda.kernel_sweep --out kernels.md

Two choices were made without a GPU, and this sweep measures both, for each
shape (qkv, proj, fc1, fc2) at 90% sparsity, float32:

* the batch tile of the staged / batched forwards, which ``launches`` picks
  by a rule (the largest tile that fits in shared memory and still gives two
  blocks per SM): cuBLAS's ``F.linear``, then the diagonal and the condensed
  product at the rule's tile and at every tile that fits (batch 197, 256);
* the values gradient of training (batch 64, 256): the SDDMM kernels against
  cuBLAS's dense ``dy.T @ x`` followed by a gather of the kept entries.

Every entry is microseconds per call: a CUDA graph of ``REPS`` calls replayed
``ROUNDS`` times, timed with CUDA events, median over the replays (the
device's time, without launch overhead). The GPU check runs it
(``gpu_check``, step ``kernel-sweep``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from dstbench import cuda_graphs
from dstbench.kernels.cuda import launches, loader
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight, diagonal_coords

SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}  # (in, out)
SPARSITY = 0.9
TILE_BATCHES, GRAD_BATCHES = (197, 256), (64, 256)
REPS, ROUNDS = 20, 15


def time_us(fn: Callable[[], object], device: torch.device) -> float:
    """Median microseconds per call of ``fn``, replayed from a CUDA graph of REPS calls (see the module docstring)."""
    replay = cuda_graphs.captured(lambda: [fn() for _ in range(REPS)], device, "kernel sweep")
    times = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / REPS)
    return statistics.median(times)


def _weights(n_in: int, n_out: int, gen: torch.Generator,
             device: torch.device) -> tuple[torch.Tensor, DiagonalWeight, CondensedWeight]:
    weight = torch.randn(n_out, n_in, generator=gen).to(device)
    return weight, DiagonalWeight.top_k(weight, SPARSITY), CondensedWeight.top_k(weight, SPARSITY)


def tile_sweep(batches: Sequence[int], device: torch.device) -> list[str]:
    """The Markdown table of the batch tiles: per shape and batch, cuBLAS, then each product at the rule's kernel
    and at each tile that fits."""
    lines = ["| shape | batch | product | rule's kernel | µs, rule | µs per batch tile |",
             "|---|---:|---|---|---:|---|"]
    gen = torch.Generator().manual_seed(0)
    for name, (n_in, n_out) in SHAPES.items():
        weight, diag, cond = _weights(n_in, n_out, gen, device)
        for batch in batches:
            x = torch.randn(batch, n_in, generator=gen).to(device)
            lines.append(f"| {name} | {batch} | cuBLAS F.linear | – | {time_us(lambda: F.linear(x, weight), device):.1f} "
                         "| – |")
            products: dict[str, tuple[tuple[int, ...], Callable[[launches.Runner, int | None], torch.Tensor]]] = {
                "diagonal": (launches.DIAG_STAGED_TILES, lambda runner, tile: launches.diag_mm(
                    x, diag.offsets, diag.values, n_out, runner, tile=tile)),
                "condensed": (launches.CONDENSED_BATCHED_TILES, lambda runner, tile: launches.condensed_mm(
                    x, cond.values, cond.indices, cond.active_rows, n_out, runner, tile=tile)),
            }
            for product, (tiles, call) in products.items():
                recorded: list[launches.Launch] = []
                call(recorded.append, None)  # which kernel the rule picks (nothing runs)
                rule = time_us(lambda: call(loader.run, None), device)
                fitting = launches.fitting_tiles(tiles, n_in, x.element_size(), launches.staged_shared_limit(device))
                per_tile = ", ".join(f"{t}: {time_us(lambda t=t: call(loader.run, t), device):.1f}" for t in fitting)
                lines.append(f"| {name} | {batch} | {product} | {recorded[0].kernel} | {rule:.1f} | {per_tile} |")
    return lines


def grad_sweep(batches: Sequence[int], device: torch.device) -> list[str]:
    """The Markdown table of the values gradients: per shape and batch, each format's SDDMM kernel against cuBLAS's
    dense product and a gather (checked to agree first)."""
    lines = ["| shape | batch | values gradient | µs, kernel | µs, cuBLAS dy.T @ x + gather |",
             "|---|---:|---|---:|---:|"]
    gen = torch.Generator().manual_seed(1)
    for name, (n_in, n_out) in SHAPES.items():
        _, diag, cond = _weights(n_in, n_out, gen, device)
        rows, cols = diagonal_coords(diag.offsets, n_out, n_in)
        indices, active = cond.indices.long(), cond.active_rows.long()
        for batch in batches:
            x = torch.randn(batch, n_in, generator=gen).to(device)
            dy = torch.randn(batch, n_out, generator=gen).to(device)
            pairs = {
                "diagonal": (lambda: launches.diag_values_grad(dy, x, diag.offsets, loader.run),
                             lambda: (dy.t() @ x)[rows, cols]),
                "condensed": (lambda: launches.condensed_values_grad(dy, x, cond.indices, cond.active_rows, loader.run),
                              lambda: torch.gather(dy[:, active].t() @ x, 1, indices)),
            }
            for product, (kernel, dense) in pairs.items():
                torch.testing.assert_close(kernel(), dense(), rtol=1e-4, atol=1e-3 * batch ** 0.5,
                                           msg=f"{product} values gradient, {name}, batch {batch}")
                lines.append(f"| {name} | {batch} | {product} | {time_us(kernel, device):.1f} | "
                             f"{time_us(dense, device):.1f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dstbench.kernels.cuda.kernel_sweep --out FILE [--batch 197,256] [--grad-batch 64,256]``; exit 2
    without a GPU."""
    parser = argparse.ArgumentParser(prog="python -m dstbench.kernels.cuda.kernel_sweep",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    parser.add_argument("--batch", default=",".join(map(str, TILE_BATCHES)),
                        help=f"comma-separated batch sizes of the tile sweep, each >= {launches.DIAG_TILED_MIN_BATCH} "
                             "(default %(default)s)")
    parser.add_argument("--grad-batch", default=",".join(map(str, GRAD_BATCHES)),
                        help="comma-separated batch sizes of the values gradients (default %(default)s)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    grad_batches = [int(b) for b in args.grad_batch.split(",") if b.strip()]
    if not torch.cuda.is_available() or loader.cupy_missing_reason():
        print("dstbench kernel_sweep: needs a CUDA device and CuPy; run it on a GPU machine", file=sys.stderr)
        return 2
    if not batches or min(batches) < launches.DIAG_TILED_MIN_BATCH or not grad_batches or min(grad_batches) < 1:
        print(f"dstbench kernel_sweep: --batch needs sizes >= {launches.DIAG_TILED_MIN_BATCH} and --grad-batch sizes "
              f">= 1, got {args.batch!r} and {args.grad_batch!r}", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    with torch.inference_mode():
        tiles, grads = tile_sweep(batches, device), grad_sweep(grad_batches, device)
    gpu = torch.cuda.get_device_name(device)
    text = (f"# CUDA kernel choices, {gpu}, float32, {SPARSITY:.0%} sparsity\n\n## Batch tiles of the forwards\n\n"
            + "\n".join(tiles) + "\n\n## Values gradients\n\n" + "\n".join(grads) + "\n")
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
