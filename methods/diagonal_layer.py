"""DynaDiag's training layer: P candidate diagonals with importances, K of them computed through the diagonal kernel.

For a weight of shape (out, in): P = max(out, in) candidate diagonals of
length D = min(out, in) (geometry in ``kernels.formats``). Parameters:
``values`` (P, D), the entries of every candidate diagonal (kept for all P,
as in the authors' code), ``alpha`` (P,), the importances, and ``bias``.

Forward, before the freeze: the soft top-K gates
a~ = min(K * softmax(alpha / T), 1); the K diagonals of largest alpha (ties
broken by a fixed random priority from the method's generator) are the only
ones computed: ``y = diag_mm(x, offsets, values[offsets] * a~[offsets, None])``
+ bias, so the forward, the input gradient and the values gradient run in
the sparse kernels, and alpha gets its gradient through a~. After ``freeze``
the K offsets are fixed, alpha is no longer used (``requires_grad`` False,
as in the authors' ``freeze_topk``) and the gates are 1; to keep the function
continuous, ``freeze`` folds the gates at that moment into the values
(``fold_gates=False`` gives the authors' literal jump to gate 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstbench.kernels import ops
from dstbench.kernels.formats import DiagonalWeight, diagonal_coords


class DiagonalTrainLinear(nn.Module):
    """Trainable K-of-P diagonal linear layer (DynaDiag).

    Args:
        out_features, in_features: the dense shape.
        k: number of diagonals computed, in [1, P].
        tie_order: (P,) int64 permutation of range(P); among equal alphas the diagonal listed first wins.
        bias: whether the layer has a bias.
        impl: kernel implementation for ``ops.diag_mm``.
    """

    def __init__(self, out_features: int, in_features: int, k: int, tie_order: Tensor, *, bias: bool = True,
                 impl: str = "auto", device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        p, d = max(out_features, in_features), min(out_features, in_features)
        self.k = k
        self.impl = impl
        self.temperature = 1.0
        self.is_frozen = False
        self.values = nn.Parameter(torch.zeros(p, d, device=device, dtype=dtype))
        self.alpha = nn.Parameter(torch.full((p,), 1.0 / p, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("tie_order", tie_order.to(device=device, dtype=torch.int64).clone())
        self.register_buffer("frozen_offsets", torch.zeros(k, dtype=torch.int64, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, k: int, tie_order: Tensor, impl: str = "auto") -> "DiagonalTrainLinear":
        """A layer whose P diagonals hold the entries of ``linear.weight`` (they tile it exactly)."""
        w = linear.weight.detach()
        layer = cls(linear.out_features, linear.in_features, k, tie_order, bias=linear.bias is not None, impl=impl,
                    device=w.device, dtype=w.dtype)
        rows, cols = diagonal_coords(torch.arange(layer.num_candidates, device=w.device), *w.shape)
        with torch.no_grad():
            layer.values.copy_(w[rows, cols])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    @property
    def num_candidates(self) -> int:
        """P = max(out, in)."""
        return self.values.shape[0]

    def gates(self) -> Tensor:
        """(P,) soft top-K gates a~ = min(K * softmax(alpha / T), 1), differentiable in alpha."""
        return torch.clamp(self.k * F.softmax(self.alpha / self.temperature, dim=0), max=1.0)

    def offsets(self) -> Tensor:
        """(K,) increasing ids of the computed diagonals: the frozen ones, or the K largest alpha."""
        if self.is_frozen:
            return self.frozen_offsets
        order = torch.argsort(self.alpha.detach()[self.tie_order], descending=True, stable=True)
        return torch.sort(self.tie_order[order[: self.k]]).values

    def effective_values(self, offsets: Tensor) -> Tensor:
        """(K, D) values of ``offsets`` times their gates (the gates are 1 once frozen)."""
        vals = self.values.index_select(0, offsets)
        if self.is_frozen:
            return vals
        return vals * self.gates().index_select(0, offsets).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        offsets = self.offsets()
        y = ops.diag_mm(x, offsets, self.effective_values(offsets), self.out_features, self.impl)
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def freeze(self, fold_gates: bool = True) -> Tensor:
        """Fix the current K offsets, stop alpha's gradient; returns the offsets."""
        offsets = self.offsets()
        if fold_gates:
            self.values[offsets] *= self.gates()[offsets].unsqueeze(1)
        self.frozen_offsets.copy_(offsets)
        self.is_frozen = True
        self.alpha.requires_grad_(False)
        return offsets

    @torch.no_grad()
    def to_weight(self) -> DiagonalWeight:
        """The current effective weight in the diagonal format."""
        offsets = self.offsets()
        bias = None if self.bias is None else self.bias.detach().clone()
        return DiagonalWeight(offsets.clone(), self.effective_values(offsets).clone(), self.out_features,
                              self.in_features, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
                f"candidates={self.num_candidates}, frozen={self.is_frozen}")
