"""Pure-torch reference implementations: the test oracle, and the fallback.

They run on any device and dtype, and are differentiable through autograd.
``x`` is always (B, in) and the result (B, out); no bias is added here.
``self_attention`` is torch's own attention on a packed qkv projection, the
definition the CPU attention kernel is held to; ``gelu`` and
``add_layer_norm`` are torch's GELU and LayerNorm, the definitions of the
CPU row-wise kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dstbench.kernels.formats import diagonal_coords


def diag_mm(x: Tensor, offsets: Tensor, values: Tensor, out_features: int, transpose: bool = False) -> Tensor:
    """y = x @ W.T for the diagonal weight W (offsets (K,), values (K, D)).

    With ``transpose=True``, W has shape (x.shape[1], out_features) and
    y = x @ W: the input gradient of the forward product. For non-square W
    this equals the forward product on the transposed shape, but for a square
    W it does not (the transpose of a square W's diagonal s is its diagonal
    P - s), so every backend takes the flag.

    Args:
        x: (B, in).
    Returns:
        (B, out_features).
    """
    if transpose:
        rows, cols = diagonal_coords(offsets, x.shape[1], out_features)
        rows, cols = cols, rows
    else:
        rows, cols = diagonal_coords(offsets, out_features, x.shape[1])
    y = x.new_zeros(x.shape[0], out_features)
    return y.index_add(1, rows.flatten(), x[:, cols.flatten()] * values.flatten())


def diag_values_grad(dy: Tensor, x: Tensor, offsets: Tensor) -> Tensor:
    """dV[k, j] = sum_b dy[b, row(k, j)] * x[b, col(k, j)]: the SDDMM on the diagonals.

    Args:
        dy: (B, out); x: (B, in); offsets: (K,).
    Returns:
        (K, D), in the dtype of x.
    """
    rows, cols = diagonal_coords(offsets, dy.shape[1], x.shape[1])
    return torch.einsum("bkd,bkd->kd", dy[:, rows], x[:, cols])


def condensed_mm(x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int) -> Tensor:
    """y[b, active_rows[i]] = sum_j values[i, j] * x[b, indices[i, j]]; other columns are 0.

    Args:
        x: (B, in); values, indices: (n_active, k); active_rows: (n_active,).
    Returns:
        (B, out_features).
    """
    gathered = x[:, indices.long()]  # (B, n_active, k)
    y_active = (gathered * values).sum(dim=2)
    y = x.new_zeros(x.shape[0], out_features)
    return y.index_copy(1, active_rows.long(), y_active)


def condensed_values_grad(dy: Tensor, x: Tensor, indices: Tensor, active_rows: Tensor) -> Tensor:
    """dValues[i, j] = sum_b dy[b, active_rows[i]] * x[b, indices[i, j]].

    Returns:
        (n_active, k).
    """
    return torch.einsum("bi,bij->ij", dy[:, active_rows.long()], x[:, indices.long()])


def condensed_input_grad(dy: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int) -> Tensor:
    """dx[b, c] = sum over (i, j) with indices[i, j] == c of values[i, j] * dy[b, active_rows[i]].

    Returns:
        (B, in_features).
    """
    contrib = dy[:, active_rows.long()].unsqueeze(2) * values  # (B, n_active, k)
    dx = dy.new_zeros(dy.shape[0], in_features)
    return dx.index_add(1, indices.long().flatten(), contrib.flatten(1))


def self_attention(qkv: Tensor, num_heads: int, dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(dh)) v per head by ``F.scaled_dot_product_attention``, dropout_p on the weights.

    Args:
        qkv: (B, T, 3 D), each token's q, k and v side by side, each as ``num_heads`` heads of D / num_heads.
    Returns:
        (B, T, D), the heads of each token side by side.
    """
    b, t, width = qkv.shape
    d = width // 3
    q, k, v = qkv.reshape(b, t, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p).transpose(1, 2).reshape(b, t, d)


def gelu(x: Tensor) -> Tensor:
    """torch's exact (erf) GELU of x, any shape; contiguous, like the CPU kernel's (and the operator's fake)."""
    return F.gelu(x.contiguous())


def add_layer_norm(a: Tensor, b: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """s = a + b and ``F.layer_norm`` of s over its last dimension (D) with weight and bias (D,); returns (s, y),
    contiguous."""
    s = (a + b).contiguous()
    return s, F.layer_norm(s, s.shape[-1:], weight, bias, eps)
