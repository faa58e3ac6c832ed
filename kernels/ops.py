"""The sparse products as PyTorch operators (``torch.ops.dstbench.*``), each picking an implementation per call.

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

Operators (``torch.ops.dstbench.*``, defined with ``torch.library``; x is
(B, in), dy (B, out); ``impl`` is resolved inside the operator, so a
compiled graph holds the request and the choice is made at run time):

* ``diag_mm(x, offsets, values, out_features, impl, bias=None) -> (B, out)``,
  differentiable in x, values and bias, whose backward calls
  ``diag_input_grad(dy, offsets, values, in_features, impl) -> (B, in)`` and
  ``diag_values_grad(dy, x, offsets, impl) -> (K, D)``;
* ``condensed_mm(x, values, indices, active_rows, out_features, impl, bias=None) -> (B, out)``,
  the same, with ``condensed_input_grad(dy, values, indices, active_rows, in_features, impl) -> (B, in)``
  and ``condensed_values_grad(dy, x, indices, active_rows, impl) -> (n_active, k)``;
* ``csr_mm(x, crow_indices, col_indices, values, out_features, bias=None) -> (B, out)``:
  torch's sparse CSR product (MKL / cuSPARSE) on the CSR components, for
  inference (its backward raises); its output is column-major, as torch's is;
* ``self_attention(qkv, num_heads) -> (B, T, D)``: the attention of a packed
  qkv projection (B, T, 3 D) for inference (its backward raises), by the
  compiled CPU kernel where ``kernels.cpu.attention_unavailable`` has no
  objection, else by torch's ``scaled_dot_product_attention``
  (``kernels.reference.self_attention``);
* ``gelu(x) -> x's shape`` and ``add_layer_norm(a, b, weight, bias, eps) -> (a + b, LayerNorm(a + b))``:
  the MLP activation of a ViT block and its residual adds fused with the
  LayerNorms that read them, for inference (their backward raises), by the
  compiled CPU kernels on float32 CPU tensors (``kernels.cpu.rowwise_unavailable``),
  else by torch's ``F.gelu`` and ``F.layer_norm``.

Each has a fake (meta) implementation giving the output's shape, dtype,
device and strides, so ``torch.compile(fullgraph=True)`` and ``torch.export``
capture the layers that call them; the two trainable products register their
backward with ``torch.library.register_autograd``, and autograd is skipped
(no ``autograd.Function``) when no input requires grad or in inference mode.
The kernel of every operator is registered for all devices
(``CompositeExplicitAutograd``), so the same operator runs the CPU and the
CUDA backend. The forward products take an optional ``bias`` (out,): the CPU
and CUDA backends add it inside their kernels (one native call per layer),
the reference in place on its fresh output.

The Python functions ``diag_mm``, ``condensed_mm`` and ``csr_mm`` below take
x of shape (..., in) and call the operators on its (B, in) view; in eager
mode with nothing to differentiate and no dispatch mode (``direct``) they
call the operator's kernel function themselves, which saves the ~10 us the
dispatcher and its Python layers cost per call.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from dstbench.errors import UserError

IMPLS = ("reference", "cpu", "cuda")
_BACKEND_MODULES = {
    "reference": "dstbench.kernels.reference",
    "cpu": "dstbench.kernels.cpu",
    "cuda": "dstbench.kernels.cuda",
}
#: backends whose forward kernels take ``bias=`` and add it themselves
_FUSES_BIAS = frozenset({"cpu", "cuda"})
_warned: set[tuple[str, str]] = set()
_backends: dict[str, ModuleType] = {}
#: select_impl's successful answers (an available backend stays available)
_selected: dict[tuple, str] = {}


def backend(impl: str) -> ModuleType:
    """The module implementing ``impl`` (one of IMPLS), imported on first use."""
    module = _backends.get(impl)
    if module is None:
        if impl not in _BACKEND_MODULES:
            raise UserError(f"unknown kernel implementation {impl!r}; choose one of {', '.join(IMPLS)} or 'auto'")
        module = _backends[impl] = importlib.import_module(_BACKEND_MODULES[impl])
    return module


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
    key = (device, dtype, requested)
    if key in _selected:
        return _selected[key]
    device = torch.device(device)
    if requested != "auto":
        reason = unavailable_reason(requested, device, dtype)
        if reason:
            raise UserError(f"kernel implementation {requested!r} cannot run here: {reason}")
        _selected[key] = requested
        return requested
    preferred = "cuda" if device.type == "cuda" else "cpu"
    reason = unavailable_reason(preferred, device, dtype)
    if reason is None:
        _selected[key] = preferred
        return preferred
    if (preferred, reason) not in _warned:
        _warned.add((preferred, reason))
        warnings.warn(f"{preferred} kernel unavailable ({reason}); using the slow pure-torch reference", stacklevel=3)
    return "reference"


_LIB = torch.library.Library("dstbench", "DEF")


def _define(schema: str, kernel: Callable, fake: Callable) -> torch._ops.OpOverload:
    """Define ``dstbench::<schema>`` with one kernel for every device and a fake implementation."""
    name = schema.split("(", 1)[0]
    _LIB.define(schema)
    _LIB.impl(name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"dstbench::{name}", fake, lib=_LIB)
    return getattr(torch.ops.dstbench, name).default


def _forward(function: str, impl: str, x: Tensor, *args, bias: Tensor | None) -> Tensor:
    """``backend.<function>(x, *args)`` + bias, by the implementation ``impl`` resolves to."""
    impl = select_impl(x.device, x.dtype, impl)
    kernel = getattr(backend(impl), function)
    if impl in _FUSES_BIAS:
        return kernel(x, *args, bias=bias)
    y = kernel(x, *args)
    return y if bias is None else y.add_(bias)


def _rows_by(x: Tensor, columns: int) -> Tensor:
    """The fake output: (x.shape[0], columns), x's dtype and device."""
    return x.new_empty(x.shape[0], columns)


# --- diagonal format ---------------------------------------------------------------------------------------------

def _diag_mm(x: Tensor, offsets: Tensor, values: Tensor, out_features: int, impl: str,
             bias: Tensor | None = None) -> Tensor:
    return _forward("diag_mm", impl, x, offsets, values, out_features, bias=bias)


def _diag_input_grad(dy: Tensor, offsets: Tensor, values: Tensor, in_features: int, impl: str) -> Tensor:
    impl = select_impl(dy.device, dy.dtype, impl)
    return backend(impl).diag_mm(dy, offsets, values, in_features, transpose=True)


def _diag_values_grad(dy: Tensor, x: Tensor, offsets: Tensor, impl: str) -> Tensor:
    return backend(select_impl(x.device, x.dtype, impl)).diag_values_grad(dy, x, offsets)


diag_mm_op = _define(
    "diag_mm(Tensor x, Tensor offsets, Tensor values, SymInt out_features, str impl, Tensor? bias=None) -> Tensor",
    _diag_mm, lambda x, offsets, values, out_features, impl, bias=None: _rows_by(x, out_features))
diag_input_grad_op = _define(
    "diag_input_grad(Tensor dy, Tensor offsets, Tensor values, SymInt in_features, str impl) -> Tensor",
    _diag_input_grad, lambda dy, offsets, values, in_features, impl: _rows_by(dy, in_features))
diag_values_grad_op = _define(
    "diag_values_grad(Tensor dy, Tensor x, Tensor offsets, str impl) -> Tensor",
    _diag_values_grad, lambda dy, x, offsets, impl: x.new_empty(offsets.shape[0], min(dy.shape[1], x.shape[1])))


def _diag_mm_setup(ctx, inputs: tuple, output: Tensor) -> None:
    x, offsets, values, _, ctx.impl, _ = inputs
    ctx.save_for_backward(x, offsets, values)


def _diag_mm_backward(ctx, dy: Tensor) -> tuple:
    x, offsets, values = ctx.saved_tensors
    needs = ctx.needs_input_grad  # no entry for a bias left at its default (None)
    needs_x, needs_values, needs_bias = needs[0], needs[2], len(needs) > 5 and needs[5]
    dx = diag_input_grad_op(dy, offsets, values, x.shape[1], ctx.impl) if needs_x else None
    dv = diag_values_grad_op(dy, x, offsets, ctx.impl) if needs_values else None
    return dx, None, dv, None, None, dy.sum(0) if needs_bias else None


torch.library.register_autograd("dstbench::diag_mm", _diag_mm_backward, setup_context=_diag_mm_setup, lib=_LIB)


# --- condensed format --------------------------------------------------------------------------------------------

def _condensed_mm(x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int, impl: str,
                  bias: Tensor | None = None) -> Tensor:
    return _forward("condensed_mm", impl, x, values, indices, active_rows, out_features, bias=bias)


def _condensed_input_grad(dy: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int,
                          impl: str) -> Tensor:
    impl = select_impl(dy.device, dy.dtype, impl)
    return backend(impl).condensed_input_grad(dy, values, indices, active_rows, in_features)


def _condensed_values_grad(dy: Tensor, x: Tensor, indices: Tensor, active_rows: Tensor, impl: str) -> Tensor:
    return backend(select_impl(x.device, x.dtype, impl)).condensed_values_grad(dy, x, indices, active_rows)


condensed_mm_op = _define(
    "condensed_mm(Tensor x, Tensor values, Tensor indices, Tensor active_rows, SymInt out_features, str impl, "
    "Tensor? bias=None) -> Tensor",
    _condensed_mm,
    lambda x, values, indices, active_rows, out_features, impl, bias=None: _rows_by(x, out_features))
condensed_input_grad_op = _define(
    "condensed_input_grad(Tensor dy, Tensor values, Tensor indices, Tensor active_rows, SymInt in_features, "
    "str impl) -> Tensor",
    _condensed_input_grad,
    lambda dy, values, indices, active_rows, in_features, impl: _rows_by(dy, in_features))
condensed_values_grad_op = _define(
    "condensed_values_grad(Tensor dy, Tensor x, Tensor indices, Tensor active_rows, str impl) -> Tensor",
    _condensed_values_grad, lambda dy, x, indices, active_rows, impl: x.new_empty(indices.shape))


def _condensed_mm_setup(ctx, inputs: tuple, output: Tensor) -> None:
    x, values, indices, active_rows, _, ctx.impl, _ = inputs
    ctx.save_for_backward(x, values, indices, active_rows)


def _condensed_mm_backward(ctx, dy: Tensor) -> tuple:
    x, values, indices, active_rows = ctx.saved_tensors
    needs = ctx.needs_input_grad  # no entry for a bias left at its default (None)
    needs_x, needs_values, needs_bias = needs[0], needs[1], len(needs) > 6 and needs[6]
    dx = condensed_input_grad_op(dy, values, indices, active_rows, x.shape[1], ctx.impl) if needs_x else None
    dv = condensed_values_grad_op(dy, x, indices, active_rows, ctx.impl) if needs_values else None
    return dx, dv, None, None, None, None, dy.sum(0) if needs_bias else None


torch.library.register_autograd("dstbench::condensed_mm", _condensed_mm_backward, setup_context=_condensed_mm_setup,
                                lib=_LIB)


# --- CSR (torch.sparse_csr: MKL / cuSPARSE) ----------------------------------------------------------------------

def _csr_mm(x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, out_features: int,
            bias: Tensor | None = None) -> Tensor:
    # The CSR tensor is rebuilt per call (~3 us) because torch.compile cannot hold a sparse tensor; the
    # components come from to_sparse_csr, so the O(nnz) invariant check is skipped.
    weight = torch.sparse_csr_tensor(crow_indices, col_indices, values, (out_features, x.shape[1]),
                                     check_invariants=False)
    y = torch.mm(weight, x.t()).t()  # (B, out) in column-major layout, as the fake implementation says
    return y if bias is None else y.add_(bias)


csr_mm_op = _define(
    "csr_mm(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, SymInt out_features, "
    "Tensor? bias=None) -> Tensor",
    _csr_mm,
    lambda x, crow_indices, col_indices, values, out_features, bias=None: x.new_empty(out_features, x.shape[0]).t())


def _csr_mm_backward(ctx, dy: Tensor) -> tuple:
    raise UserError("csr_mm has no gradient: the CSR layer (CSRLinear) is for inference; train with the method's "
                    "masked dense layers")


torch.library.register_autograd("dstbench::csr_mm", _csr_mm_backward, lib=_LIB)


# --- attention ---------------------------------------------------------------------------------------------------

def _self_attention(qkv: Tensor, num_heads: int) -> Tensor:
    if qkv.device.type == "cpu":
        cpu = backend("cpu")
        if cpu.attention_unavailable(qkv, num_heads) is None:
            return cpu.self_attention(qkv, num_heads)
    return backend("reference").self_attention(qkv, num_heads)


self_attention_op = _define(
    "self_attention(Tensor qkv, SymInt num_heads) -> Tensor",
    _self_attention,
    lambda qkv, num_heads: qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3))


def _self_attention_backward(ctx, dy: Tensor) -> tuple:
    raise UserError("self_attention has no gradient: it is for inference; in training, LinearQKVAttention runs "
                    "torch's scaled_dot_product_attention")


torch.library.register_autograd("dstbench::self_attention", _self_attention_backward, lib=_LIB)


# --- row-wise ops of a ViT block --------------------------------------------------------------------------------

def _rowwise(*tensors: Tensor) -> ModuleType:
    """The backend of the row-wise ops on ``tensors``: the CPU kernels where they can, else the reference."""
    if tensors[0].device.type == "cpu":
        cpu = backend("cpu")
        if cpu.rowwise_unavailable(*tensors) is None:
            return cpu
    return backend("reference")


def _gelu(x: Tensor) -> Tensor:
    return _rowwise(x).gelu(x)


def _add_layer_norm(a: Tensor, b: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return _rowwise(a, b, weight, bias).add_layer_norm(a, b, weight, bias, eps)


# both backends return contiguous tensors, whatever the inputs' strides
gelu_op = _define("gelu(Tensor x) -> Tensor", _gelu, lambda x: x.new_empty(x.shape))
add_layer_norm_op = _define(
    "add_layer_norm(Tensor a, Tensor b, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)",
    _add_layer_norm, lambda a, b, weight, bias, eps: (a.new_empty(a.shape), a.new_empty(a.shape)))


def _inference_only(name: str) -> Callable:
    def backward(ctx, *grads: Tensor) -> tuple:
        raise UserError(f"{name} has no gradient: it is for inference; in training, vit_e2e.FusedRowsEncoder runs "
                        "torch's GELU, adds and LayerNorms")
    return backward


torch.library.register_autograd("dstbench::gelu", _inference_only("gelu"), lib=_LIB)
torch.library.register_autograd("dstbench::add_layer_norm", _inference_only("add_layer_norm"), lib=_LIB)


# --- the entry points --------------------------------------------------------------------------------------------

def direct(x: Tensor, *weights: Tensor | None) -> bool:
    """Whether a call may skip the dispatcher and run the operator's kernel itself.

    True in eager mode for a plain tensor when no gradient is needed and no
    dispatch mode is active: nothing a dispatcher layer (autograd, tracing,
    fake tensors, modes) would do applies, and it costs ~10 us per call.
    """
    if type(x) is not Tensor or torch.compiler.is_compiling() or _current_dispatch_mode() is not None:
        return False
    if not torch.is_grad_enabled():
        return True
    if x.requires_grad:
        return False
    for w in weights:
        if w is not None and w.requires_grad:
            return False
    return True


def batched(op: torch._ops.OpOverload | Callable, x: Tensor, out_features: int, *args) -> Tensor:
    """``op(x2, *args)`` on the (B, in) view x2 of x (..., in), reshaped back to (..., out_features)."""
    if x.dim() == 2:  # the two reshapes cost ~5 us per call on a 2-core Xeon, half the dispatch overhead
        return op(x, *args)
    y = op(x.reshape(-1, x.shape[-1]), *args)
    return y.reshape(*x.shape[:-1], out_features)


def diag_mm(x: Tensor, offsets: Tensor, values: Tensor, out_features: int, impl: str = "auto",
            bias: Tensor | None = None) -> Tensor:
    """y = x @ W.T (+ bias) for a diagonal weight; differentiable in x and values (and bias).

    Args:
        x: (..., in); offsets: (K,) int64; values: (K, min(out, in)); bias: (out,) or None.
        impl: one of IMPLS, or "auto".
    Returns:
        (..., out_features).
    """
    op = _diag_mm if direct(x, values, bias) else diag_mm_op
    return batched(op, x, out_features, offsets, values, out_features, impl, bias)


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
    op = _condensed_mm if direct(x, values, bias) else condensed_mm_op
    return batched(op, x, out_features, values, indices, active_rows, out_features, impl, bias)


def csr_mm(x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, out_features: int,
           bias: Tensor | None = None) -> Tensor:
    """y = x @ W.T (+ bias) for W in CSR components (torch.sparse_csr: MKL / cuSPARSE); not differentiable.

    Args:
        x: (..., in); crow_indices: (out + 1,); col_indices, values: (nnz,); bias: (out,) or None.
    Returns:
        (..., out_features).
    """
    op = _csr_mm if direct(x, values, bias) else csr_mm_op
    return batched(op, x, out_features, crow_indices, col_indices, values, out_features, bias)


def self_attention(qkv: Tensor, num_heads: int) -> Tensor:
    """softmax(q k^T / sqrt(dh)) v per head from a packed qkv projection, for inference (not differentiable).

    Args:
        qkv: (B, T, 3 D), each token's q, k and v side by side, each as ``num_heads`` heads.
    Returns:
        (B, T, D).
    """
    op = _self_attention if direct(qkv) else self_attention_op
    return op(qkv, num_heads)


def gelu(x: Tensor) -> Tensor:
    """The exact (erf) GELU of x, any shape, for inference (not differentiable)."""
    op = _gelu if direct(x) else gelu_op
    return op(x)


def add_layer_norm(a: Tensor, b: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """s = a + b and LayerNorm(s) over the last dimension, for inference (not differentiable).

    Args:
        a, b: (..., D) of one shape; weight, bias: (D,), the LayerNorm's; eps: its epsilon.
    Returns:
        (s, LayerNorm(s)), both (..., D).
    """
    op = _add_layer_norm if direct(a, b, weight, bias) else add_layer_norm_op
    return op(a, b, weight, bias, eps)
