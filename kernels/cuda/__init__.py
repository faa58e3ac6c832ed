"""CUDA kernels (CuPy ``RawModule``) for the diagonal and condensed formats.

The backend contract of ``kernels.ops``: the five functions of
``kernels.reference`` with the same signatures, plus ``unavailable_reason``.
The ``torch.ops.dstbench`` operators of ``kernels.ops`` call them for CUDA
tensors (and register the autograd). ``diag_mm`` takes one more, optional argument, ``transpose``: the diagonal input gradient must
be ``diag_mm(dy, offsets, values, in_features, transpose=True)``, because for
a square W the transposed geometry does not hold W.T's diagonals in order.

Supported: CUDA tensors of float32, float16, bfloat16 (accumulated in
float32) and float64 (accumulated in float64, for ``gradcheck``); condensed
indices int16/int32/int64. Everything else raises ``UserError``.

Validation: shapes, dtypes and devices are checked on every call (Python
attribute reads only); the pattern (offsets in [0, P); condensed indices in
[0, in); active rows in [0, out) and distinct) is checked once per pattern,
since it needs a host sync, and cached per pattern tensor and version
(``pattern_cache``). A bad pattern raises a one-line ``UserError`` before any
kernel runs. Forward calls take an optional ``bias`` (out,), added inside the
kernel. ``bind_diag_mm`` / ``bind_condensed_mm`` check a layer's buffers once
and return a product that replays each batch size's planned launch
(``bound``): the inference layers' eager path.

Kernels and launch geometry (sources in ``kernels/diagonal/diagonal.cu`` and
``kernels/condensed/condensed.cu``; tile sizes in ``sources.TILES``):

==========================  ===================================================
diag_fwd_small (B < 16)     256 threads per block over 8, 16 or 32 output
                            columns (the widest that still gives two blocks
                            per SM), the rest of the threads splitting the K
                            diagonals; 4 batch rows per thread; partial sums
                            meet in shared memory. Loads along each diagonal
                            are coalesced: values[k, j] and x[b, col] are
                            contiguous.
diag_fwd_staged{4,8,16,32}  B >= 16: the block stages BT whole batch rows of
                            x (BT * in scalars, up to 96 KiB; the largest BT
                            that still gives 2 blocks per SM) in shared
                            memory; a thread owns one of 128 output columns
                            and all BT rows, walking every diagonal: one
                            coalesced value load and BT conflict-free shared
                            loads for BT FMAs. Any offset order.
diag_fwd_tiled (B >= 16)    when no staged tile fits (in > 6K in float32):
                            block = 64 output columns x 16 batch rows (4 per
                            thread); offsets walked window by window (64
                            offsets each, empty windows skipped), each window
                            staging the x columns its diagonals read (16 x
                            127) in shared memory, so nearby diagonals share
                            loads. Correct for unsorted offsets (they read
                            global x).
diag_values_grad            SDDMM on the diagonals: thread = entry j of 4
                            diagonals, 8 batch slices per block reduced in
                            shared memory; the width-D operand is loaded once
                            for the 4 diagonals.
condensed_fwd_batched{8,16,32}
                            B >= 16: x tile (BT rows) staged transposed in
                            shared memory, xs[c * BT + (b ^ (c & 3))]; a warp
                            takes 256 / BT active rows, BT / 8 lanes per row,
                            8 batch rows per lane, visited in a rotated order
                            so that at BT = 32 the rows' gathers hit distinct
                            banks whatever their columns.
condensed_fwd               B < 16 (or no batched tile fits): warp per active row; lanes = (batch row, slice of
                            the k entries), slices summed with shuffles. x for
                            up to 32 batch rows staged in shared memory as
                            xs[col][b] when it fits in 48 KiB, else read from a
                            transposed copy xT (in, B) through L1.
condensed_values_grad       warp per active row; lanes = (entry, batch row):
                            an entry's batch lanes read a contiguous run of
                            xT (in, B) and dyT (out, B), summed with shuffles.
condensed_input_grad        transposed pattern (column pointers, entries and
                            their rows; sort + searchsorted, no host sync,
                            built once per pattern): warp per input column
                            sums its entries, with dy transposed (out, B).
                            Deterministic, no atomics.
==========================  ===================================================

Grid y is capped at 65535 and the kernels loop over the tiles beyond it, so
any batch size runs. No tensor-core path: the diagonal and condensed products
run on SIMT FMAs.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from dstbench.errors import UserError
from dstbench.kernels.arguments import check_bias
from dstbench.kernels.cuda import launches, loader
from dstbench.kernels.cuda.bound import Binding, BoundProduct
from dstbench.kernels.cuda.pattern_cache import PatternCache
from dstbench.kernels.cuda.sources import INDEX_TYPES, SCALAR_TYPES

__all__ = [
    "bind_condensed_mm",
    "bind_diag_mm",
    "condensed_input_grad",
    "condensed_mm",
    "condensed_values_grad",
    "diag_mm",
    "diag_values_grad",
    "unavailable_reason",
]


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why these kernels cannot run on ``device`` for ``dtype``, or None if they can (cached per pair)."""
    return _unavailable_reason(torch.device(device), dtype)


@lru_cache(maxsize=64)
def _unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return f"not a CUDA tensor (device {device})"
    if dtype not in SCALAR_TYPES:
        return f"dtype {dtype} unsupported (float32, float16, bfloat16, float64)"
    if not torch.cuda.is_available():
        return "torch reports no usable CUDA device"
    return loader.cupy_missing_reason()


def _check_floats(*tensors: Tensor) -> None:
    first = tensors[0]
    reason = _unavailable_reason(first.device, first.dtype)
    if reason:
        raise UserError(f"the CUDA kernels cannot run: {reason}")
    for t in tensors:
        if t.dim() != 2:
            raise UserError(f"the CUDA kernels take 2-D tensors, got shape {tuple(t.shape)}")
        if t.dtype != first.dtype or t.device != first.device:
            raise UserError(f"mixed inputs: {t.dtype} on {t.device} next to {first.dtype} on {first.device}")


def _ids(t: Tensor, device: torch.device, what: str) -> Tensor:
    if t.device != device:
        raise UserError(f"{what} is on {t.device}, the data on {device}")
    return t.to(torch.int64).contiguous()


#: pattern tensors -> None once their ranges (and distinct active rows) were checked
_CHECKED: PatternCache[None] = PatternCache()


def _check_range(t: Tensor, upper: int, what: str) -> None:
    """UserError unless every element of ``t`` lies in [0, upper) (syncs the host once)."""
    t = t.long()
    if t.numel() and not bool(((t >= 0) & (t < upper)).all()):
        bad = t[(t < 0) | (t >= upper)][0].item()
        raise UserError(f"{what} must lie in [0, {upper}), found {bad}; rebuild the weight from its format class")


def _check_offsets(offsets: Tensor, p: int) -> None:
    _CHECKED.get((offsets,), p, lambda: _check_range(offsets, p, "diagonal offsets"))


def _check_condensed_pattern(indices: Tensor, active_rows: Tensor, in_features: int, out_features: int) -> None:
    def check() -> None:
        _check_range(indices, in_features, "condensed indices")
        _check_range(active_rows, out_features, "condensed active_rows")
        ordered = torch.sort(active_rows).values
        if bool((ordered[1:] == ordered[:-1]).any()):
            dup = ordered[1:][ordered[1:] == ordered[:-1]][0].item()
            raise UserError(f"condensed active_rows must be distinct, row {dup} appears twice; "
                            "rebuild the weight with CondensedWeight.from_mask")

    _CHECKED.get((indices, active_rows), (in_features, out_features), check)


def _check_diag(offsets: Tensor, values: Tensor, out_features: int, in_features: int) -> Tensor:
    d = min(out_features, in_features)
    if out_features < 1 or values.shape != (offsets.shape[0], d):
        raise UserError(
            f"diagonal values must have shape (K, D) = ({offsets.shape[0]}, {d}) for a "
            f"({out_features}, {in_features}) weight, got {tuple(values.shape)}"
        )
    ids = _ids(offsets, values.device, "offsets")
    _check_offsets(offsets, max(out_features, in_features))
    return ids


def diag_mm(x: Tensor, offsets: Tensor, values: Tensor, out_features: int, transpose: bool = False,
            bias: Tensor | None = None) -> Tensor:
    """y = x @ W.T (+ bias) for the diagonal weight (offsets (K,), values (K, D)); x (B, in) -> (B, out).

    With ``transpose=True``, W has shape (in, out) and y = x @ W (the input
    gradient: ``diag_mm(dy, offsets, values, in_features, transpose=True)``).
    Without it, a square W's input gradient would come out wrong: a square
    W.T's diagonal s is not W's diagonal s.
    """
    _check_floats(x, values)
    w_out, w_in = (x.shape[1], out_features) if transpose else (out_features, x.shape[1])
    offsets = _check_diag(offsets, values, w_out, w_in)
    bias = check_bias(bias, x, out_features)
    return launches.diag_mm(x.contiguous(), offsets, values.contiguous(), out_features, loader.run, transpose, bias)


def bind_diag_mm(offsets: Tensor, values: Tensor, in_features: int, out_features: int,
                 bias: Tensor | None = None) -> BoundProduct:
    """``diag_mm(x, offsets, values, out_features, bias=bias)`` bound to these weights (``bound.BoundProduct``)."""

    def bind() -> Binding:
        _check_floats(values)
        ids = _check_diag(offsets, values, out_features, in_features)
        vals, b = values.contiguous(), check_bias(bias, values, out_features)
        return Binding(lambda x, runner: launches.diag_mm(x, ids, vals, out_features, runner, bias=b),
                       lambda x, batch: torch.empty(batch, out_features, dtype=x.dtype, device=x.device),
                       lambda x: diag_mm(x, ids, vals, out_features, bias=b), (ids, vals, b))

    return BoundProduct(bind, (offsets, values, bias), in_features, out_features)


def diag_values_grad(dy: Tensor, x: Tensor, offsets: Tensor) -> Tensor:
    """dV[k, j] = sum_b dy[b, row(k, j)] * x[b, col(k, j)]; dy (B, out), x (B, in) -> (K, D)."""
    _check_floats(dy, x)
    if dy.shape[0] != x.shape[0]:
        raise UserError(f"dy and x need the same batch size, got {dy.shape[0]} and {x.shape[0]}")
    ids = _ids(offsets, x.device, "offsets")
    _check_offsets(offsets, max(dy.shape[1], x.shape[1]))
    return launches.diag_values_grad(dy.contiguous(), x.contiguous(), ids, loader.run)


def _condensed_pattern(indices: Tensor, active_rows: Tensor, n_active_k: tuple[int, ...], in_features: int,
                       out_features: int) -> tuple[Tensor, Tensor]:
    """Checked (indices, active_rows int64) of a (n_active, k) condensed weight."""
    if indices.dtype not in INDEX_TYPES or indices.shape != n_active_k:
        raise UserError(f"condensed indices must be int16/int32/int64 of shape {n_active_k}, "
                        f"got {indices.dtype} {tuple(indices.shape)}")
    if active_rows.shape != (n_active_k[0],):
        raise UserError(f"active_rows must have shape ({n_active_k[0]},), got {tuple(active_rows.shape)}")
    device = indices.device
    rows = _ids(active_rows, device, "active_rows")
    _check_condensed_pattern(indices, active_rows, in_features, out_features)
    return indices.contiguous(), rows


def _on_device(indices: Tensor, data: Tensor) -> None:
    if indices.device != data.device:
        raise UserError(f"condensed indices are on {indices.device}, the data on {data.device}")


def condensed_mm(x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int,
                 bias: Tensor | None = None) -> Tensor:
    """y[b, active_rows[i]] = sum_j values[i, j] * x[b, indices[i, j]] (+ bias); x (B, in) -> (B, out).

    Columns of ablated rows hold the bias (0 without one).
    """
    _check_floats(x, values)
    _on_device(indices, x)
    indices, rows = _condensed_pattern(indices, active_rows, tuple(values.shape), x.shape[1], out_features)
    bias = check_bias(bias, x, out_features)
    return launches.condensed_mm(x.contiguous(), values.contiguous(), indices, rows, out_features, loader.run, bias)


def bind_condensed_mm(values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int, out_features: int,
                      bias: Tensor | None = None) -> BoundProduct:
    """``condensed_mm(x, values, indices, active_rows, out_features, bias=bias)`` bound to these weights."""

    def bind() -> Binding:
        _check_floats(values)
        _on_device(indices, values)
        idx, rows = _condensed_pattern(indices, active_rows, tuple(values.shape), in_features, out_features)
        vals, b = values.contiguous(), check_bias(bias, values, out_features)
        n_active = vals.shape[0]
        return Binding(lambda x, runner: launches.condensed_mm(x, vals, idx, rows, out_features, runner, bias=b),
                       lambda x, batch: launches.condensed_output(x, batch, n_active, out_features, b),
                       lambda x: condensed_mm(x, vals, idx, rows, out_features, bias=b), (vals, idx, rows, b))

    return BoundProduct(bind, (values, indices, active_rows, bias), in_features, out_features)


def condensed_values_grad(dy: Tensor, x: Tensor, indices: Tensor, active_rows: Tensor) -> Tensor:
    """dValues[i, j] = sum_b dy[b, active_rows[i]] * x[b, indices[i, j]] -> (n_active, k)."""
    _check_floats(dy, x)
    _on_device(indices, x)
    if dy.shape[0] != x.shape[0] or indices.dim() != 2:
        raise UserError(f"condensed_values_grad needs dy (B, out), x (B, in) and indices (n_active, k), got "
                        f"{tuple(dy.shape)}, {tuple(x.shape)} and {tuple(indices.shape)}")
    indices, rows = _condensed_pattern(indices, active_rows, tuple(indices.shape), x.shape[1], dy.shape[1])
    return launches.condensed_values_grad(dy.contiguous(), x.contiguous(), indices, rows, loader.run)


def condensed_input_grad(dy: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int) -> Tensor:
    """dx[b, c] = sum over entries (i, j) with indices[i, j] == c of values[i, j] * dy[b, active_rows[i]] -> (B, in)."""
    _check_floats(dy, values)
    _on_device(indices, dy)
    indices, rows = _condensed_pattern(indices, active_rows, tuple(values.shape), in_features, dy.shape[1])
    return launches.condensed_input_grad(dy.contiguous(), values.contiguous(), indices, rows, in_features, loader.run)
