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
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstbench.errors import UserError
from dstbench.kernels import ops
from dstbench.kernels.formats import DiagonalWeight

SELECTIONS = ("all", "topk")


def check_selection(selection: str) -> str:
    """``selection`` if it is one of SELECTIONS; UserError otherwise."""
    if selection not in SELECTIONS:
        raise UserError(f"dynadiag: selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    return selection


_SCRATCH = threading.local()


def _scratch(slot: str, shape: tuple[int, int], like: Tensor) -> Tensor:
    """A buffer reused per thread, slot, shape, dtype and device: a fresh multi-megabyte CPU tensor
    costs a page fault per 4 KiB page on first touch, more than filling it. Only for use within one call."""
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (slot, shape, like.dtype, like.device)
    if key not in cache:
        cache[key] = like.new_empty(shape)
    return cache[key]


def _rolled_gated(values_t: Tensor, gates: Tensor) -> Tensor:
    """The (D, P) view R with R[j, r] = V.T[j, (r - j) mod P] * a~[(r - j) mod P]: W (out < in) or W.T (out >= in).

    Row j of W (or W.T) is row j of the transposed diagonals rolled by j (the
    authors' geometry). The gated rows are written twice side by side (into a
    scratch buffer), and the roll of row j is the contiguous slice
    [P - j, 2P - j): a strided view with a unit inner stride, which BLAS reads as it is.
    """
    d, p = values_t.shape
    doubled = _scratch("rolled", (d, 2 * p), values_t)
    torch.mul(values_t, gates, out=doubled[:, :p])
    doubled[:, p:].copy_(doubled[:, :p])
    return doubled.as_strided((d, p), (2 * p - 1, 1), p)


def _unrolled(grad_rolled: Tensor) -> Tensor:
    """The adjoint of the roll: G (D, P) -> the (D, P) view U with U[j, s] = G[j, (s + j) mod P] (scratch)."""
    d, p = grad_rolled.shape
    doubled = _scratch("unrolled", (d, 2 * p), grad_rolled)
    doubled[:, :p].copy_(grad_rolled)
    doubled[:, p:].copy_(grad_rolled)
    return doubled.as_strided((d, p), (2 * p + 1, 1), 0)


class _AllDiagonalsLinear(torch.autograd.Function):
    """y = x @ W.T with W assembled from all P diagonals scaled by their gates; one GEMM each way.

    The diagonals come transposed, ``values_t`` (D, P), with the gates (P,).
    For out >= in the rolled view is W.T (in, out), else W (out, in); the
    weight gradient is computed in that same orientation (x.T @ dy or
    dy.T @ x), so no P x D matrix is ever transposed. The rolled weight is
    rebuilt in the backward rather than kept, so that the scratch buffers
    are only used within one call.
    """

    @staticmethod
    def forward(ctx, x: Tensor, values_t: Tensor, gates: Tensor, tall: bool) -> Tensor:
        rolled = _rolled_gated(values_t, gates)
        ctx.save_for_backward(x, values_t, gates)
        ctx.tall = tall
        return x @ rolled if tall else x @ rolled.t()

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, values_t, gates = ctx.saved_tensors
        dx = dv = dg = None
        if ctx.needs_input_grad[0]:
            rolled = _rolled_gated(values_t, gates)
            dx = dy @ rolled.t() if ctx.tall else dy @ rolled
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            scaled_grad = _unrolled(x.t() @ dy if ctx.tall else dy.t() @ x)
            dv = scaled_grad * gates if ctx.needs_input_grad[1] else None
            if ctx.needs_input_grad[2]:
                product = _scratch("rolled", (values_t.shape[0], 2 * values_t.shape[1]), values_t)[:, : values_t.shape[1]]
                dg = torch.mul(scaled_grad, values_t, out=product).sum(dim=0)
        return dx, dv, dg, None


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
        check_selection(selection)
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
        # (P, D) stored column-major, so that values.t() is a contiguous (D, P) for the dense assembly
        self.values = nn.Parameter(torch.empty(d, p, dtype=values.dtype, device=device).t().copy_(values))
        self.alpha = nn.Parameter(torch.full((p,), 1.0 / p, device=device, dtype=values.dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=values.dtype)) if bias else None
        self.register_buffer("tie_order", tie_order.to(device=device, dtype=torch.int64).clone())
        self.register_buffer("frozen_offsets", torch.zeros(k, dtype=torch.int64, device=device))

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
        vals = self.values.t().index_select(1, offsets).t()  # its gradient keeps the parameter's layout
        if self.is_frozen:
            return vals
        return vals * self.gates().index_select(0, offsets).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        if not self.is_frozen and self.selection == "all":
            y = _AllDiagonalsLinear.apply(x.reshape(-1, self.in_features), self.values.t(), self.gates(),
                                          self.out_features >= self.in_features)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
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
