"""DynaDiag (Tyagi et al. ICML 2025): K learned diagonals with a soft top-K; inference through the diagonal kernel."""

from __future__ import annotations

from torch import nn

from dstbench.kernels.formats import DiagonalWeight
from dstbench.kernels.layers import DiagonalLinear
from dstbench.methods.base import SparsityMethod
from dstbench.registry import register_method


@register_method("dynadiag")
class DynaDiag(SparsityMethod):
    """Diagonal dynamic sparse training; inference format offsets + values."""

    inference_format = "diagonal"

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        weight = DiagonalWeight.top_k(linear.weight.detach(), self.sparsity, linear.bias)
        return DiagonalLinear(weight, self.impl)
