"""RigL (Evci et al. 2020): unstructured prune by |w|, regrow by |grad|; inference through CSR.

Training (``PruneAndGrow``): ERK (default) or uniform layer densities, random
initial masks with round(density * numel) weights from the method's
generator. After every ``delta_t``-th optimizer step before
``t_end * total_steps``, per layer, as in the reference code
(``SparseRigLOptimizer.generic_mask_update``):

1. drop n = floor(alpha_t * nnz) of the active weights with the smallest |w|
   (alpha_t = alpha * (1 + cos(pi * t / T_end)) / 2), keeping the other nnz - n;
2. grow n positions with the largest dense |grad| among all positions not
   kept, so a weight dropped in 1. may be grown back;
3. positions grown that were inactive start at w = 0 with a zeroed optimizer
   state; a weight dropped and grown back keeps its value and state (the
   reference's default ``reinit_when_same=False``).

The optimizer step is not skipped on update steps (as in the PyTorch ports).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dstbench.kernels.layers import CSRLinear
from dstbench.methods.mask_training import PruneAndGrow
from dstbench.methods.masking import top_mask
from dstbench.registry import register_method


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean (out, in) mask keeping the round((1 - sparsity) * numel) largest |w| (at least 1)."""
    keep = max(1, round((1.0 - sparsity) * weight.numel()))
    idx = torch.topk(weight.detach().abs().flatten(), keep).indices
    return torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device).index_fill_(0, idx, True).view_as(weight)


class UnstructuredCSR:
    """For the unstructured mask methods (RigL, SET, static): a random initial mask of the layer's budget,
    drawn from the method's generator, and CSR (``torch.sparse_csr``) at inference."""

    inference_format = "csr"

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        w = linear.weight.detach()
        return CSRLinear(w * magnitude_mask(w, self.sparsity), linear.bias)

    def initial_mask(self, name: str, shape: tuple[int, int]) -> Tensor:
        scores = torch.rand(shape, generator=self.generator)
        return top_mask(scores, self.targets[name])

    def inference_linear(self, linear: nn.Linear, mask: Tensor) -> nn.Module:
        return CSRLinear(linear.weight.detach() * mask, linear.bias)


@register_method("rigl")
class RigL(UnstructuredCSR, PruneAndGrow):
    """Unstructured dynamic sparse training; inference format CSR."""

    display_name, color, marker, order = "RigL (CSR)", "#0072B2", "o", 10

    def update_mask(self, name: str, weight: Tensor, grad: Tensor, mask: Tensor, drop_fraction: float) -> Tensor:
        nnz = int(mask.sum())
        n_drop = int(drop_fraction * nnz)
        keep = top_mask(weight.abs().float().masked_fill(~mask, -1.0), nnz - n_drop)
        grow = top_mask(grad.abs().float().masked_fill(keep, -1.0), n_drop)
        return keep | grow
