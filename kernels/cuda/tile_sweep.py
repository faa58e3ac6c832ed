"""Time every batch tile of the staged / batched CUDA forwards on ViT-B/16's linear shapes (needs a GPU).

    python -m dstbench.kernels.cuda.tile_sweep --out tiles.md

``launches`` picks a staged kernel's batch tile by a rule (the largest tile
that fits in shared memory and still gives two blocks per SM), set without
a GPU. This sweep measures the rule's choice against every tile that fits:
for each shape (qkv, proj, fc1, fc2) at 90% sparsity, float32, and each
batch, cuBLAS's ``F.linear``, then the diagonal and the condensed product at
the rule's tile and at each tile. Every entry is microseconds per call: a
CUDA graph of ``REPS`` calls replayed ``ROUNDS`` times, timed with CUDA
events, median over the replays (the device's time, without launch
overhead). The GPU check runs it (``gpu_check``, step ``kernel-tiles``).
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
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight

SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}  # (in, out)
SPARSITY = 0.9
REPS, ROUNDS = 20, 15


def time_us(fn: Callable[[], object], device: torch.device) -> float:
    """Median microseconds per call of ``fn``, replayed from a CUDA graph of REPS calls (see the module docstring)."""
    replay = cuda_graphs.captured(lambda: [fn() for _ in range(REPS)], device, "tile sweep")
    times = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / REPS)
    return statistics.median(times)


def _fits(tile: int, n_in: int, device: torch.device) -> bool:
    return tile * n_in * 4 <= launches.staged_shared_limit(device)  # float32


def sweep(batches: Sequence[int], device: torch.device) -> list[str]:
    """The Markdown table of the sweep: per shape and batch, cuBLAS, then each product at the rule's kernel and at
    each tile that fits."""
    lines = ["| shape | batch | product | rule's kernel | µs, rule | µs per batch tile |",
             "|---|---:|---|---|---:|---|"]
    gen = torch.Generator().manual_seed(0)
    for name, (n_in, n_out) in SHAPES.items():
        weight = torch.randn(n_out, n_in, generator=gen).to(device)
        diag, cond = DiagonalWeight.top_k(weight, SPARSITY), CondensedWeight.top_k(weight, SPARSITY)
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
                per_tile = ", ".join(f"{t}: {time_us(lambda t=t: call(loader.run, t), device):.1f}"
                                     for t in tiles if _fits(t, n_in, device))
                lines.append(f"| {name} | {batch} | {product} | {recorded[0].kernel} | {rule:.1f} | {per_tile} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dstbench.kernels.cuda.tile_sweep --out FILE [--batch 197,256]``; exit 2 without a GPU."""
    parser = argparse.ArgumentParser(prog="python -m dstbench.kernels.cuda.tile_sweep",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    parser.add_argument("--batch", default="197,256", help="comma-separated batch sizes, each >= 16 (default 197,256)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    if not torch.cuda.is_available() or loader.cupy_missing_reason():
        print("dstbench tile_sweep: needs a CUDA device and CuPy; run it on a GPU machine", file=sys.stderr)
        return 2
    if not batches or min(batches) < launches.DIAG_TILED_MIN_BATCH:
        print(f"dstbench tile_sweep: --batch needs sizes >= {launches.DIAG_TILED_MIN_BATCH}, got {args.batch!r}",
              file=sys.stderr)
        return 2
    device = torch.device("cuda")
    with torch.inference_mode():
        lines = sweep(batches, device)
    text = (f"# Batch tiles of the staged CUDA forwards, {torch.cuda.get_device_name(device)}, float32, "
            f"{SPARSITY:.0%} sparsity\n\n" + "\n".join(lines) + "\n")
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
