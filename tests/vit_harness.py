"""A two-block ViT on 32x32 images standing in for ViT-B/16 in the end-to-end tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from dstbench.suites import vit_e2e


def tiny_vit(seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``vit_e2e.vit_b16``'s model (``LinearQKVAttention``, ``FusedRowsEncoder``, eval mode) at 2 blocks of width 16."""
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=10)
    return vit_e2e.with_fused_rows(vit_e2e.with_linear_qkv(model)).to(device=device, dtype=dtype).eval()


def use_tiny_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace ``vit_e2e.vit_b16`` and its image shape by ``tiny_vit`` and (1, 3, 32, 32) for one test."""
    monkeypatch.setattr(vit_e2e, "vit_b16", tiny_vit)
    monkeypatch.setattr(vit_e2e, "IMAGE_SHAPE", (1, 3, 32, 32))
