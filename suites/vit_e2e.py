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


def with_linear_qkv(model: VisionTransformer) -> VisionTransformer:
    """Replace, in place, the attention of every encoder block of a torchvision ViT by ``LinearQKVAttention``."""
    for block in model.encoder.layers:
        block.self_attention = LinearQKVAttention.from_mha(block.self_attention)
    return model


def vit_b16(seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Randomly initialized ViT-B/16 (no download) in eval mode, with ``LinearQKVAttention`` in every block."""
    from torchvision.models import vit_b_16  # noqa: PLC0415  (torchvision takes a second to import)

    torch.manual_seed(seed)
    return with_linear_qkv(vit_b_16(weights=None)).to(device=device, dtype=dtype).eval()


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
