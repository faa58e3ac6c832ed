"""CUDA kernels (CuPy ``RawModule``) for the diagonal and condensed formats.

The backend contract of ``kernels.ops``: the five functions of
``kernels.reference`` with the same signatures, plus ``unavailable_reason``.
``kernels.ops`` wraps them in ``autograd.Function``s. ``diag_mm`` takes
one more, optional argument, ``transpose``: the diagonal input gradient must
be ``diag_mm(dy, offsets, values, in_features, transpose=True)``, because for
a square W the transposed geometry does not hold W.T's diagonals in order.

Supported: CUDA tensors of float32, float16, bfloat16 (accumulated in
float32) and float64 (accumulated in float64, for ``gradcheck``); condensed
indices int16/int32/int64. Everything else raises ``UserError``.

Kernels and launch geometry (sources in ``kernels/diagonal/diagonal.cu`` and
``kernels/condensed/condensed.cu``; tile sizes in ``sources.TILES``):

==========================  ===================================================
diag_fwd_small (B < 16)     warp = 32 consecutive output columns, 8 warps split
                            the K diagonals, 4 batch rows per thread; partial
                            sums meet in shared memory. Coalesced along each
                            diagonal: values[k, j] and x[b, col] are contiguous.
diag_fwd_tiled (B >= 16)    block = 64 output columns x 16 batch rows (4 per
                            thread); offsets walked in ranges of 64, each range
                            staging the x window its diagonals read (16 x 127)
                            in shared memory, so nearby diagonals share loads.
                            Correct for unsorted offsets (they read global x).
diag_values_grad            SDDMM on the diagonals: thread = entry j of 4
                            diagonals, 8 batch slices per block reduced in
                            shared memory; the width-D operand is loaded once
                            for the 4 diagonals.
condensed_fwd               warp per active row; lanes = (batch row, slice of
                            the k entries), slices summed with shuffles. x for
                            up to 32 batch rows staged in shared memory as
                            xs[col][b] when it fits in 48 KiB, else read from a
                            transposed copy xT (in, B) through L1.
condensed_values_grad       thread = one entry, 8 batch slices per block.
condensed_input_grad        transposed CSR (argsort of the indices, per call):
                            warp per input column sums its entries, with dy
                            transposed (out, B). Deterministic, no atomics, no
                            float32 scratch buffer; costs one argsort+bincount.
==========================  ===================================================

No tensor-core path: the diagonal and condensed products run on SIMT FMAs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dstbench.errors import UserError
from dstbench.kernels.cuda import launches, loader
from dstbench.kernels.cuda.sources import INDEX_TYPES, SCALAR_TYPES

__all__ = [
    "condensed_input_grad",
    "condensed_mm",
    "condensed_values_grad",
    "diag_mm",
    "diag_values_grad",
    "unavailable_reason",
]


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why these kernels cannot run on ``device`` for ``dtype``, or None if they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"not a CUDA tensor (device {device})"
    if dtype not in SCALAR_TYPES:
        return f"dtype {dtype} unsupported (float32, float16, bfloat16, float64)"
    if not torch.cuda.is_available():
        return "torch reports no usable CUDA device"
    return loader.cupy_missing_reason()


def _check_floats(*tensors: Tensor) -> None:
    first = tensors[0]
    reason = unavailable_reason(first.device, first.dtype)
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


def _check_diag(offsets: Tensor, values: Tensor, out_features: int, in_features: int) -> None:
    d = min(out_features, in_features)
    if out_features < 1 or values.shape != (offsets.shape[0], d):
        raise UserError(
            f"diagonal values must have shape (K, D) = ({offsets.shape[0]}, {d}) for a "
            f"({out_features}, {in_features}) weight, got {tuple(values.shape)}"
        )


def diag_mm(x: Tensor, offsets: Tensor, values: Tensor, out_features: int, transpose: bool = False) -> Tensor:
    """y = x @ W.T for the diagonal weight (offsets (K,), values (K, D)); x (B, in) -> (B, out).

    With ``transpose=True``, W has shape (in, out) and y = x @ W (the input
    gradient: ``diag_mm(dy, offsets, values, in_features, transpose=True)``).
    Without it, a square W's input gradient would come out wrong: a square
    W.T's diagonal s is not W's diagonal s.
    """
    _check_floats(x, values)
    w_out, w_in = (x.shape[1], out_features) if transpose else (out_features, x.shape[1])
    _check_diag(offsets, values, w_out, w_in)
    offsets = _ids(offsets, x.device, "offsets")
    return launches.diag_mm(x.contiguous(), offsets, values.contiguous(), out_features, loader.run, transpose)


def diag_values_grad(dy: Tensor, x: Tensor, offsets: Tensor) -> Tensor:
    """dV[k, j] = sum_b dy[b, row(k, j)] * x[b, col(k, j)]; dy (B, out), x (B, in) -> (K, D)."""
    _check_floats(dy, x)
    if dy.shape[0] != x.shape[0]:
        raise UserError(f"dy and x need the same batch size, got {dy.shape[0]} and {x.shape[0]}")
    offsets = _ids(offsets, x.device, "offsets")
    return launches.diag_values_grad(dy.contiguous(), x.contiguous(), offsets, loader.run)


def _indices(indices: Tensor, values: Tensor) -> Tensor:
    if indices.dtype not in INDEX_TYPES or indices.shape != values.shape or indices.device != values.device:
        raise UserError(
            f"condensed indices must be int16/int32/int64 of the values' shape {tuple(values.shape)} on "
            f"{values.device}, got {indices.dtype} {tuple(indices.shape)} on {indices.device}"
        )
    return indices.contiguous()


def _check_rows(active_rows: Tensor, values: Tensor) -> None:
    if active_rows.shape != (values.shape[0],):
        raise UserError(f"active_rows must have shape ({values.shape[0]},), got {tuple(active_rows.shape)}")


def condensed_mm(x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int) -> Tensor:
    """y[b, active_rows[i]] = sum_j values[i, j] * x[b, indices[i, j]]; x (B, in) -> (B, out), other columns 0."""
    _check_floats(x, values)
    _check_rows(active_rows, values)
    indices = _indices(indices, values)
    rows = _ids(active_rows, x.device, "active_rows")
    return launches.condensed_mm(x.contiguous(), values.contiguous(), indices, rows, out_features, loader.run)


def condensed_values_grad(dy: Tensor, x: Tensor, indices: Tensor, active_rows: Tensor) -> Tensor:
    """dValues[i, j] = sum_b dy[b, active_rows[i]] * x[b, indices[i, j]] -> (n_active, k)."""
    _check_floats(dy, x)
    if indices.dtype not in INDEX_TYPES or indices.dim() != 2:
        raise UserError(f"condensed indices must be a 2-D int16/int32/int64 tensor, got {indices.dtype}")
    if active_rows.shape != (indices.shape[0],):
        raise UserError(f"active_rows must have shape ({indices.shape[0]},), got {tuple(active_rows.shape)}")
    rows = _ids(active_rows, x.device, "active_rows")
    return launches.condensed_values_grad(dy.contiguous(), x.contiguous(), indices.contiguous(), rows, loader.run)


def condensed_input_grad(dy: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int) -> Tensor:
    """dx[b, c] = sum over entries (i, j) with indices[i, j] == c of values[i, j] * dy[b, active_rows[i]] -> (B, in)."""
    _check_floats(dy, values)
    _check_rows(active_rows, values)
    indices = _indices(indices, values)
    rows = _ids(active_rows, dy.device, "active_rows")
    return launches.condensed_input_grad(dy.contiguous(), values.contiguous(), indices, rows, in_features, loader.run)
