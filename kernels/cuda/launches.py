"""What to launch for each operation: output allocation, kernel choice, grid, block, arguments.

Independent of CuPy: every operation takes a ``runner`` that executes a
``Launch``. ``kernels.cuda.loader.run`` launches on the GPU; the tests'
host emulator runs the same ``.cu`` code on CPU tensors. Grid and block
sizes come from ``sources.TILES``, the constants the kernels compile with.

Shapes: x (B, in), y (B, out); diagonal offsets (K,) int64, values (K, D);
condensed values/indices (n_active, k), active_rows (n_active,) int64.
Tensors must be contiguous; validation lives in ``kernels.cuda``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dstbench.errors import UserError
from dstbench.kernels.cuda.sources import TILES

DIAG_TILED_MIN_BATCH = 16  # from this batch size on, diag_fwd_tiled replaces diag_fwd_small
SHARED_BYTES = 48 * 1024  # dynamic shared memory any sm_80+ block gets without an opt-in
_MAX_GRID_YZ = 65535


@dataclass(frozen=True)
class Launch:
    """One kernel launch.

    Attributes:
        source: key of ``sources.SOURCES``; kernel: the ``extern "C"`` name.
        dtype: scalar dtype the source is compiled for; index_dtype: DST_INDEX (condensed only).
        grid, block: launch dimensions (x, y, z).
        args: tensors and numpy scalars in the kernel's parameter order.
        shared_bytes: dynamic shared memory per block.
    """

    source: str
    kernel: str
    dtype: torch.dtype
    index_dtype: torch.dtype | None
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple
    shared_bytes: int = 0

    def __post_init__(self) -> None:
        if max(self.grid[1:]) > _MAX_GRID_YZ:
            raise UserError(
                f"{self.kernel} would need a grid of {self.grid} blocks, beyond CUDA's limit of "
                f"{_MAX_GRID_YZ} in y and z; split the batch into smaller chunks"
            )


Runner = Callable[[Launch], None]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _i32(v: int) -> np.int32:
    if not -(2**31) <= v < 2**31:
        raise UserError(f"size {v} does not fit the kernels' 32-bit size arguments; use impl='reference'")
    return np.int32(v)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def diag_mm(
    x: Tensor, offsets: Tensor, values: Tensor, out_features: int, runner: Runner, transpose: bool = False
) -> Tensor:
    """y = x @ W.T for the diagonal weight W (out_features, in); (B, out_features).

    With ``transpose``, W has shape (in, out_features) and y = x @ W: the input
    gradient. The two differ only for a square W, whose transpose does not keep
    the diagonals' order.
    """
    batch, n_in = x.shape
    tall = out_features > n_in if transpose else out_features >= n_in
    n_diag = offsets.shape[0]
    if batch == 0 or n_diag == 0:
        return torch.zeros(batch, out_features, dtype=x.dtype, device=x.device)
    y = torch.empty(batch, out_features, dtype=x.dtype, device=x.device)  # every element is written
    args = (x, offsets, values, y, _i32(batch), _i32(out_features), _i32(n_in), _i32(n_diag), np.int32(tall))
    if batch < DIAG_TILED_MIN_BATCH:
        grid = (_cdiv(out_features, TILES["DIAG_ROWS"]), _cdiv(batch, TILES["DIAG_SMALL_BATCH"]), 1)
        block = (TILES["DIAG_ROWS"], TILES["DIAG_SPLIT_K"], 1)
        runner(Launch("diagonal", "diag_fwd_small", x.dtype, None, grid, block, args))
    else:
        tile_batch = TILES["DIAG_TILE_GROUPS"] * TILES["DIAG_TILE_RB"]
        grid = (_cdiv(out_features, TILES["DIAG_TILE_ROWS"]), _cdiv(batch, tile_batch), 1)
        block = (TILES["DIAG_TILE_ROWS"], TILES["DIAG_TILE_GROUPS"], 1)
        runner(Launch("diagonal", "diag_fwd_tiled", x.dtype, None, grid, block, args))
    return y


def diag_values_grad(dy: Tensor, x: Tensor, offsets: Tensor, runner: Runner) -> Tensor:
    """dV[k, j] = sum_b dy[b, row(k, j)] * x[b, col(k, j)]; (K, D)."""
    batch, n_out = dy.shape
    n_in = x.shape[1]
    n_diag = offsets.shape[0]
    d = min(n_out, n_in)
    if batch == 0 or n_diag == 0:
        return torch.zeros(n_diag, d, dtype=x.dtype, device=x.device)
    dv = torch.empty(n_diag, d, dtype=x.dtype, device=x.device)
    grid = (_cdiv(d, TILES["DIAG_GRAD_COLS"]), _cdiv(n_diag, TILES["DIAG_GRAD_DIAGS"]), 1)
    block = (TILES["DIAG_GRAD_COLS"], TILES["DIAG_GRAD_SPLIT_B"], 1)
    args = (dy, x, offsets, dv, _i32(batch), _i32(n_out), _i32(n_in), _i32(n_diag))
    runner(Launch("diagonal", "diag_values_grad", x.dtype, None, grid, block, args))
    return dv


def condensed_batch_tile(batch: int, n_in: int, itemsize: int) -> tuple[int, bool]:
    """Batch rows per block of condensed_fwd, and whether x is staged in shared memory.

    The tile is a power of two <= 32 covering the batch where possible; staging
    needs ``n_in * tile * itemsize <= SHARED_BYTES``.
    """
    tile = min(32, _pow2_at_least(batch))
    while tile > 1 and n_in * tile * itemsize > SHARED_BYTES:
        tile //= 2
    return tile, n_in * tile * itemsize <= SHARED_BYTES


def condensed_rows_per_block(n_active: int, fan_in: int, n_in: int) -> int:
    """Active rows per condensed_fwd block: enough gathers (rows * fan_in ~ 2 * n_in) to pay for staging x."""
    warps = TILES["COND_WARPS"]
    per_warp = max(1, min(8, _cdiv(2 * n_in, warps * max(fan_in, 1))))
    return min(warps * per_warp, warps * _cdiv(n_active, warps))


def condensed_mm(
    x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int, runner: Runner
) -> Tensor:
    """y[b, active_rows[i]] = sum_j values[i, j] * x[b, indices[i, j]]; (B, out_features)."""
    batch, n_in = x.shape
    n_active, fan_in = values.shape
    # active_rows are distinct (CondensedWeight keeps them strictly increasing), so with
    # n_active == out every element is written; otherwise ablated columns must read 0
    alloc = torch.empty if n_active == out_features and batch > 0 else torch.zeros
    y = alloc(batch, out_features, dtype=x.dtype, device=x.device)
    if batch == 0 or n_active == 0:
        return y
    tile, stage = condensed_batch_tile(batch, n_in, x.element_size())
    source = x if stage or batch == 1 else x.t().contiguous()
    rows = condensed_rows_per_block(n_active, fan_in, n_in)
    grid = (_cdiv(n_active, rows), _cdiv(batch, tile), 1)
    block = (32 * TILES["COND_WARPS"], 1, 1)
    args = (source, values, indices, active_rows, y, _i32(batch), _i32(n_in), _i32(out_features),
            _i32(n_active), _i32(fan_in), _i32(tile), _i32(rows), np.int32(stage))
    shared = n_in * tile * x.element_size() if stage else 0
    runner(Launch("condensed", "condensed_fwd", x.dtype, indices.dtype, grid, block, args, shared))
    return y


def condensed_values_grad(dy: Tensor, x: Tensor, indices: Tensor, active_rows: Tensor, runner: Runner) -> Tensor:
    """dValues[i, j] = sum_b dy[b, active_rows[i]] * x[b, indices[i, j]]; (n_active, k)."""
    batch, n_out = dy.shape
    n_in = x.shape[1]
    n_active, fan_in = indices.shape
    if batch == 0 or n_active * fan_in == 0:
        return torch.zeros(n_active, fan_in, dtype=x.dtype, device=x.device)
    dv = torch.empty(n_active, fan_in, dtype=x.dtype, device=x.device)
    grid = (n_active, _cdiv(fan_in, 32), 1)
    block = (32, TILES["COND_GRAD_SPLIT_B"], 1)
    args = (dy, x, indices, active_rows, dv, _i32(batch), _i32(n_in), _i32(n_out), _i32(fan_in))
    runner(Launch("condensed", "condensed_values_grad", x.dtype, indices.dtype, grid, block, args))
    return dv


def transposed_entries(indices: Tensor, in_features: int) -> tuple[Tensor, Tensor]:
    """Column-major view of the condensed pattern, for the input gradient.

    Returns:
        col_ptr: (in + 1,) int64; entries: (n_active * k,) int64 flat ids
        ``i * k + j``, sorted by column ``indices[i, j]`` (stable), so that
        column c's entries are ``entries[col_ptr[c]:col_ptr[c + 1]]``.
    """
    flat = indices.reshape(-1).long()
    entries = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=in_features)
    col_ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return col_ptr, entries


def condensed_input_grad(
    dy: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int, runner: Runner
) -> Tensor:
    """dx[b, c] = sum over entries (i, j) of column c of values[i, j] * dy[b, active_rows[i]]; (B, in)."""
    batch = dy.shape[0]
    fan_in = values.shape[1]
    if batch == 0 or values.numel() == 0:
        return torch.zeros(batch, in_features, dtype=dy.dtype, device=dy.device)
    dx = torch.empty(batch, in_features, dtype=dy.dtype, device=dy.device)  # columns without entries get 0
    col_ptr, entries = transposed_entries(indices, in_features)
    dyt = dy if batch == 1 else dy.t().contiguous()
    tile = min(32, _pow2_at_least(batch))
    grid = (_cdiv(in_features, TILES["COND_WARPS"]), _cdiv(batch, tile), 1)
    block = (32 * TILES["COND_WARPS"], 1, 1)
    args = (dyt, values, col_ptr, entries, active_rows, dx, _i32(batch), _i32(in_features), _i32(fan_in), _i32(tile))
    runner(Launch("condensed", "condensed_input_grad", dy.dtype, indices.dtype, grid, block, args))
    return dx
