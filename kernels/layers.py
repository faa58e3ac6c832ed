"""Inference-only linear layers, one per sparse format.

Each layer computes ``y = x @ W.T + bias`` for x of shape (..., in) and
records in ``impl`` which kernel actually runs, so that timings can say what
they timed.
"""

from __future__ import annotations

import operator
import warnings
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.compiler import is_compiling

from dstbench.kernels import cpu as cpu_kernels
from dstbench.kernels import ops
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight


@runtime_checkable
class InferenceLayer(Protocol):
    """The contract of ``SparsityMethod.sparsify_linear``'s layer, which the inference suite times and records.

    Called on x (..., in_features) it returns (..., out_features); ``impl`` names
    the kernel that runs (recorded in every row) and ``nnz`` the weights it holds.
    """

    in_features: int
    out_features: int

    @property
    def impl(self) -> str: ...

    @property
    def nnz(self) -> int: ...

    def __call__(self, x: Tensor) -> Tensor: ...


def _dense_impl_name(device: torch.device) -> str:
    if device.type == "cuda":
        return "cublas"
    return "mkl" if torch.backends.mkl.is_available() else "aten-cpu"


class DenseLinear(nn.Linear):
    """``nn.Linear`` that reports its implementation (cuBLAS / MKL)."""

    @property
    def impl(self) -> str:
        return _dense_impl_name(self.weight.device)

    @property
    def nnz(self) -> int:
        return self.weight.numel()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "DenseLinear":
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer


class CSRLinear(nn.Module):
    """Unstructured sparse weight in CSR, multiplied by ``torch.sparse_csr`` (cuSPARSE / MKL sparse BLAS).

    The CSR components are plain buffers, ``crow_indices`` (out + 1,), ``col_indices`` (nnz,), both int32
    where they fit, and ``values`` (nnz,), which ``ops.csr_mm`` assembles per call: torch.compile cannot hold a sparse tensor.

    Args:
        weight: (out, in) dense weight whose zeros are dropped.
        bias: (out,) or None.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with warnings.catch_warnings():  # torch flags all of sparse CSR as beta; the flag says nothing about this use
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = weight.detach().to_sparse_csr()
        # copies: views into a sparse tensor's members would bring the sparse tensor into a compiled graph. The
        # indices are int32 where they fit, as MKL's and cuSPARSE's own index type: torch converts int64 ones on
        # every call (768->3072 at 90%, batch 1, 1 thread: 444 us with int64, 276 us with int32)
        index = torch.int32 if max(csr.values().numel(), self.in_features) < 2**31 else torch.int64
        self.register_buffer("crow_indices", csr.crow_indices().to(index, copy=True))
        self.register_buffer("col_indices", csr.col_indices().to(index, copy=True))
        self.register_buffer("values", csr.values().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def impl(self) -> str:
        if self.values.device.type == "cuda":
            return "cusparse-csr"
        return "mkl-csr" if torch.backends.mkl.is_available() else "aten-csr"

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def forward(self, x: Tensor) -> Tensor:
        return ops.csr_mm(x, self.crow_indices, self.col_indices, self.values, self.out_features, self.bias)


class _KernelLinear(nn.Module):
    """What the layers run by a dstbench kernel share: shape, values, bias, the kernel choice.

    In eager mode with nothing to differentiate (``ops.direct``), on the
    compiled CPU kernels or the CUDA kernels, a call goes to a product bound
    to the layer's buffers (``kernels.cpu.BoundProduct``,
    ``kernels.cuda.bound.BoundProduct``), rebound whenever a buffer is
    replaced (``.to()``, assignment); that drops the per-call checks of the
    weights, ~5 us at batch 1 on the CPU, and more when the caches are cold
    (on CUDA it also replays each batch size's planned launch). The bound
    path runs as little Python as it can, because with cold caches every
    Python step costs several times its warm time: where the C++ call path
    of the CPU kernels is built, a call is one C++ call (``_fast``, the bound
    product's ``guarded``) that makes ``ops.direct``'s and ``_current``'s
    checks itself and runs x of any leading shape; it answers None for
    anything else, which takes the Python path below (rebinding there where
    a buffer moved). Everything else goes through the ``torch.ops.dstbench``
    operators. A layer whose bound product holds a copy of some buffers
    (``copied``, their names: the condensed layer's lane-packed copy, the diagonal layer's tile-packed one) also rebinds
    when an in-place change (``load_state_dict``, ``copy_``) moves the version
    counter of a weight tensor; inference tensors keep no such counter, so
    there only a replaced buffer rebinds.
    """

    _binder: str  # the name of the kernels.cpu / kernels.cuda function binding this layer's buffers
    copied: tuple[str, ...] = ()

    def __init__(self, out_features: int, in_features: int, values: Tensor, bias: Tensor | None, impl: str) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.register_buffer("values", values.detach().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.requested_impl = impl
        self._bound: tuple[tuple, tuple, object] | None = None  # (the buffers bound, their versions, the product)
        self._fast = None  # the bound product's guarded C++ call, (x, self._buffers) -> y or None

    def _bind(self, x: Tensor):
        """A new bound product of the current buffers (``kernels.cpu.BoundProduct`` on the CPU,
        ``kernels.cuda.bound.BoundProduct`` on CUDA), or None where neither the compiled CPU kernels nor the
        CUDA kernels run x."""
        values = self._buffers["values"]
        impl = ops.select_impl(values.device, values.dtype, self.requested_impl)
        if impl != x.device.type:  # select_impl gives "cpu" or "cuda" only for values on that device
            return None
        bound = getattr(ops.backend(impl), self._binder)(*self._weights(), self.in_features, self.out_features,
                                                         bias=self._buffers["bias"])
        self._bound = (tuple(self._buffers.values()), self._versions(), bound)
        self._fast = bound.guarded(self._buffers, tuple(self._buffers[name] for name in self.copied)) \
            if isinstance(bound, cpu_kernels.BoundProduct) else None
        return bound

    def _versions(self) -> tuple[int, ...]:
        """The version counters of the ``copied`` buffers (read from ``_buffers``: the module's attribute lookup
        cost ~0.5 us a name at batch 1), or () for inference tensors, which keep none."""
        buffers = self._buffers
        try:
            return tuple([buffers[name]._version for name in self.copied])
        except RuntimeError:
            return ()

    def _current(self, x: Tensor):
        """The product bound to the current buffers, bound anew where they were replaced or changed (x: a tensor
        on the device of the call); None where no kernel of ``kernels.cpu`` / ``kernels.cuda`` runs x. Current means
        the same buffer objects, no more and no fewer, in order, the copied ones at their bound versions: the rule
        ``_fast`` makes in C++ (``caller.cpp``'s ``Guarded``)."""
        bound, buffers = self._bound, self._buffers
        if bound is not None and len(bound[0]) == len(buffers) and all(map(operator.is_, bound[0], buffers.values())) \
                and bound[1] == self._versions():
            return bound[2]
        return self._bind(x)

    def bound_product(self):
        """The product an eager call on the weights' device runs (``_current``)."""
        return self._current(torch.empty(0, device=self.values.device))

    def call_tensors(self, batch: int) -> list[Tensor]:
        """The stored tensors an eager call on ``batch`` rows reads: the packed copy and the bias where the bound
        product runs that batch through one (``kernels.cpu.BoundCopy``), else the layer's buffers."""
        bound = self.bound_product()
        if isinstance(bound, cpu_kernels.BoundCopy) and bound.copies(batch):
            return [bound.blob] + ([] if self.bias is None else [self.bias])
        return list(self.buffers())

    def __getstate__(self) -> dict:
        """The state to copy or pickle, without the bound product (it holds a native function pointer)."""
        state = self.__dict__.copy()
        state["_bound"] = state["_fast"] = None
        return state

    def forward(self, x: Tensor) -> Tensor:
        fast = self._fast
        if fast is not None and not is_compiling():
            y = fast(x, self._buffers)
            if y is not None:
                return y
        if ops.direct(x):
            bound = self._current(x)
            if bound is not None:
                # ops.batched makes the same test; skipping the call saved 1-8 us per cold call (b16-fc1, batch 1)
                return bound(x) if x.dim() == 2 else ops.batched(bound, x, self.out_features)
        return self._product(x)

    @property
    def impl(self) -> str:
        return ops.select_impl(self.values.device, self.values.dtype, self.requested_impl)

    @property
    def nnz(self) -> int:
        return self.values.numel()


class CondensedLinear(_KernelLinear):
    """Constant fan-in weight (SRigL) run by the condensed kernel.

    Args:
        weight: the CondensedWeight (values (n_active, k), indices, active_rows, bias).
        impl: kernel implementation, one of ``ops.IMPLS`` or "auto".
    """

    _binder = "bind_condensed_mm"
    copied = ("values", "indices", "active_rows")  # kernels.cpu.BoundCopy: the lane-packed copy

    def __init__(self, weight: CondensedWeight, impl: str = "auto") -> None:
        super().__init__(weight.out_features, weight.in_features, weight.values, weight.bias, impl)
        self.register_buffer("indices", weight.indices.contiguous())
        self.register_buffer("active_rows", weight.active_rows.contiguous())

    def _weights(self) -> tuple[Tensor, ...]:
        return self.values, self.indices, self.active_rows

    def _product(self, x: Tensor) -> Tensor:
        return ops.condensed_mm(x, self.values, self.indices, self.active_rows, self.out_features,
                                self.requested_impl, bias=self.bias)


class DiagonalLinear(_KernelLinear):
    """K-diagonal weight (DynaDiag) run by the diagonal kernel.

    Args:
        weight: the DiagonalWeight (offsets (K,), values (K, D), bias).
        impl: kernel implementation, one of ``ops.IMPLS`` or "auto".
    """

    _binder = "bind_diag_mm"
    copied = ("offsets", "values")  # kernels.cpu.BoundCopy: the tile-packed copy

    def __init__(self, weight: DiagonalWeight, impl: str = "auto") -> None:
        super().__init__(weight.out_features, weight.in_features, weight.values, weight.bias, impl)
        self.register_buffer("offsets", weight.offsets.contiguous())

    def _weights(self) -> tuple[Tensor, ...]:
        return self.offsets, self.values

    def _product(self, x: Tensor) -> Tensor:
        return ops.diag_mm(x, self.offsets, self.values, self.out_features, self.requested_impl, bias=self.bias)
