"""DynaDiag's training layer: P candidate diagonals, each with its values and a learned importance.

For a weight of shape (out, in): P = max(out, in) candidate diagonals of
length D = min(out, in) (geometry in ``kernels.formats``); they tile W
exactly. Parameters, as in the authors' ``TempSoftmaxDiagLinear``
(``MLP/linear_softmax.py`` of horizon-research/DynaDiag): ``values`` (P, D),
Kaiming-uniform over (P, D) (a = sqrt(5), so U(-1/sqrt(D), 1/sqrt(D))),
``alpha`` (P,) = 1/P, and ``bias`` (out,) = 0 when the layer has one.

Before the freeze the soft top-K gates a~ = min(K * softmax(alpha / T), 1)
scale the diagonals, and which ones are computed depends on ``selection``:

* ``"all"`` (default, the authors' rule): every one of the P diagonals is
  computed, scaled by its gate, so every alpha and every value gets its own
  gradient from the data and the selection is learned. The layer assembles
  the dense W = scatter(values * a~) with one gather and calls one GEMM, so a
  step costs as much as a dense layer's.
* ``"topk"``: only the K diagonals of largest alpha are computed, through
  the sparse kernels. The other P - K diagonals get no values gradient and
  their alphas move only through the softmax normalisation, so this does
  NOT learn which diagonals to use: the selection stays near its random
  start. Kept as a cheaper, named deviation.

``freeze`` keeps the K diagonals of largest alpha (the authors'
``freeze_topk``); from then on their gates are 1, alpha is no longer used
(``requires_grad`` False) and forward, input gradient and values gradient
run on the K diagonals only, through ``ops.diag_mm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstbench.errors import UserError
from dstbench.kernels import ops
from dstbench.kernels.formats import DiagonalWeight, diagonal_coords

SELECTIONS = ("all", "topk")


class _DiagonalsToDense(torch.autograd.Function):
    """W (out, in) from all P diagonals (P, D): a permutation, so forward and backward are both one gather."""

    @staticmethod
    def forward(ctx, values: Tensor, to_dense: Tensor, to_diagonals: Tensor, shape: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(to_diagonals)
        ctx.values_shape = values.shape
        return values.reshape(-1).index_select(0, to_dense).view(shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (to_diagonals,) = ctx.saved_tensors
        return grad.reshape(-1).index_select(0, to_diagonals).view(ctx.values_shape), None, None, None


class DiagonalTrainLinear(nn.Module):
    """Trainable K-of-P diagonal linear layer (DynaDiag).

    Args:
        out_features, in_features: the dense shape.
        k: the number of diagonals kept at the freeze, in [1, P].
        tie_order: (P,) int64 permutation of range(P); among equal alphas the diagonal listed first wins.
        selection: "all" (the authors' rule) or "topk" (K diagonals only; does not learn the selection).
        bias: whether the layer has a bias.
        impl: kernel implementation for ``ops.diag_mm``.
        generator: the RNG of the Kaiming-uniform initialisation of ``values``.
    """

    def __init__(self, out_features: int, in_features: int, k: int, tie_order: Tensor, *, selection: str = "all",
                 bias: bool = True, impl: str = "auto", generator: torch.Generator | None = None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if selection not in SELECTIONS:
            raise UserError(f"dynadiag: selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
        self.out_features, self.in_features = out_features, in_features
        p, d = max(out_features, in_features), min(out_features, in_features)
        if not 1 <= k <= p:
            raise UserError(f"dynadiag: k must be in [1, {p}] for a {out_features}x{in_features} layer, got {k}")
        self.k = k
        self.selection = selection
        self.impl = impl
        self.temperature = 1.0
        self.is_frozen = False
        values = torch.empty(p, d, dtype=dtype or torch.get_default_dtype())
        nn.init.kaiming_uniform_(values, a=math.sqrt(5), generator=generator)
        self.values = nn.Parameter(values.to(device))
        self.alpha = nn.Parameter(torch.full((p,), 1.0 / p, device=device, dtype=values.dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=values.dtype)) if bias else None
        self.register_buffer("tie_order", tie_order.to(device=device, dtype=torch.int64).clone())
        self.register_buffer("frozen_offsets", torch.zeros(k, dtype=torch.int64, device=device))
        rows, cols = diagonal_coords(torch.arange(p, device=device), out_features, in_features)
        to_diagonals = (rows * in_features + cols).reshape(-1)
        to_dense = torch.empty_like(to_diagonals)
        to_dense[to_diagonals] = torch.arange(to_diagonals.numel(), device=device)
        self.register_buffer("to_diagonals", to_diagonals, persistent=False)
        self.register_buffer("to_dense", to_dense, persistent=False)

    @property
    def num_candidates(self) -> int:
        """P = max(out, in)."""
        return self.values.shape[0]

    def gates(self) -> Tensor:
        """(P,) soft top-K gates a~ = min(K * softmax(alpha / T), 1), differentiable in alpha."""
        return torch.clamp(self.k * F.softmax(self.alpha / self.temperature, dim=0), max=1.0)

    def offsets(self) -> Tensor:
        """(K,) increasing ids of the kept diagonals: the frozen ones, or the K largest alpha."""
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

    def dense_weight(self) -> Tensor:
        """(out, in) W with every diagonal scaled by its gate; differentiable in values and alpha."""
        scaled = self.values * self.gates().unsqueeze(1)
        return _DiagonalsToDense.apply(scaled, self.to_dense, self.to_diagonals, (self.out_features, self.in_features))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        if not self.is_frozen and self.selection == "all":
            return F.linear(x, self.dense_weight(), self.bias)
        offsets = self.offsets()
        y = ops.diag_mm(x, offsets, self.effective_values(offsets), self.out_features, self.impl)
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def freeze(self, fold_gates: bool = False) -> Tensor:
        """Keep the K diagonals of largest alpha, set their gates to 1, stop alpha; returns the offsets.

        ``fold_gates=True`` first multiplies the kept values by their gates, so
        that the function does not jump at the freeze (the authors' code does not).
        """
        offsets = self.offsets()
        if fold_gates:
            self.values[offsets] *= self.gates()[offsets].unsqueeze(1)
        self.frozen_offsets.copy_(offsets)
        self.is_frozen = True
        self.alpha.requires_grad_(False)
        return offsets

    @torch.no_grad()
    def to_weight(self) -> DiagonalWeight:
        """The K kept diagonals in the diagonal format, with their gates (the inference weight)."""
        offsets = self.offsets()
        bias = None if self.bias is None else self.bias.detach().clone()
        return DiagonalWeight(offsets.clone(), self.effective_values(offsets).clone(), self.out_features,
                              self.in_features, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
                f"candidates={self.num_candidates}, selection={self.selection}, frozen={self.is_frozen}")
