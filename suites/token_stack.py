"""The token-stack case of the inference suite: ViT-B/16's 48 encoder linears applied in sequence to one token.

Per block (12): qkv 768->2304, proj 768->768, fc1 768->3072, fc2 3072->768,
about 340 MB of float32 dense weights, more than a core's caches hold: the
case times the linears as a model streams them, each read once per token,
rather than one layer whose weights stay cached. With a single token,
self-attention's output is the value vector (a softmax over one key is 1),
so a block computes

    x = x + proj(qkv(x)[..., 2D:3D])
    x = x + fc2(gelu(fc1(x)))

on x of shape (batch, D). ViT's LayerNorms are left out: they cost the same
in every format and hold no weights worth counting.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: case name -> (width D, MLP width, blocks)
STACKS = {"b16-stack": (768, 3072, 12)}


def source_linears(width: int, mlp: int, blocks: int, seed: int, device: torch.device,
                   dtype: torch.dtype) -> list[nn.Linear]:
    """The seeded nn.Linear layers of the stack, block by block: qkv (D->3D), proj (D->D), fc1 (D->M), fc2 (M->D)."""
    torch.manual_seed(seed)
    shapes = [(width, 3 * width), (width, width), (width, mlp), (mlp, width)] * blocks
    return [nn.Linear(fin, fout).to(device, dtype) for fin, fout in shapes]


class TokenStack(nn.Module):
    """The blocks of ``STACKS`` over ``layers`` (4 per block, in ``source_linears`` order), each in its own format.

    Satisfies ``kernels.layers.InferenceLayer``: ``impl`` names the kernels of its layers, ``nnz`` sums theirs.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(layers) % 4:
            raise ValueError(f"a token stack holds 4 layers per block, got {len(layers)}")
        self.layers = nn.ModuleList(layers)
        self.in_features = self.out_features = layers[0].in_features

    @property
    def impl(self) -> str:
        return "+".join(sorted({layer.impl for layer in self.layers}))

    @property
    def nnz(self) -> int:
        return sum(int(layer.nnz) for layer in self.layers)

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, D) -> (batch, D)."""
        width = self.in_features
        for i in range(0, len(self.layers), 4):
            qkv, proj, fc1, fc2 = self.layers[i:i + 4]
            x = x + proj(qkv(x)[..., 2 * width:].contiguous())
            x = x + fc2(F.gelu(fc1(x)))
        return x
