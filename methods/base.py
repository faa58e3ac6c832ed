"""The SparsityMethod interface shared by every method.

A method owns the topology of every sparse layer of a model::

    method = make_method("srigl", sparsity=0.9, distribution="erk", total_steps=T)
    model = method.prepare(model)       # masks / parametrizations, trains with any optimizer
    for batch in loader:
        loss.backward(); optimizer.step()
        method.step(optimizer)          # topology update when the schedule says so
    fast = method.to_inference(model)   # layers in the method's fast format
    state = method.state_dict()         # masks, importances, schedule position

``sparsify_linear`` builds one layer in the inference format straight from
an ``nn.Linear`` (one-shot, by magnitude), which is what the inference suite
times.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from dstbench.errors import check_sparsity

LayerFilter = Callable[[str, nn.Linear], bool]


class SparsityMethod(ABC):
    """Base class; subclasses register themselves with ``registry.register_method``.

    Args:
        sparsity: fraction of weights removed in the sparse layers, in [0, 1).
        impl: kernel implementation for the fast formats ("auto", "cpu", "cuda", "reference").
        options: method-specific options (schedule, distribution, ...).
    """

    name: ClassVar[str] = "base"
    #: the inference format: "dense", "csr", "condensed" or "diagonal"
    inference_format: ClassVar[str] = "dense"

    def __init__(self, sparsity: float = 0.9, *, impl: str = "auto", **options: Any) -> None:
        self.sparsity = check_sparsity(sparsity)
        self.impl = impl
        self.options = options

    @abstractmethod
    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        """One-shot: the layer in this method's inference format at ``self.sparsity``."""

    # --- training -----------------------------------------------------------------
    @abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """Make ``model`` sparse-trainable (masks, parametrizations, layer swaps) and return it.

        The returned model trains with any optimizer; build the optimizer after
        ``prepare``. Deterministic given the method's ``seed`` option.
        """

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Call once after every ``optimizer.step()``; returns True if the topology changed."""
        return False

    @abstractmethod
    def to_inference(self, model: nn.Module) -> nn.Module:
        """A copy of the prepared ``model`` with its sparse layers in the fast inference format."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training bit-identically (masks, importances, step)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` into a method whose ``prepare`` was already called on the model."""

    def summary(self, model: nn.Module) -> dict[str, float]:
        """Achieved sparsity over the sparse layers, non-zero parameter count and inference FLOPs per sample.

        Keys: ``sparsity`` (fraction of zero weights in sparse layers), ``params`` (non-zero
        parameters of the whole model, biases included), ``flops`` (multiply-adds x2 per sample).
        """
        raise NotImplementedError

    def sparsify_model(self, model: nn.Module, include: LayerFilter | None = None) -> nn.Module:
        """Replace, in place, every ``nn.Linear`` that ``include(name, layer)`` accepts by ``sparsify_linear``.

        Returns the model. With ``include=None`` every linear layer is converted.
        """
        for name, layer in list(model.named_modules()):
            if isinstance(layer, nn.Linear) and (include is None or include(name, layer)):
                replace_module(model, name, self.sparsify_linear(layer))
        return model


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule at dotted path ``name`` to ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
