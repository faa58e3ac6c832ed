"""The dense implementations of the inference suite: one row each, the fastest of a group the reference of its speedups.

* ``dense``: torch's default, ``F.linear`` (``DenseLinear``; MKL on x86
  CPUs, impl "mkl", cuBLAS on CUDA);
* ``dense-onednn``: oneDNN, ``torch.utils.mkldnn.to_mkldnn`` of the linear
  (its weight reordered once; every call converts x to oneDNN's layout and
  y back), on the CPU where ``torch.backends.mkldnn.is_available()``;
* ``dense-openblas``: numpy's OpenBLAS GEMM on zero-copy numpy views of the
  same weight and of x, the bias added, y wrapped as a torch tensor; CPU,
  float32. It runs on OpenBLAS's own thread pool (``dstbench.threadpools``).

All three rows carry method "dense"; the name (the last part of the case id)
and ``impl`` tell them apart.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
import torch.utils.mkldnn
from torch import Tensor, nn

from dstbench.methods.base import inference_copy

TORCH, ONEDNN, OPENBLAS = "dense", "dense-onednn", "dense-openblas"
NAMES = (TORCH, ONEDNN, OPENBLAS)
#: the names whose calls run on OpenBLAS's thread pool
BLAS = frozenset({OPENBLAS})


class OneDNNLinear(nn.Module):
    """``y = x @ W.T + bias`` through oneDNN (``torch.utils.mkldnn.MkldnnLinear``), x and y dense (..., features)."""

    impl = "onednn"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.nnz = linear.weight.numel()
        with warnings.catch_warnings():  # MkldnnLinear is a ScriptModule; torch flags TorchScript as deprecated
            warnings.filterwarnings("ignore", message=".*torch.jit.script_method.* is deprecated", category=FutureWarning)
            self.inner = torch.utils.mkldnn.to_mkldnn(linear, linear.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


class OpenBLASLinear(nn.Module):
    """``y = x @ W.T + bias`` by numpy's OpenBLAS on zero-copy views of the linear's weight and of x (CPU, float32).

    The weight is the linear's own storage (not a copy); x (..., in) must be
    a CPU tensor without grad. Returns a new tensor (..., out).
    """

    impl = "openblas"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.weight.device.type != "cpu" or linear.weight.dtype != torch.float32:
            raise RuntimeError(f"OpenBLAS GEMM needs a float32 CPU weight, got {linear.weight.dtype} on "
                               f"{linear.weight.device.type}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.nnz = linear.weight.numel()
        # buffers, so that the bytes of a call (``suites.traffic``) count them; not saved with the module
        self.register_buffer("weight", linear.weight.detach(), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)
        self._weight_t = self.weight.numpy().T  # (in, out), Fortran-ordered: BLAS reads it transposed, no copy
        self._bias = None if self.bias is None else self.bias.numpy()

    def forward(self, x: Tensor) -> Tensor:
        y = np.matmul(x.numpy(), self._weight_t)
        if self._bias is not None:
            y += self._bias
        return torch.from_numpy(y)


BUILDERS: dict[str, Callable[[nn.Linear], nn.Module]] = {ONEDNN: OneDNNLinear, OPENBLAS: OpenBLASLinear}


def with_linears(model: nn.Module, build: Callable[[nn.Linear], nn.Module],
                 include: Callable[[str, nn.Linear], bool] | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``nn.Linear`` (those ``include(name, linear)`` accepts, if given)
    replaced by ``build(linear)``, e.g. ``OneDNNLinear``: the same model in another dense library."""
    def convert(name: str, module: nn.Module) -> nn.Module | None:
        return build(module) if isinstance(module, nn.Linear) and (include is None or include(name, module)) else None

    return inference_copy(model, convert)


def models(model: nn.Module, device: str, dtype: torch.dtype) -> dict[str, nn.Module]:
    """``model`` (dense, torch's default) and, for every other of ``candidates``, the same model with its linears in
    that library (``with_linears``): name -> model."""
    return {name: model if name == TORCH else with_linears(model, BUILDERS[name]) for name in candidates(device, dtype)}


def candidates(device: str, dtype: torch.dtype) -> list[str]:
    """The dense implementations worth trying on ``device`` in ``dtype``, torch's default first (the others: ``BUILDERS``)."""
    if device != "cpu":
        return [TORCH]
    return ([TORCH] + ([ONEDNN] if torch.backends.mkldnn.is_available() else [])
            + ([OPENBLAS] if dtype == torch.float32 else []))
