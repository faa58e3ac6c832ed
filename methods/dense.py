"""The dense baseline: no sparsity, F.linear (cuBLAS / MKL)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dstbench.kernels.layers import DenseLinear
from dstbench.methods.base import SparsityMethod, inference_copy, unwrap
from dstbench.methods.summary import summarize
from dstbench.registry import register_method


@register_method("dense")
class Dense(SparsityMethod):
    """Dense baseline; its sparsity is always 0 and it accepts (and ignores) the training options of the others."""

    inference_format = "dense"
    display_name, color, marker, order = "Dense", "#000000", "s", 0

    def __init__(self, sparsity: float = 0.0, **options: Any) -> None:
        super().__init__(0.0, **options)

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        return DenseLinear.from_linear(linear)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def to_inference(self, model: nn.Module) -> nn.Module:
        """A copy with every ``nn.Linear`` as a ``DenseLinear``."""
        def convert(name: str, module: nn.Module) -> nn.Module | None:
            return self.sparsify_linear(module) if isinstance(module, nn.Linear) else None

        return inference_copy(unwrap(model), convert)

    def summary(self, model: nn.Module, example_input: Tensor | None = None) -> dict[str, float]:
        """Sparsity 0; every parameter counts, every Linear/Conv2d at full FLOPs."""
        return summarize(unwrap(model), {}, example_input)
