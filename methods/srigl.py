"""SRigL (Lasby et al. ICLR 2024): constant fan-in with neuron ablation; inference through the condensed kernel."""

from __future__ import annotations

from torch import nn

from dstbench.kernels.formats import CondensedWeight
from dstbench.kernels.layers import CondensedLinear
from dstbench.methods.base import SparsityMethod
from dstbench.registry import register_method


@register_method("srigl")
class SRigL(SparsityMethod):
    """Structured-fan-in dynamic sparse training; inference format condensed values+indices."""

    inference_format = "condensed"

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        weight = CondensedWeight.top_k(linear.weight.detach(), self.sparsity, linear.bias)
        return CondensedLinear(weight, self.impl)
