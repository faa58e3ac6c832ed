"""Sparse weight formats for an ``nn.Linear`` with weight ``W`` of shape (out, in).

Diagonal geometry (the DynaDiag authors' convention):

* ``P = max(out, in)`` candidate diagonals, each of length ``D = min(out, in)``;
* if ``out >= in``, diagonal ``s`` holds ``W[(j + s) % out, j]`` for j in [0, D);
* otherwise it holds ``W[j, (j + s) % in]`` for j in [0, D);
* the P diagonals tile W exactly. For a non-square W, diagonal ``s`` of
  ``W.T`` holds the same entries, in the same order, as diagonal ``s`` of W;
  for a square W it does not (both shapes use the ``out >= in`` rule), which
  is why the kernels take an explicit ``transpose`` flag for the input
  gradient instead of re-reading the geometry.

Condensed format (SRigL's constant fan-in): every active row keeps exactly
``k`` weights; ablated rows are dropped and produce ``bias`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dstbench.errors import UserError


def num_diagonals(out_features: int, in_features: int, sparsity: float) -> int:
    """K, the diagonals a layer keeps at ``sparsity``, as the DynaDiag authors compute it.

    ``K = max(1, ceil(int((1 - sparsity) * out * in) / D))`` with D = min(out, in)
    (``TempSoftmaxDiagLinear`` of the authors' ``MLP/linear_softmax.py``), so
    K * D >= the kept-weight budget; K is at most P = max(out, in).
    """
    budget = int((1.0 - sparsity) * out_features * in_features)
    k = math.ceil(budget / min(out_features, in_features))
    return max(1, min(max(out_features, in_features), k))


def diagonal_coords(offsets: Tensor, out_features: int, in_features: int) -> tuple[Tensor, Tensor]:
    """Row and column of every entry of the given diagonals.

    Args:
        offsets: (K,) integer diagonal ids in [0, P).
    Returns:
        rows, cols: (K, D) int64 tensors; entry ``[k, j]`` of diagonal
        ``offsets[k]`` sits at ``W[rows[k, j], cols[k, j]]``.
    """
    d = min(out_features, in_features)
    j = torch.arange(d, device=offsets.device)
    s = offsets.to(torch.int64).unsqueeze(1)
    if out_features >= in_features:
        rows = (j + s) % out_features
        cols = j.expand_as(rows)
    else:
        cols = (j + s) % in_features
        rows = j.expand_as(cols)
    return rows.contiguous(), cols.contiguous()


def _check_linear_shape(out_features: int, in_features: int) -> None:
    if out_features < 1 or in_features < 1:
        raise UserError(f"a linear layer needs out, in >= 1, got out={out_features}, in={in_features}")


@dataclass
class DiagonalWeight:
    """K active diagonals of an (out, in) weight.

    Attributes:
        offsets: (K,) int64 diagonal ids in [0, P), strictly increasing.
        values: (K, D) floating values; ``values[k, j]`` is entry j of diagonal offsets[k].
        out_features, in_features: the dense shape.
        bias: (out,) or None.
    """

    offsets: Tensor
    values: Tensor
    out_features: int
    in_features: int
    bias: Tensor | None = None

    def __post_init__(self) -> None:
        _check_linear_shape(self.out_features, self.in_features)
        p, d = max(self.out_features, self.in_features), min(self.out_features, self.in_features)
        if self.offsets.dim() != 1 or self.values.dim() != 2:
            raise UserError("diagonal format needs offsets of shape (K,) and values of shape (K, D)")
        if self.values.shape != (self.offsets.numel(), d):
            raise UserError(
                f"diagonal values must have shape (K, D) = ({self.offsets.numel()}, {d}) "
                f"for a ({self.out_features}, {self.in_features}) weight, got {tuple(self.values.shape)}"
            )
        if self.offsets.numel() and (int(self.offsets.min()) < 0 or int(self.offsets.max()) >= p):
            raise UserError(f"diagonal offsets must lie in [0, {p}) for a ({self.out_features}, {self.in_features}) weight")

    @property
    def k(self) -> int:
        return self.offsets.numel()

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def to_dense(self) -> Tensor:
        """The (out, in) dense weight these diagonals stand for."""
        rows, cols = diagonal_coords(self.offsets, self.out_features, self.in_features)
        w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        w[rows, cols] = self.values
        return w

    @classmethod
    def from_dense(cls, weight: Tensor, offsets: Tensor, bias: Tensor | None = None) -> "DiagonalWeight":
        """Gather the given diagonals out of a dense (out, in) weight."""
        out_f, in_f = weight.shape
        offsets = torch.sort(offsets.to(torch.int64).to(weight.device)).values
        rows, cols = diagonal_coords(offsets, out_f, in_f)
        return cls(offsets, weight[rows, cols].contiguous(), out_f, in_f, bias)

    @classmethod
    def top_k(cls, weight: Tensor, sparsity: float, bias: Tensor | None = None) -> "DiagonalWeight":
        """Keep the K diagonals of largest L2 norm (K from ``num_diagonals``)."""
        out_f, in_f = weight.shape
        p = max(out_f, in_f)
        all_offsets = torch.arange(p, device=weight.device)
        rows, cols = diagonal_coords(all_offsets, out_f, in_f)
        norms = weight[rows, cols].float().norm(dim=1)
        keep = torch.topk(norms, num_diagonals(out_f, in_f, sparsity)).indices
        return cls.from_dense(weight, keep, bias)


def index_dtype(in_features: int) -> torch.dtype:
    """int16 column indices where they fit, else int32."""
    return torch.int16 if in_features <= torch.iinfo(torch.int16).max else torch.int32


@dataclass
class CondensedWeight:
    """Constant fan-in weight: each active row keeps exactly k columns.

    Attributes:
        values: (n_active, k) floating values.
        indices: (n_active, k) int16/int32 column ids in [0, in).
        active_rows: (n_active,) int64 row ids in [0, out), strictly increasing.
        out_features, in_features: the dense shape.
        bias: (out,) or None. Ablated rows output bias (or zero).
    """

    values: Tensor
    indices: Tensor
    active_rows: Tensor
    out_features: int
    in_features: int
    bias: Tensor | None = None

    def __post_init__(self) -> None:
        _check_linear_shape(self.out_features, self.in_features)
        if self.values.dim() != 2 or self.values.shape != self.indices.shape:
            raise UserError("condensed format needs values and indices of the same shape (n_active, k)")
        if self.active_rows.shape != (self.values.shape[0],):
            raise UserError("condensed format needs one active row id per row of values")
        if self.values.shape[1] > self.in_features:
            raise UserError(f"fan-in k={self.values.shape[1]} exceeds in_features={self.in_features}")

    @property
    def k(self) -> int:
        return self.values.shape[1]

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def to_dense(self) -> Tensor:
        """The (out, in) dense weight, zero in ablated rows."""
        w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        rows = self.active_rows.unsqueeze(1).expand_as(self.indices)
        w[rows, self.indices.long()] = self.values
        return w

    @classmethod
    def from_mask(cls, weight: Tensor, mask: Tensor, bias: Tensor | None = None) -> "CondensedWeight":
        """Condense a masked weight whose non-empty rows all have the same fan-in.

        Raises:
            UserError: if the active rows of ``mask`` differ in fan-in.
        """
        out_f, in_f = weight.shape
        mask = mask.bool()
        fan_in = mask.sum(dim=1)
        active = torch.nonzero(fan_in > 0).flatten()
        k = int(fan_in[active[0]]) if active.numel() else 0
        if active.numel() and bool((fan_in[active] != k).any()):
            raise UserError("condensed format needs the same fan-in in every active row (SRigL's constraint)")
        # stable sort puts the kept columns first, in increasing column order
        order = torch.sort((~mask[active]).to(torch.uint8), dim=1, stable=True).indices[:, :k]
        values = weight[active].gather(1, order).contiguous()
        return cls(values, order.to(index_dtype(in_f)).contiguous(), active.to(torch.int64), out_f, in_f, bias)

    @classmethod
    def top_k(cls, weight: Tensor, sparsity: float, bias: Tensor | None = None) -> "CondensedWeight":
        """Keep the k = round((1 - sparsity) * in) largest-|w| weights of every row (no ablation)."""
        out_f, in_f = weight.shape
        k = max(1, min(in_f, round((1.0 - sparsity) * in_f)))
        keep = torch.topk(weight.abs(), k, dim=1).indices
        mask = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, keep, True)
        return cls.from_mask(weight, mask, bias)
