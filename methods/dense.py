"""The dense baseline: no sparsity, F.linear (cuBLAS / MKL)."""

from __future__ import annotations

from torch import nn

from dstbench.kernels.layers import DenseLinear
from dstbench.methods.base import SparsityMethod
from dstbench.registry import register_method


@register_method("dense")
class Dense(SparsityMethod):
    """Dense baseline; its sparsity is always 0."""

    inference_format = "dense"

    def __init__(self, sparsity: float = 0.0, **options) -> None:
        super().__init__(0.0, **options)

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        return DenseLinear.from_linear(linear)
