"""RigL (Evci et al. 2020): unstructured prune by |w|, regrow by |grad|; inference through CSR."""

from __future__ import annotations

import torch
from torch import nn

from dstbench.kernels.layers import CSRLinear
from dstbench.methods.base import SparsityMethod
from dstbench.registry import register_method


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean (out, in) mask keeping the round((1 - sparsity) * numel) largest |w| (at least 1)."""
    keep = max(1, round((1.0 - sparsity) * weight.numel()))
    idx = torch.topk(weight.detach().abs().flatten(), keep).indices
    return torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device).index_fill_(0, idx, True).view_as(weight)


@register_method("rigl")
class RigL(SparsityMethod):
    """Unstructured dynamic sparse training; inference format CSR."""

    inference_format = "csr"

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        w = linear.weight.detach()
        return CSRLinear(w * magnitude_mask(w, self.sparsity), linear.bias)
