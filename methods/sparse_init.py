"""Sparse re-initialisation of masked weights, as SRigL's authors run it (``use_sparse_initialization``).

``grad_flow``: the authors' ``grad_flow_init`` (``rigl_torch/utils/sparse_init.py``
of calgaryml/condensed-sparsity), after Evci et al. "Gradient Flow in Sparse
Neural Networks": every neuron (row; for a conv, a filter) with fan-in
f > 0 active connections is redrawn from ``normal_(0, 2 / f)``, and rows with
no active connection are zero. Note that torch's ``normal_`` takes a standard
deviation, so the authors' code draws with std 2/f (the paper's rule is
variance 2/f); we follow the code.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPARSE_INITS = ("none", "grad_flow")


@torch.no_grad()
def grad_flow_init_(weight: Tensor, mask: Tensor, generator: torch.Generator) -> None:
    """Redraw ``weight`` (out, ...) in place: row r ~ N(0, std = 2 / fan_in_r) on the mask, 0 elsewhere.

    Args:
        weight: the layer's weight, (out, in) or (out, in, kh, kw).
        mask: boolean, same shape.
        generator: CPU generator of the draw (the same on every rank).
    """
    rows = weight.shape[0]
    fan_in = mask.reshape(rows, -1).sum(dim=1).to("cpu", torch.float64)  # the draw is on the CPU generator
    std = torch.where(fan_in > 0, 2.0 / fan_in.clamp(min=1), torch.zeros_like(fan_in))
    draw = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
    draw *= std.view(rows, *([1] * (weight.dim() - 1)))
    weight.copy_(draw.to(weight.device, weight.dtype) * mask)
