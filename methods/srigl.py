"""SRigL (Lasby et al. ICLR 2024): constant fan-in with neuron ablation; inference through the condensed kernel.

Training (``PruneAndGrow``), following the authors' ``RigLConstFanScheduler``
(calgaryml/condensed-sparsity): every selected layer is sparse, the
classifier head included (it is never ablated), as in the authors' configs.
A layer of budget B = int(density * numel) weights (the authors'
``get_fan_in_after_ablation``) keeps the same fan-in k = B // n_active in
every active neuron (row; for a conv, a filter with fan_in = in * kh * kw);
k >= 1. The initial mask draws k random columns per row, then the masked
weights are redrawn by the authors' ``grad_flow_init`` (``sparse_init``,
default "grad_flow", as their ``use_sparse_initialization: True``). At every
update (RigL's schedule), per layer:

1. n_drop = floor(alpha_t * nnz), n_keep = nnz - n_drop (n_keep is capped at
   the non-zero weights, as in the reference);
2. ablation (``ablation=True``): a weight is salient if it is among the
   layer's n_keep largest |w| or n_drop largest |grad|; a neuron with fewer
   than max(1, floor(gamma_sal * k0)) salient weights (k0 = B // out, the
   fan-in with every neuron active) is ablated, except in the classifier
   head. At least ceil(B / fan_in) neurons survive (fewer could not hold B
   weights): if too few pass, the threshold drops to the salience count of
   the ceil(B / fan_in)-th most salient neuron. Neurons are re-decided at
   every update, so an ablated neuron can come back through its gradients;
3. k = B // n_active for the survivors, so the layer stays on budget;
4. drop layer-wise: keep the n_keep largest |w| among active weights of
   surviving rows, then cap each row at its k largest |w|;
5. grow per surviving row the (k - kept) largest |grad| among its positions
   not kept; ablated rows are empty;
6. newly active weights start at 0 with a zeroed optimizer state.

Deviation from the reference, on purpose: the per-row cap keeps the k largest
|w| (the reference caps by an unordered sort of the boolean mask), and the
survivor floor is ceil(B / fan_in) exactly (the reference keeps one more).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dstbench.errors import UserError
from dstbench.kernels.formats import CondensedWeight
from dstbench.kernels.layers import CondensedLinear
from dstbench.methods.mask_training import PruneAndGrow
from dstbench.methods.masking import row_top_mask, top_mask
from dstbench.registry import register_method


def neurons_to_ablate(score_w: Tensor, score_g: Tensor, n_keep: int, n_drop: int, min_salient: int, min_neurons: int) -> Tensor:
    """Boolean (out,) ablation decision from weight and gradient salience.

    Args:
        score_w: (out, fan_in) |w| with inactive positions at -1.
        score_g: (out, fan_in) |dense grad|.
        n_keep, n_drop: the update's keep and drop counts.
        min_salient: a neuron with fewer salient weights is ablated.
        min_neurons: at least this many neurons survive.
    """
    salient = top_mask(score_w, n_keep) | top_mask(score_g, n_drop)
    counts = salient.sum(dim=1)
    threshold = min_salient
    if int((counts >= threshold).sum()) < min_neurons:
        threshold = int(torch.sort(counts, descending=True).values[min_neurons - 1])
    return counts < threshold


@register_method("srigl")
class SRigL(PruneAndGrow):
    """Structured-fan-in dynamic sparse training; inference format condensed values+indices.

    Extra options:
        ablation: dynamic neuron ablation (default True).
        gamma_sal: salience fraction gamma_sal (default 0.3 for CNNs/MLPs; the authors use 0.95 for ViT).
    """

    inference_format = "condensed"
    display_name, color, marker, order = "SRigL (condensed)", "#E69F00", "^", 20
    default_sparse_init = "grad_flow"

    def __init__(self, sparsity: float = 0.9, *, ablation: bool = True, gamma_sal: float = 0.3, **options: Any) -> None:
        super().__init__(sparsity, **options)
        if not 0.0 <= float(gamma_sal) <= 1.0:
            raise UserError(f"gamma_sal must be in [0, 1] (a fraction of the fan-in), got {gamma_sal!r}")
        self.ablation = bool(ablation)
        self.gamma_sal = float(gamma_sal)

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        weight = CondensedWeight.top_k(linear.weight.detach(), self.sparsity, linear.bias)
        return CondensedLinear(weight, self.impl)

    def budget(self, numel: int, density: float) -> int:
        """B = int(numel * density), at least 1: the authors' budget (floor, not round)."""
        return max(1, int(numel * density))

    def fan_in(self, name: str, fan_in: int, active: int) -> int:
        """k = budget // active rows, in [1, fan_in]."""
        return max(1, min(fan_in, self.targets[name] // active))

    def initial_mask(self, name: str, shape: tuple[int, int]) -> Tensor:
        rows, cols = shape
        return row_top_mask(torch.rand(shape, generator=self.generator), self.fan_in(name, cols, rows))

    def update_mask(self, name: str, weight: Tensor, grad: Tensor, mask: Tensor, drop_fraction: float) -> Tensor:
        rows, cols = mask.shape
        n_ones = int(mask.sum())
        n_drop = int(drop_fraction * n_ones)
        n_keep = n_ones - n_drop
        score_w = weight.abs().float().masked_fill(~mask, -1.0)
        score_g = grad.abs().float()
        nonzero = int((score_w > 0).sum())
        if nonzero < n_keep:
            n_keep, n_drop = nonzero, n_ones - nonzero
        ablated = torch.zeros(rows, dtype=torch.bool, device=mask.device)
        if self.ablation and name != self.head:
            k0 = self.fan_in(name, cols, rows)
            ablated = neurons_to_ablate(score_w, score_g, n_keep, n_drop, max(1, int(self.gamma_sal * k0)),
                                        math.ceil(self.targets[name] / cols))
        k = self.fan_in(name, cols, rows - int(ablated.sum()))
        candidates = mask & ~ablated.unsqueeze(1)
        keep = top_mask(score_w.masked_fill(~candidates, -1.0), min(n_keep, int(candidates.sum()))) & candidates
        keep &= row_top_mask(score_w.masked_fill(~keep, -1.0), k)
        need = (k - keep.sum(dim=1)).masked_fill(ablated, 0)
        grow = row_top_mask(score_g.masked_fill(keep, -1.0), need) & ~keep
        return keep | grow

    def inference_linear(self, linear: nn.Linear, mask: Tensor) -> nn.Module:
        weight = CondensedWeight.from_mask(linear.weight.detach(), mask, linear.bias)
        return CondensedLinear(weight, self.impl)
