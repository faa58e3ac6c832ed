"""The end-to-end model of the inference suite: torchvision ViT-B/16 with every encoder linear in a sparse format.

torchvision's encoder blocks hold an ``nn.MultiheadAttention`` whose qkv
projection is a bare ``in_proj_weight`` parameter, not an ``nn.Linear``. Each
block's attention is therefore replaced by ``LinearQKVAttention``, which
computes the same function with ``qkv = nn.Linear(768, 2304)`` and
``out_proj = nn.Linear(768, 768)`` (same weights). Every encoder linear is
then converted by the method: per block qkv, out_proj, mlp fc1 (768->3072)
and mlp fc2 (3072->768), 48 layers in all. The patch embedding (a conv) and
the classifier head stay dense.

For inference the attention of every block is ``ops.self_attention``: on
float32 CPU tensors the compiled kernel of ``kernels/cpu/attention.cpp``
(395 against 810 us per block for torch's scaled_dot_product_attention, ViT-B/16
at one image, 2 threads, AMD EPYC Zen 5), elsewhere torch's own. It is part of
every model of the case, dense and sparse alike, so the speedups end to end
are not diluted by a slow attention that no deployment would keep.
Likewise the encoder is a ``FusedRowsEncoder``: for inference its GELUs are
``ops.gelu`` and each residual add is fused with the LayerNorm that reads it
(``ops.add_layer_norm``; kernels/cpu/rowwise.cpp on float32 CPU tensors).
Measured (2 threads, AMD EPYC Zen 4, ViT-B/16 at one image, 41 interleaved
forwards, two runs): 68.6 -> 66.1 and 78.8 -> 76.0 ms per forward with
DynaDiag's linears at 90%, 71.6 -> 70.8 and 89.5 -> 87.3 ms with SRigL's,
228.2 -> 224.6 and 247.5 -> 246.6 ms with oneDNN's dense ones.

The dense model is timed in each of the inference suite's dense
implementations (``with_encoder_linears``): torch's default linear, and
every encoder linear through oneDNN or OpenBLAS, so that end to end too a
speedup is against the fastest dense model the machine runs.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from dstbench.kernels import ops, reference
from dstbench.methods.base import SparsityMethod
from dstbench.suites import dense_baselines

if TYPE_CHECKING:
    from torchvision.models import VisionTransformer

#: input of one image, (batch, channels, height, width)
IMAGE_SHAPE = (1, 3, 224, 224)


class LinearQKVAttention(nn.Module):
    """Batch-first self-attention equal to ``nn.MultiheadAttention``, with the qkv projection as an ``nn.Linear``.

    In training, or where a gradient is wanted, the attention itself is torch's
    ``scaled_dot_product_attention``; for inference it is ``ops.self_attention``,
    the compiled CPU kernel on float32 CPU tensors (twice as fast as torch's on
    ViT-B/16, kernels/cpu/attention.cpp) and torch's elsewhere. Every model of
    the end-to-end case, the dense ones included, runs the same attention.

    Args:
        embed_dim: D, the token width.
        num_heads: H; D must be divisible by H.
        dropout: attention dropout probability (used in training mode only).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "LinearQKVAttention":
        """The same attention as a batch-first ``mha`` with packed qkv weights and biases."""
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_bias is not None) or mha.bias_k is not None:
            raise ValueError("only batch-first MultiheadAttention with packed, biased qkv and no bias_k/bias_v is supported")
        if mha.add_zero_attn:
            raise ValueError("MultiheadAttention with add_zero_attn is not supported")
        attn = cls(mha.embed_dim, mha.num_heads, mha.dropout)
        with torch.no_grad():
            attn.qkv.weight.copy_(mha.in_proj_weight)
            attn.qkv.bias.copy_(mha.in_proj_bias)
            attn.out_proj.weight.copy_(mha.out_proj.weight)
            attn.out_proj.bias.copy_(mha.out_proj.bias)
        return attn.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool = False) -> tuple[Tensor, None]:
        """Self-attention of x = query = key = value, shape (B, T, D); returns ((B, T, D), None)."""
        if key is not query or value is not query:
            raise ValueError("LinearQKVAttention computes self-attention only (query, key and value must be the same tensor)")
        if need_weights:
            raise ValueError("LinearQKVAttention does not return attention weights")
        qkv = self.qkv(query)
        if self.training or (torch.is_grad_enabled() and qkv.requires_grad):
            y = reference.self_attention(qkv, self.num_heads, self.dropout if self.training else 0.0)
        else:
            y = ops.self_attention(qkv, self.num_heads)
        return self.out_proj(y), None


class FusedRowsEncoder(nn.Module):
    """torchvision's ViT ``Encoder`` (same submodules and parameter names) whose inference fuses its row-wise ops.

    For inference (eval mode, no gradient wanted) each residual add and the
    LayerNorm that reads it are one ``ops.add_layer_norm`` (the embedding plus
    the position embedding and ln_1 of block 0; x + attention and ln_2; x + MLP
    and the next block's ln_1, or the final ln), and the MLP's GELU is
    ``ops.gelu``. Otherwise it computes torchvision's forward. Dropout is the
    identity in eval mode, so the two agree to float rounding.

    Args:
        encoder: a torchvision ``Encoder`` whose blocks have ``LinearQKVAttention`` (``with_linear_qkv``) and
            the MLP (Linear, exact GELU, Dropout, Linear, Dropout).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        for block in encoder.layers:
            mlp = block.mlp
            if not isinstance(block.self_attention, LinearQKVAttention):
                raise ValueError("FusedRowsEncoder needs LinearQKVAttention in every block (run with_linear_qkv first)")
            if len(mlp) != 5 or not isinstance(mlp[1], nn.GELU) or mlp[1].approximate != "none":
                raise ValueError("FusedRowsEncoder needs MLP blocks of Linear, GELU (exact), Dropout, Linear, Dropout")
        self.pos_embedding = encoder.pos_embedding
        self.dropout = encoder.dropout
        self.layers = encoder.layers
        self.ln = encoder.ln
        self.train(encoder.training)

    def forward(self, x: Tensor) -> Tensor:
        """The encoded tokens (B, T, D) of the embedded tokens x (B, T, D)."""
        if self.training or (torch.is_grad_enabled() and (x.requires_grad or self.pos_embedding.requires_grad)):
            return self.ln(self.layers(self.dropout(x + self.pos_embedding)))
        blocks = list(self.layers)
        norms = [block.ln_1 for block in blocks[1:]] + [self.ln]
        first = blocks[0].ln_1
        s, h = ops.add_layer_norm(x, self.pos_embedding.expand_as(x).contiguous(), first.weight, first.bias,
                                  first.eps)
        for block, norm in zip(blocks, norms):
            a, _ = block.self_attention(h, h, h)
            s, h = ops.add_layer_norm(s, a, block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
            m = block.mlp[3](ops.gelu(block.mlp[0](h)))
            s, h = ops.add_layer_norm(s, m, norm.weight, norm.bias, norm.eps)
        return h


def with_linear_qkv(model: VisionTransformer) -> VisionTransformer:
    """Replace, in place, the attention of every encoder block of a torchvision ViT by ``LinearQKVAttention``."""
    for block in model.encoder.layers:
        block.self_attention = LinearQKVAttention.from_mha(block.self_attention)
    return model


def with_fused_rows(model: VisionTransformer) -> VisionTransformer:
    """Replace, in place, the encoder of a torchvision ViT (after ``with_linear_qkv``) by ``FusedRowsEncoder``."""
    model.encoder = FusedRowsEncoder(model.encoder)
    return model


def vit_b16(seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Randomly initialized ViT-B/16 (no download) in eval mode, with ``LinearQKVAttention`` in every block and a
    ``FusedRowsEncoder``."""
    from torchvision.models import vit_b_16  # noqa: PLC0415  (torchvision takes a second to import)

    torch.manual_seed(seed)
    model = with_fused_rows(with_linear_qkv(vit_b_16(weights=None)))
    return model.to(device=device, dtype=dtype).eval()


def is_encoder_linear(name: str, layer: nn.Linear) -> bool:
    """The ``include`` filter of ``sparsify_model``: every linear of the encoder, not the head."""
    return name.startswith("encoder.")


def convert(model: nn.Module, method: SparsityMethod) -> nn.Module:
    """A copy of ``model`` with every encoder linear converted by ``method``."""
    return method.sparsify_model(copy.deepcopy(model), include=is_encoder_linear)


def with_encoder_linears(model: nn.Module, build: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """A copy of ``model`` with every encoder linear replaced by ``build(linear)`` (a dense implementation of
    ``suites.dense_baselines``, for the dense candidates of the end-to-end case)."""
    return dense_baselines.with_linears(model, build, is_encoder_linear)


def converted_layers(model: nn.Module) -> list[nn.Module]:
    """The converted encoder linears of a model returned by ``convert`` (48 for ViT-B/16)."""
    return [m for name, m in model.named_modules() if name.startswith("encoder.") and hasattr(m, "impl")]
