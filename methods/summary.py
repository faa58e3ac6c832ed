"""Achieved sparsity, parameter count and FLOPs of a prepared model.

FLOPs count the Linear and Conv2d layers only (the layers sparsity acts on),
2 per multiply-add, per sample: ``2 * nnz * positions`` where positions is 1
for a Linear applied once per sample, the number of rows per sample for a
Linear applied to a sequence, and H_out * W_out for a conv. Attention score
products, norms and activations are not counted. Biases count as parameters
but not as FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dstbench.errors import UserError


@dataclass(frozen=True)
class LayerCount:
    """Weight counts of one selected layer.

    Attributes:
        nnz: kept weights (the inference format's stored weights).
        numel: weights of the dense layer, out * in (* kh * kw).
        trained: parameters the training representation spends on the weight
            (numel for a masked weight; values + importances for DynaDiag).
    """

    nnz: int
    numel: int
    trained: int


def _positions(model: nn.Module, layers: dict[str, nn.Module], example_input: Tensor) -> dict[str, float]:
    """Output positions per sample of every layer in ``layers`` for one forward of ``example_input``."""
    batch = example_input.shape[0]
    seen: dict[str, float] = {}
    hooks = []

    def hook(name: str, conv: bool):
        def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            channels = output.shape[1] if conv else output.shape[-1]
            seen[name] = seen.get(name, 0.0) + output.numel() / channels / batch
        return record

    for name, module in layers.items():
        hooks.append(module.register_forward_hook(hook(name, isinstance(module, nn.Conv2d))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def summarize(model: nn.Module, counts: dict[str, LayerCount], example_input: Tensor | None = None) -> dict[str, float]:
    """``{"sparsity", "params", "flops"}`` of ``model`` whose selected layers have ``counts``.

    Args:
        model: the prepared model.
        counts: name -> LayerCount of every selected layer (dense-kept ones with nnz == numel).
        example_input: a batch of B samples, needed for convolutions and sequence models.
    Raises:
        UserError: if the model has a conv and no ``example_input``.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) or n in counts}
    if example_input is None:
        if any(isinstance(m, nn.Conv2d) for m in layers.values()):
            raise UserError("summary of a model with convolutions needs example_input (a batch of inputs) for the spatial sizes")
        positions = {n: 1.0 for n in layers}
    else:
        positions = _positions(model, layers, example_input)
    flops = 0.0
    for name, module in layers.items():
        nnz = counts[name].nnz if name in counts else module.weight.numel()
        flops += 2.0 * nnz * positions.get(name, 0.0)
    params = sum(p.numel() for p in model.parameters()) - sum(c.trained - c.nnz for c in counts.values())
    total = sum(c.numel for c in counts.values())
    sparsity = 1.0 - sum(c.nnz for c in counts.values()) / total if total else 0.0
    return {"sparsity": sparsity, "params": float(params), "flops": flops}
