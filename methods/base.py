"""The SparsityMethod interface shared by every method.

A method owns the topology of every sparse layer of a model::

    method = make_method("srigl", sparsity=0.9, distribution="erk", total_steps=T)
    model = method.prepare(model)       # masks / layer swaps; build the optimizer after this
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        method.step(optimizer)          # topology update when the schedule says so (before zero_grad)
    fast = method.to_inference(model)   # layers in the method's fast format
    state = method.state_dict()         # masks, importances, schedule position, RNG state

Which layers are sparse (``selection.select_layers``): by default every
``nn.Linear`` and ``nn.Conv2d`` (DynaDiag: ``nn.Linear`` only) except the
linears inside an ``nn.MultiheadAttention`` (it reads their weights
directly); the classifier head (the model's last ``nn.Linear``) is sparse
where the method's authors make it sparse (``default_sparse_head``: RigL
and SRigL yes, DynaDiag no). Options: ``sparse_head`` overrides that,
``dense_first_layer=True``
keeps the first selected layer dense, ``include(name, module) -> bool``
replaces the default rule (the head is then sparse if ``include`` accepts it).

``sparsify_linear`` builds one layer in the inference format straight from
an ``nn.Linear`` (one-shot, by magnitude), which is what the inference suite
times.

Distributed training: call ``prepare`` before wrapping the model in
``DistributedDataParallel``. Every random choice comes from the method's own
seeded ``torch.Generator`` and every topology decision from the weights and
the gradients after DDP's all-reduce, so all ranks take the same decisions;
with ``sync_topology=True`` (default) the topology is also broadcast from
rank 0 after ``prepare`` and after every update when ``torch.distributed``
is initialised (``broadcast_topology``).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from dstbench.errors import UserError, check_sparsity
from dstbench.methods.options import check

LayerFilter = Callable[[str, nn.Module], bool]
DISTRIBUTIONS = ("erk", "uniform")


class SparsityMethod(ABC):
    """Base class; subclasses register themselves with ``registry.register_method``.

    Args:
        sparsity: fraction of weights removed in the sparse layers, in [0, 1).
        impl: kernel implementation for the fast formats ("auto", "cpu", "cuda", "reference").
        distribution: layer densities, "erk" or "uniform"; None takes the method's paper default.
        total_steps: optimizer steps of the whole training run (needed by ``prepare`` of the
            dynamic methods: the schedules are fractions of it).
        dense_first_layer: keep the first selected layer dense.
        sparse_head: sparsify the classifier head (the last ``nn.Linear``) too; None takes the
            method's authors' choice (``default_sparse_head``).
        include: ``include(name, module) -> bool`` replaces the default layer rule.
        seed: seed of the method's own ``torch.Generator`` (initial masks, tie-breaking).
        sync_topology: broadcast the topology from rank 0 when ``torch.distributed`` is initialised.

    A method's options are the parameters of its constructors (``methods/options.py``):
    each subclass declares its own (the RigL family's schedule lives in ``mask_training``),
    and ``registry.make_method`` checks their types before building it.

    Raises:
        UserError: for a value out of range or an option the method does not have.
    """

    name: ClassVar[str] = "base"
    #: the inference format: "dense", "csr", "condensed" or "diagonal"
    inference_format: ClassVar[str] = "dense"
    #: the layer types the method sparsifies during training
    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Conv2d)
    #: the layer-density distribution of the method's paper
    default_distribution: ClassVar[str] = "erk"
    #: whether the method's authors sparsify the classifier head
    default_sparse_head: ClassVar[bool] = False
    #: how reports name and draw the method, and where it sorts in tables and legends
    display_name: ClassVar[str] = ""
    color: ClassVar[str] = "#999999"
    marker: ClassVar[str] = "o"
    order: ClassVar[int] = 100

    def __init__(
        self,
        sparsity: float = 0.9,
        *,
        impl: str = "auto",
        distribution: str | None = None,
        total_steps: int | None = None,
        dense_first_layer: bool = False,
        sparse_head: bool | None = None,
        include: LayerFilter | None = None,
        seed: int = 0,
        sync_topology: bool = True,
        **unknown: Any,
    ) -> None:
        if unknown:
            check(self.name, type(self), unknown)
        self.sparsity = check_sparsity(sparsity)
        self.impl = impl
        self.distribution = self.default_distribution if distribution is None else distribution
        if self.distribution not in DISTRIBUTIONS:
            raise UserError(f"unknown distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise UserError(f"total_steps must be a positive integer (optimizer steps of the run), got {total_steps!r}")
        self.total_steps = total_steps
        self.dense_first_layer = bool(dense_first_layer)
        self.sparse_head = self.default_sparse_head if sparse_head is None else bool(sparse_head)
        self.include = include
        self.seed = int(seed)
        self.sync_topology = bool(sync_topology)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.step_count = 0

    @abstractmethod
    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        """One-shot: the layer in this method's inference format at ``self.sparsity``."""

    # --- training -----------------------------------------------------------------
    @abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """Make ``model`` sparse-trainable (masks, layer swaps) in place and return it.

        The returned model trains with any optimizer; build the optimizer after
        ``prepare``. Deterministic given the method's ``seed``.
        """

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Call once after every ``optimizer.step()`` (before ``zero_grad``); True if the topology changed."""
        self.step_count += 1
        return False

    def dynamic_fraction(self) -> float:
        """The share of training, in [0, 1], before the topology settles (0 for a method without a topology phase)."""
        return 0.0

    @abstractmethod
    def to_inference(self, model: nn.Module) -> nn.Module:
        """A copy of the prepared ``model`` with its sparse layers in the fast inference format."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training bit-identically (topology, step, RNG state)."""
        return {"step": self.step_count, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` into a method whose ``prepare`` was already called on the model.

        Load the model's and the optimizer's state dicts as well; the order does not matter.
        """
        self.step_count = int(state["step"])
        self.generator.set_state(state["rng"])

    @abstractmethod
    def summary(self, model: nn.Module, example_input: Tensor | None = None) -> dict[str, float]:
        """Achieved sparsity, non-zero parameters and inference FLOPs per sample (see ``summary.py``).

        Keys: ``sparsity`` (fraction of zero weights over the selected layers), ``params``
        (parameters of the inference model, biases included, zeros of sparse layers excluded),
        ``flops`` (2 x multiply-adds of the Linear/Conv2d layers per sample). ``example_input``,
        a batch of B samples, is needed for models with convolutions (spatial sizes) and
        for sequence models (tokens per sample); without it every Linear counts once per sample.
        """

    def broadcast_topology(self) -> None:
        """Broadcast the topology from rank 0 when ``torch.distributed`` is initialised; else nothing."""

    def sparsify_model(self, model: nn.Module, include: LayerFilter | None = None) -> nn.Module:
        """Replace, in place, every ``nn.Linear`` that ``include(name, layer)`` accepts by ``sparsify_linear``.

        Returns the model. With ``include=None`` every linear layer is converted.
        """
        for name, layer in list(model.named_modules()):
            if isinstance(layer, nn.Linear) and (include is None or include(name, layer)):
                replace_module(model, name, self.sparsify_linear(layer))
        return model

    def _require_total_steps(self) -> int:
        if self.total_steps is None:
            raise UserError(f"method {self.name!r} needs total_steps (the number of optimizer steps of the run)")
        return self.total_steps


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule at dotted path ``name`` to ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inference_copy(model: nn.Module, convert: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """A deep copy of ``model`` in eval mode where ``convert(name, module)`` replaces modules it returns non-None for."""
    fast = copy.deepcopy(model)
    for name, module in list(fast.named_modules()):
        new = convert(name, module)
        if new is not None:
            replace_module(fast, name, new)
    return fast.eval()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper, else ``model``."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model
