"""What to launch for each operation: output allocation, kernel choice, grid, block, arguments.

Independent of CuPy: every operation takes a ``runner`` that executes a
``Launch``. ``kernels.cuda.loader.run`` launches on the GPU; the tests'
host emulator runs the same ``.cu`` code on CPU tensors. Grid and block
sizes come from ``sources.TILES``, the constants the kernels compile with.

Shapes: x (B, in), y (B, out); diagonal offsets (K,) int64, values (K, D);
condensed values/indices (n_active, k), active_rows (n_active,) int64 and
distinct; bias (out,) or None. Tensors must be contiguous and the pattern
valid; validation lives in ``kernels.cuda``. Grid y never exceeds
``MAX_GRID_Y``: the kernels loop over what does not fit.

Nothing here syncs the host with the device, so a warmed-up call can be
captured in a CUDA graph: the one pattern-derived structure (the transposed
pattern of the condensed input gradient) is built without a sync and cached
per pattern (``pattern_cache``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from dstbench.errors import UserError
from dstbench.kernels.cuda.pattern_cache import PatternCache
from dstbench.kernels.cuda.sources import TILES

DIAG_TILED_MIN_BATCH = 16  # from this batch size on, a batched kernel replaces diag_fwd_small
SHARED_BYTES = 48 * 1024  # dynamic shared memory any sm_80+ block gets without an opt-in
STAGED_SHARED_BYTES = 96 * 1024  # the most a staged x tile takes (two blocks per SM on an H100/H200), with an opt-in
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y
DIAG_STAGED_TILES = (4, 8, 16, 32)  # batch tiles of the diag_fwd_staged{tile} kernels
CONDENSED_BATCHED_TILES = (8, 16, 32)  # batch tiles of the condensed_fwd_batched{tile} kernels
DEFAULT_SMS = 132  # streaming multiprocessors assumed off a GPU (an H100/H200)


@dataclass(frozen=True)
class Launch:
    """One kernel launch.

    Attributes:
        source: key of ``sources.SOURCES``; kernel: the ``extern "C"`` name.
        dtype: scalar dtype the source is compiled for; index_dtype: DST_INDEX (condensed only).
        grid, block: launch dimensions (x, y, z).
        args: tensors (or None for a null pointer) and numpy scalars in the kernel's
            parameter order; ``args[0]`` is always a tensor, on the launch's device.
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


Runner = Callable[[Launch], None]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _i32(v: int) -> np.int32:
    if not -(2**31) <= v < 2**31:
        raise UserError(f"size {v} does not fit the kernels' 32-bit size arguments; use impl='reference'")
    return np.int32(v)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _grid_y(tiles: int) -> int:
    """Blocks along grid y for ``tiles`` tiles; a kernel loops over the tiles beyond MAX_GRID_Y."""
    return min(tiles, MAX_GRID_Y)


@lru_cache(maxsize=16)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; DEFAULT_SMS for any other device (the host emulator)."""
    if device.type != "cuda":
        return DEFAULT_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


@lru_cache(maxsize=16)
def staged_shared_limit(device: torch.device) -> int:
    """Bytes of dynamic shared memory a staged x tile may take: STAGED_SHARED_BYTES, or less if the device's
    opt-in maximum per block is smaller (SHARED_BYTES where torch does not report it); STAGED_SHARED_BYTES off
    a GPU (the host emulator)."""
    if device.type != "cuda":
        return STAGED_SHARED_BYTES
    optin = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", SHARED_BYTES)
    return min(STAGED_SHARED_BYTES, max(optin, SHARED_BYTES))


def fitting_tiles(tiles: tuple[int, ...], n_in: int, itemsize: int, limit: int) -> list[int]:
    """The batch tiles of a staged kernel whose x tile (``tile * n_in`` scalars of ``itemsize`` bytes) fits in
    ``limit`` bytes of shared memory, ascending as ``tiles``."""
    return [t for t in tiles if t * n_in * itemsize <= limit]


def staged_batch_tile(tiles: tuple[int, ...], row_blocks: Callable[[int], int], batch: int, n_in: int,
                      itemsize: int, sms: int, limit: int) -> int | None:
    """Batch rows per block of a staged kernel (an x tile of ``tile * n_in`` scalars in shared memory).

    The largest of ``tiles`` (ascending) whose tile fits ``limit`` bytes and still gives ``row_blocks(tile) *
    ceil(B / tile) >= 2 * sms`` blocks; where none gives that many, the smallest that fits (most blocks). None when even
    that does not fit: the caller falls back to a kernel that does not stage all of x.
    """
    fitting = fitting_tiles(tiles, n_in, itemsize, limit)
    if not fitting:
        return None
    busy = [t for t in fitting if row_blocks(t) * _cdiv(batch, t) >= 2 * sms]
    return busy[-1] if busy else fitting[0]


def diag_small_cols(out_features: int, batch: int, sms: int) -> int:
    """Output columns per diag_fwd_small block: 32, 16 or 8, the widest that still gives two blocks per SM.

    Fewer columns per block means more blocks (the block's threads then split
    the diagonals more ways), so a 768-wide layer at batch 1 runs 96 blocks
    instead of 24; 8 keeps every load a whole 32-byte sector in float32.
    """
    batch_tiles = _cdiv(batch, TILES["DIAG_SMALL_BATCH"])
    for cols in (32, 16):
        if _cdiv(out_features, cols) * batch_tiles >= 2 * sms:
            return cols
    return 8


def _staged_tile(tiles: tuple[int, ...], requested: int | None, row_blocks: Callable[[int], int], x: Tensor,
                 n_in: int) -> int | None:
    """The batch tile of a staged kernel: ``requested`` when given (checked), else ``staged_batch_tile``'s."""
    batch, itemsize, limit = x.shape[0], x.element_size(), staged_shared_limit(x.device)
    if requested is None:
        return staged_batch_tile(tiles, row_blocks, batch, n_in, itemsize, sm_count(x.device), limit)
    if requested not in fitting_tiles(tiles, n_in, itemsize, limit) or batch < DIAG_TILED_MIN_BATCH:
        raise UserError(f"batch tile {requested} is not available here: it must be one of {tiles}, with "
                        f"{requested} x {n_in} inputs within {limit} bytes of shared memory and a batch >= "
                        f"{DIAG_TILED_MIN_BATCH}")
    return requested


def diag_mm(x: Tensor, offsets: Tensor, values: Tensor, out_features: int, runner: Runner,
            transpose: bool = False, bias: Tensor | None = None, tile: int | None = None) -> Tensor:
    """y = x @ W.T (+ bias) for the diagonal weight W (out_features, in); (B, out_features).

    With ``transpose``, W has shape (in, out_features) and y = x @ W: the input
    gradient. The two differ only for a square W, whose transpose does not keep
    the diagonals' order. ``tile`` forces the staged kernel's batch tile (one of
    ``DIAG_STAGED_TILES``; for measuring them, ``kernel_sweep``); by default
    ``staged_batch_tile`` picks it.
    """
    batch, n_in = x.shape
    tall = out_features > n_in if transpose else out_features >= n_in
    n_diag = offsets.shape[0]
    if batch == 0 or n_diag == 0:
        y = torch.zeros(batch, out_features, dtype=x.dtype, device=x.device)
        return y if bias is None else y.add_(bias)
    y = torch.empty(batch, out_features, dtype=x.dtype, device=x.device)  # every element is written
    sizes = (_i32(batch), _i32(out_features), _i32(n_in), _i32(n_diag), np.int32(tall))
    if batch < DIAG_TILED_MIN_BATCH and tile is None:
        cols = diag_small_cols(out_features, batch, sm_count(x.device))
        grid = (_cdiv(out_features, cols), _cdiv(batch, TILES["DIAG_SMALL_BATCH"]), 1)
        args = (x, offsets, values, bias, y, *sizes, np.int32(cols))
        runner(Launch("diagonal", "diag_fwd_small", x.dtype, None, grid, (TILES["DIAG_SMALL_THREADS"], 1, 1), args))
        return y
    threads = TILES["DIAG_STAGED_THREADS"]
    tile = _staged_tile(DIAG_STAGED_TILES, tile, lambda t: _cdiv(out_features, threads), x, n_in)
    if tile is not None:
        grid = (_cdiv(out_features, threads), _grid_y(_cdiv(batch, tile)), 1)
        runner(Launch("diagonal", f"diag_fwd_staged{tile}", x.dtype, None, grid, (threads, 1, 1),
                      (x, offsets, values, bias, y, *sizes), tile * n_in * x.element_size()))
    else:
        tile_batch = TILES["DIAG_TILE_GROUPS"] * TILES["DIAG_TILE_RB"]
        grid = (_cdiv(out_features, TILES["DIAG_TILE_ROWS"]), _grid_y(_cdiv(batch, tile_batch)), 1)
        block = (TILES["DIAG_TILE_ROWS"], TILES["DIAG_TILE_GROUPS"], 1)
        runner(Launch("diagonal", "diag_fwd_tiled", x.dtype, None, grid, block, (x, offsets, values, bias, y, *sizes)))
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
    grid = (_cdiv(d, TILES["DIAG_GRAD_COLS"]), _grid_y(_cdiv(n_diag, TILES["DIAG_GRAD_DIAGS"])), 1)
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


def condensed_rows_per_pass(tile: int) -> int:
    """Active rows a condensed_fwd_batched{tile} block works on at once: 256 / tile per warp (8 batch rows a lane)."""
    return TILES["COND_WARPS"] * 256 // tile


def _transposed(t: Tensor) -> Tensor:
    """(B, n) -> its transpose (n, B), contiguous; a (1, n) tensor already is one."""
    return t if t.shape[0] == 1 else t.t().contiguous()


def condensed_output(x: Tensor, batch: int, n_active: int, out_features: int, bias: Tensor | None) -> Tensor:
    """The output condensed_mm's kernel writes into: uninitialised when every column is an active row, else the
    columns of ablated rows hold the bias (0 without one); (batch, out_features), x's dtype and device."""
    if n_active == out_features and batch > 0:
        return torch.empty(batch, out_features, dtype=x.dtype, device=x.device)  # every element is written
    if bias is None:
        return torch.zeros(batch, out_features, dtype=x.dtype, device=x.device)
    return bias.expand(batch, out_features).contiguous()


def condensed_mm(x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int,
                 runner: Runner, bias: Tensor | None = None, tile: int | None = None) -> Tensor:
    """y[b, active_rows[i]] = sum_j values[i, j] * x[b, indices[i, j]] (+ bias); (B, out_features).

    Columns of ablated rows hold the bias (0 without one). ``tile`` forces the
    batched kernel's batch tile (one of ``CONDENSED_BATCHED_TILES``), as for
    ``diag_mm``.
    """
    batch, n_in = x.shape
    n_active, fan_in = values.shape
    y = condensed_output(x, batch, n_active, out_features, bias)
    if batch == 0 or n_active == 0:
        return y
    if batch >= DIAG_TILED_MIN_BATCH or tile is not None:
        tile = _staged_tile(CONDENSED_BATCHED_TILES, tile, lambda t: _cdiv(n_active, condensed_rows_per_pass(t)),
                            x, n_in)
        if tile is not None:
            rows = condensed_rows_per_pass(tile)
            grid = (_cdiv(n_active, rows), _grid_y(_cdiv(batch, tile)), 1)
            args = (x, values, indices, active_rows, bias, y, _i32(batch), _i32(n_in), _i32(out_features),
                    _i32(n_active), _i32(fan_in), _i32(rows))
            runner(Launch("condensed", f"condensed_fwd_batched{tile}", x.dtype, indices.dtype, grid,
                          (32 * TILES["COND_WARPS"], 1, 1), args, tile * n_in * x.element_size()))
            return y
    tile, stage = condensed_batch_tile(batch, n_in, x.element_size())
    source = x if stage else _transposed(x)
    rows = condensed_rows_per_block(n_active, fan_in, n_in)
    grid = (_cdiv(n_active, rows), _grid_y(_cdiv(batch, tile)), 1)
    block = (32 * TILES["COND_WARPS"], 1, 1)
    args = (source, values, indices, active_rows, bias, y, _i32(batch), _i32(n_in), _i32(out_features),
            _i32(n_active), _i32(fan_in), _i32(tile), _i32(rows), np.int32(stage))
    shared = n_in * tile * x.element_size() if stage else 0
    runner(Launch("condensed", "condensed_fwd", x.dtype, indices.dtype, grid, block, args, shared))
    return y


def condensed_values_grad(dy: Tensor, x: Tensor, indices: Tensor, active_rows: Tensor, runner: Runner) -> Tensor:
    """dValues[i, j] = sum_b dy[b, active_rows[i]] * x[b, indices[i, j]]; (n_active, k)."""
    batch = dy.shape[0]
    n_active, fan_in = indices.shape
    if batch == 0 or n_active * fan_in == 0:
        return torch.zeros(n_active, fan_in, dtype=x.dtype, device=x.device)
    dv = torch.empty(n_active, fan_in, dtype=x.dtype, device=x.device)
    grid = (_cdiv(n_active, TILES["COND_WARPS"]), 1, 1)
    block = (32 * TILES["COND_WARPS"], 1, 1)
    tile = min(32, _pow2_at_least(batch))
    args = (_transposed(dy), _transposed(x), indices, active_rows, dv, _i32(batch), _i32(n_active), _i32(fan_in),
            _i32(tile))
    runner(Launch("condensed", "condensed_values_grad", x.dtype, indices.dtype, grid, block, args))
    return dv


#: (indices, active_rows) -> transposed_pattern(...), rebuilt when either changes
TRANSPOSED = PatternCache()


def transposed_pattern(indices: Tensor, active_rows: Tensor, in_features: int) -> tuple[Tensor, Tensor, Tensor]:
    """Column-major view of the condensed pattern, for the input gradient; no host sync.

    Returns:
        col_ptr: (in + 1,) int32; entry_values: (n_active * k,) int32 flat ids
        ``i * k + j`` sorted by column ``indices[i, j]`` (stable), so that column
        c's entries are ``entry_values[col_ptr[c]:col_ptr[c + 1]]``;
        entry_rows: (n_active * k,) int32, the output row ``active_rows[i]`` of each.
    """
    _i32(indices.numel())
    fan_in = indices.shape[1]
    columns, entries = torch.sort(indices.reshape(-1).to(torch.int32), stable=True)
    bounds = torch.arange(in_features + 1, dtype=torch.int32, device=indices.device)
    col_ptr = torch.searchsorted(columns, bounds, out_int32=True)
    rows = active_rows[torch.div(entries, fan_in, rounding_mode="floor")]
    return col_ptr, entries.to(torch.int32), rows.to(torch.int32)


def condensed_input_grad(dy: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int,
                         runner: Runner) -> Tensor:
    """dx[b, c] = sum over entries (i, j) of column c of values[i, j] * dy[b, active_rows[i]]; (B, in)."""
    batch = dy.shape[0]
    if batch == 0 or values.numel() == 0:
        return torch.zeros(batch, in_features, dtype=dy.dtype, device=dy.device)
    _i32(dy.shape[1])
    dx = torch.empty(batch, in_features, dtype=dy.dtype, device=dy.device)  # columns without entries get 0
    col_ptr, entry_values, entry_rows = TRANSPOSED.get(
        (indices, active_rows), in_features, lambda: transposed_pattern(indices, active_rows, in_features))
    tile = min(32, _pow2_at_least(batch))
    grid = (_cdiv(in_features, TILES["COND_WARPS"]), _grid_y(_cdiv(batch, tile)), 1)
    block = (32 * TILES["COND_WARPS"], 1, 1)
    args = (_transposed(dy), values, col_ptr, entry_values, entry_rows, dx, _i32(batch), _i32(in_features), _i32(tile))
    runner(Launch("condensed", "condensed_input_grad", dy.dtype, indices.dtype, grid, block, args))
    return dx
