"""SET (Mocanu et al., Nature Communications 2018): magnitude drop, random regrowth; inference through CSR.

As the authors' released code runs it (``rewireMask`` and ``weightsEvolution``
of ``SET-MLP-Keras-Weights-Mask/set_mlp_keras_cifar10.py`` in
dcmocanu/sparse-evolutionary-artificial-neural-networks):

* the sparse layers start from an Erdos-Renyi mask, density proportional to
  (in + out) / (in * out) (``distribution="erk"``, which is ER for linear
  layers), scaled to the sparsity budget; the classifier head stays dense;
* at every update, of the active weights the zeta fraction of the negative
  ones closest to zero and of the positive ones closest to zero are removed,
  with the code's exact counts: n_neg - int((1 - zeta) * n_neg) negatives and
  int(zeta * n_pos) + 1 positives (``largestNegative``/``smallestPositive``
  with strict comparisons);
* as many connections are regrown uniformly at random among the positions not
  kept (a removed one may come back), so the layer keeps its budget; new
  weights start at 0 (``w * weightMaskCore``);
* zeta = 0.3 stays constant (no cosine decay) and the rewiring continues to
  the end of training (``t_end = 1.0``).

Deviations (README): the authors rewire once per epoch, dstbench every
``delta_t`` optimizer steps (set it to the steps of an epoch); the initial mask
holds exactly the layer's budget (the authors draw each weight independently);
the authors recreate the optimizer every epoch, dstbench resets the optimizer
state of the regrown weights only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dstbench.methods.mask_training import PruneAndGrow
from dstbench.methods.rigl import UnstructuredCSR
from dstbench.methods.schedules import UpdateSchedule
from dstbench.registry import register_method


def set_kept(weight: Tensor, mask: Tensor, zeta: float) -> Tensor:
    """Boolean (out, fan_in): the active weights SET keeps (the rest of the negative and positive tails near 0).

    Args:
        weight: (out, fan_in) weights, zero outside ``mask``.
        mask: boolean, the active positions.
        zeta: the fraction removed from each sign.
    """
    values = weight[mask]
    negative, positive = values[values < 0].sort().values, values[values > 0].sort().values
    keep = torch.zeros_like(mask)
    n_neg_kept = int((1 - zeta) * negative.numel())
    if n_neg_kept:
        keep |= mask & (weight < negative[n_neg_kept])  # the code's largestNegative, strictly below
    n_pos_dropped = int(zeta * positive.numel()) + 1
    if n_pos_dropped < positive.numel():
        keep |= mask & (weight > positive[n_pos_dropped - 1])  # the code's smallestPositive, strictly above
    return keep


@register_method("set")
class SET(UnstructuredCSR, PruneAndGrow):
    """Sparse Evolutionary Training: drop the weights closest to zero, regrow at random; inference format CSR.

    Options: those of the RigL family, with SET's defaults: ``drop_fraction`` is zeta (0.3, constant),
    ``t_end`` 1.0 (rewire until the end).
    """

    display_name, color, marker, order = "SET (CSR)", "#CC79A7", "v", 15
    default_sparse_head = False

    def __init__(self, sparsity: float = 0.9, *, t_end: float = 1.0, **options: Any) -> None:
        super().__init__(sparsity, t_end=t_end, **options)

    def update_schedule(self) -> UpdateSchedule:
        return UpdateSchedule(self.delta_t, int(self.t_end * self._require_total_steps()), self.drop_fraction,
                              cosine=False)

    def update_mask(self, name: str, weight: Tensor, grad: Tensor, mask: Tensor, drop_fraction: float) -> Tensor:
        keep = set_kept(weight.float(), mask, drop_fraction)
        free = (~keep).flatten().nonzero().squeeze(1)
        n_grow = min(self.targets[name] - int(keep.sum()), free.numel())
        chosen = free[torch.randperm(free.numel(), generator=self.generator)[:n_grow].to(free.device)]
        grow = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
        grow[chosen] = True
        return keep | grow.view_as(mask)
