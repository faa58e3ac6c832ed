"""Differentiable sparse products that pick an implementation per call.

Implementations (``impl``):

* ``"reference"``: pure torch (``kernels.reference``), any device and dtype;
* ``"cpu"``: the compiled OpenMP kernels (``kernels.cpu``);
* ``"cuda"``: the CuPy kernels (``kernels.cuda``).

``"auto"`` takes ``cuda`` for CUDA tensors and ``cpu`` for CPU tensors, and
falls back to ``reference`` with a warning that names the reason when the
fast kernel cannot run (no compiler, no CuPy, an unsupported dtype). Every
backend module exposes the five functions of ``kernels.reference`` with the
same signatures (``diag_mm`` with its ``transpose`` flag for the input
gradient), plus ``unavailable_reason(device, dtype) -> str | None``.

The forward products take an optional ``bias`` (out,). Without autograd, the
CUDA backend adds it inside its kernel (one launch less per call); the other
backends add it in place on their fresh output.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch
from torch import Tensor

from dstbench.errors import UserError

IMPLS = ("reference", "cpu", "cuda")
_BACKEND_MODULES = {
    "reference": "dstbench.kernels.reference",
    "cpu": "dstbench.kernels.cpu",
    "cuda": "dstbench.kernels.cuda",
}
#: backends whose forward kernels take ``bias=`` and add it themselves
_FUSES_BIAS = frozenset({"cuda"})
_warned: set[tuple[str, str]] = set()


def backend(impl: str) -> ModuleType:
    """The module implementing ``impl`` (one of IMPLS)."""
    if impl not in _BACKEND_MODULES:
        raise UserError(f"unknown kernel implementation {impl!r}; choose one of {', '.join(IMPLS)} or 'auto'")
    return importlib.import_module(_BACKEND_MODULES[impl])


def unavailable_reason(impl: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``impl`` cannot run on this device and dtype, or None if it can."""
    if impl == "reference":
        return None
    return backend(impl).unavailable_reason(torch.device(device), dtype)


def select_impl(device: torch.device | str, dtype: torch.dtype, requested: str = "auto") -> str:
    """Resolve ``requested`` to the implementation that will actually run.

    An explicit request that cannot run raises UserError; ``"auto"`` falls
    back to ``"reference"`` with a one-time warning.
    """
    device = torch.device(device)
    if requested != "auto":
        reason = unavailable_reason(requested, device, dtype)
        if reason:
            raise UserError(f"kernel implementation {requested!r} cannot run here: {reason}")
        return requested
    preferred = "cuda" if device.type == "cuda" else "cpu"
    reason = unavailable_reason(preferred, device, dtype)
    if reason is None:
        return preferred
    if (preferred, reason) not in _warned:
        _warned.add((preferred, reason))
        warnings.warn(f"{preferred} kernel unavailable ({reason}); using the slow pure-torch reference", stacklevel=3)
    return "reference"


def _needs_autograd(*tensors: Tensor) -> bool:
    """False in inference, where the autograd.Function's ~5 µs per call is pure overhead."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _add_bias_(y: Tensor, bias: Tensor | None) -> Tensor:
    """y += bias in place: y is a fresh kernel output, and a new (B, out) tensor costs page faults."""
    return y if bias is None else y.add_(bias)


def _flatten(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    return x.reshape(-1, x.shape[-1]).contiguous(), tuple(x.shape[:-1])


class _DiagMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, offsets: Tensor, values: Tensor, out_features: int, impl: str) -> Tensor:
        ctx.save_for_backward(x, offsets, values)
        ctx.impl = impl
        return backend(impl).diag_mm(x, offsets, values, out_features)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, offsets, values = ctx.saved_tensors
        be = backend(ctx.impl)
        dy = dy.contiguous()
        dx = be.diag_mm(dy, offsets, values, x.shape[1], transpose=True) if ctx.needs_input_grad[0] else None
        dv = be.diag_values_grad(dy, x, offsets) if ctx.needs_input_grad[2] else None
        return dx, None, dv, None, None


class _CondensedMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int, impl: str) -> Tensor:
        ctx.save_for_backward(x, values, indices, active_rows)
        ctx.impl = impl
        return backend(impl).condensed_mm(x, values, indices, active_rows, out_features)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, values, indices, active_rows = ctx.saved_tensors
        be = backend(ctx.impl)
        dy = dy.contiguous()
        dx = be.condensed_input_grad(dy, values, indices, active_rows, x.shape[1]) if ctx.needs_input_grad[0] else None
        dv = be.condensed_values_grad(dy, x, indices, active_rows) if ctx.needs_input_grad[1] else None
        return dx, dv, None, None, None, None


def diag_mm(x: Tensor, offsets: Tensor, values: Tensor, out_features: int, impl: str = "auto",
            bias: Tensor | None = None) -> Tensor:
    """y = x @ W.T (+ bias) for a diagonal weight; differentiable in x and values (and bias).

    Args:
        x: (..., in); offsets: (K,) int64; values: (K, min(out, in)); bias: (out,) or None.
        impl: one of IMPLS, or "auto".
    Returns:
        (..., out_features).
    """
    x2, lead = _flatten(x)
    impl = select_impl(x.device, x.dtype, impl)
    values = values.contiguous()
    if _needs_autograd(x, values, *(() if bias is None else (bias,))):
        y = _DiagMM.apply(x2, offsets, values, out_features, impl)
        y = y if bias is None else y + bias
    elif impl in _FUSES_BIAS:
        y = backend(impl).diag_mm(x2, offsets, values, out_features, bias=bias)
    else:
        y = _add_bias_(backend(impl).diag_mm(x2, offsets, values, out_features), bias)
    return y.reshape(*lead, out_features)


def condensed_mm(
    x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int, impl: str = "auto",
    bias: Tensor | None = None,
) -> Tensor:
    """y = x @ W.T (+ bias) for a constant fan-in weight; differentiable in x and values (and bias).

    Args:
        x: (..., in); values, indices: (n_active, k); active_rows: (n_active,); bias: (out,) or None.
    Returns:
        (..., out_features); columns of ablated rows are the bias (0 without one).
    """
    x2, lead = _flatten(x)
    impl = select_impl(x.device, x.dtype, impl)
    values, indices = values.contiguous(), indices.contiguous()
    if _needs_autograd(x, values, *(() if bias is None else (bias,))):
        y = _CondensedMM.apply(x2, values, indices, active_rows, out_features, impl)
        y = y if bias is None else y + bias
    elif impl in _FUSES_BIAS:
        y = backend(impl).condensed_mm(x2, values, indices, active_rows, out_features, bias=bias)
    else:
        y = _add_bias_(backend(impl).condensed_mm(x2, values, indices, active_rows, out_features), bias)
    return y.reshape(*lead, out_features)
