"""The models the accuracy and training suites train, built by name for an input shape and a class count.

Every model takes images (B, C, H, W) and returns logits (B, num_classes);
its classifier head is its last ``nn.Linear`` (the methods keep it dense).

- ``mlp``: flatten -> Linear/ReLU hidden layers -> head.
- ``vit_tiny``: torchvision ``VisionTransformer`` (dim 384, 6 layers, 6 heads,
  MLP 1536) for small images: patch 4 for 32x32, patch 2 for 8x8 (``patch_for``).
- ``resnet18``: torchvision ResNet-18 adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool).
- ``vit_b_16``, ``resnet50``: torchvision's ImageNet models, ``weights=None``.

In both ViTs the attention of every block is ``vit_e2e.LinearQKVAttention``
(the same function as ``nn.MultiheadAttention``) so that qkv and the output
projection are ``nn.Linear`` layers the methods can sparsify, as the
DynaDiag and SRigL authors' ViTs do.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from dstbench.errors import UserError
from dstbench.suites.vit_e2e import with_linear_qkv

#: (channels, height, width) of one input image
Shape = tuple[int, int, int]


def mlp(in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256)) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear head; input (B, ...) with prod(...) = in_features."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def patch_for(image_size: int) -> int:
    """The ViT patch size for a square image: 16 from 224 up, 4 from 32 up, 2 below (at least 4 patches)."""
    if image_size >= 224:
        return 16
    if image_size >= 32:
        return 4
    return 2


def vit(shape: Shape, num_classes: int, *, dim: int = 384, depth: int = 6, heads: int = 6, mlp_dim: int = 1536,
        patch: int | None = None) -> nn.Module:
    """A torchvision VisionTransformer for square (C, S, S) images, with Linear qkv attention."""
    from torchvision.models import VisionTransformer  # noqa: PLC0415  (torchvision takes a second to import)

    channels, height, width = shape
    patch = patch_for(height) if patch is None else patch
    if height != width or height % patch:
        raise UserError(f"the ViT needs square images whose side is a multiple of the patch size {patch}, got {height}x{width}")
    model = VisionTransformer(image_size=height, patch_size=patch, num_layers=depth, num_heads=heads, hidden_dim=dim,
                              mlp_dim=mlp_dim, num_classes=num_classes)
    if channels != 3:
        model.conv_proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
    return with_linear_qkv(model)


def resnet18_small(shape: Shape, num_classes: int) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max-pool (the usual CIFAR-10 adaptation)."""
    from torchvision.models import resnet18  # noqa: PLC0415

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def vit_b_16(shape: Shape, num_classes: int) -> nn.Module:
    """torchvision ViT-B/16 (weights=None) for (3, S, S) images, S a multiple of 16, with Linear qkv attention."""
    from torchvision.models import vit_b_16 as tv_vit_b_16  # noqa: PLC0415

    if shape[0] != 3 or shape[1] != shape[2] or shape[1] % 16:
        raise UserError(f"vit_b_16 needs RGB square images with a side divisible by 16, got {shape}")
    return with_linear_qkv(tv_vit_b_16(weights=None, num_classes=num_classes, image_size=shape[1]))


def resnet50(shape: Shape, num_classes: int) -> nn.Module:
    """torchvision ResNet-50 (weights=None)."""
    from torchvision.models import resnet50 as tv_resnet50  # noqa: PLC0415

    model = tv_resnet50(weights=None, num_classes=num_classes)
    if shape[0] != 3:
        model.conv1 = nn.Conv2d(shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


MODELS: dict[str, Callable[[Shape, int], nn.Module]] = {
    "mlp": lambda shape, classes: mlp(shape[0] * shape[1] * shape[2], classes),
    "vit_tiny": vit,
    "resnet18": resnet18_small,
    "vit_b_16": vit_b_16,
    "resnet50": resnet50,
}


def build(name: str, shape: Shape, num_classes: int, seed: int) -> nn.Module:
    """Model ``name`` for (C, H, W) inputs and ``num_classes`` classes, initialised from ``seed``."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    torch.manual_seed(seed)
    return MODELS[name](shape, num_classes)
