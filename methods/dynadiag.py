"""DynaDiag (Tyagi et al. ICML 2025): K learned diagonals with a soft top-K; inference through the diagonal kernel.

Defaults follow the authors' released code (``MLP/linear_softmax.py`` and
``MLP/mlp.py`` of horizon-research/DynaDiag). ``prepare`` replaces every
selected ``nn.Linear`` (convs stay dense; by default the classifier head
stays dense, as in the authors' MLP and ViT setups) by a fresh
``DiagonalTrainLinear``: values Kaiming-uniform over (P, D), alpha = 1/P,
bias zero where the replaced linear has one, K = ``num_diagonals(out, in,
layer sparsity)``. Layer sparsities are uniform by default (the authors'
setup), ERK on request.

Before the freeze every one of the P diagonals is computed, scaled by its
gate min(K * softmax(alpha / T), 1) (``selection="all"``), so the choice of
diagonals is learned. The temperature follows a cosine from ``t_max`` (5.0)
to ``t_min`` (0.05) over the steps before the freeze, so T is t_min when
``freeze_at * total_steps`` steps (default 0.3) are done; there the top-K of
every layer is frozen with gates 1, and training continues on the K
diagonals through the sparse kernels. With ``freeze_at=None`` the cosine runs
over the whole training and nothing is frozen. Build the optimizer after
``prepare`` (the authors: Adam, lr 1e-3).

Named deviations from the authors (README, deviations table):
``selection="topk"`` computes only the K diagonals of largest alpha before
the freeze (sparse-cost, but the selection is then not learned);
``fold_gates=True`` multiplies the kept values by their gates at the freeze
so that the function does not jump; ``reset_reentering=True`` (only with
``selection="topk"``) zeroes the values and optimizer state of diagonals
re-entering the top-K. Under DDP, alpha stops receiving gradients at the
freeze, so wrap with ``find_unused_parameters=True`` when freezing within
the run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dstbench.errors import UserError
from dstbench.kernels.formats import DiagonalWeight, num_diagonals
from dstbench.kernels.layers import DiagonalLinear
from dstbench.methods.base import SparsityMethod, inference_copy, replace_module, unwrap
from dstbench.methods.diagonal_layer import DiagonalTrainLinear, check_selection
from dstbench.methods.distributions import layer_densities
from dstbench.methods.masking import broadcast_, distributed_ready, reset_optimizer_state
from dstbench.methods.schedules import cosine_temperature
from dstbench.methods.selection import select_layers
from dstbench.methods.summary import LayerCount, summarize
from dstbench.registry import register_method


@register_method("dynadiag")
class DynaDiag(SparsityMethod):
    """Diagonal dynamic sparse training; inference format offsets + values.

    Extra options:
        t_max, t_min: temperature at the first step and at the freeze (5.0, 0.05).
        freeze_at: fraction of ``total_steps`` after which the top-K is frozen (0.3; None: never).
        selection: "all" (every diagonal gated before the freeze, the authors' rule) or "topk"
            (only the K largest-alpha diagonals computed; does not learn the selection).
        fold_gates: at the freeze, fold the gates into the values so the function is continuous (False).
        reset_reentering: with selection="topk", zero the values of diagonals re-entering the top-K (False).
    """

    inference_format = "diagonal"
    display_name, color, marker, order = "DynaDiag (diagonal)", "#009E73", "D", 30
    layer_types = (nn.Linear,)
    default_distribution = "uniform"

    def __init__(self, sparsity: float = 0.9, *, t_max: float = 5.0, t_min: float = 0.05, freeze_at: float | None = 0.3,
                 selection: str = "all", fold_gates: bool = False, reset_reentering: bool = False,
                 **options: Any) -> None:
        super().__init__(sparsity, **options)
        if not 0.0 < float(t_min) <= float(t_max):
            raise UserError(f"temperatures must satisfy 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
        if freeze_at is not None and not 0.0 <= float(freeze_at) <= 1.0:
            raise UserError(f"freeze_at must be a fraction of training in [0, 1] or None, got {freeze_at!r}")
        check_selection(selection)
        if reset_reentering and selection != "topk":
            raise UserError("dynadiag: reset_reentering applies to selection=topk only (with selection=all every "
                            "diagonal keeps training); drop it or add selection=topk")
        self.selection = selection
        self.t_max, self.t_min = float(t_max), float(t_min)
        self.freeze_at = None if freeze_at is None else float(freeze_at)
        self.reset_reentering = bool(reset_reentering)
        self.fold_gates = bool(fold_gates)
        self.layers: dict[str, DiagonalTrainLinear] = {}
        self.densities: dict[str, float] = {}
        self.active: dict[str, Tensor] = {}
        self.freeze_step: int | None = None

    def sparsify_linear(self, linear: nn.Linear) -> nn.Module:
        weight = DiagonalWeight.top_k(linear.weight.detach(), self.sparsity, linear.bias)
        return DiagonalLinear(weight, self.impl)

    # --- training -----------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        total = self._require_total_steps()
        if self.densities:
            raise UserError("dynadiag: prepare() was already called; make a new method for another model")
        selected = select_layers(model, self.layer_types, include=self.include, sparse_head=self.sparse_head,
                                 dense_first_layer=self.dense_first_layer)
        densities = layer_densities([tuple(m.weight.shape) for _, m in selected], self.sparsity, self.distribution)
        for (name, linear), density in zip(selected, densities):
            self.densities[name] = density
            if density >= 1.0:
                continue
            k = num_diagonals(linear.out_features, linear.in_features, 1.0 - density)
            tie_order = torch.randperm(max(linear.out_features, linear.in_features), generator=self.generator)
            layer = DiagonalTrainLinear(linear.out_features, linear.in_features, k, tie_order, selection=self.selection,
                                        bias=linear.bias is not None, impl=self.impl, generator=self.generator,
                                        device=linear.weight.device, dtype=linear.weight.dtype)
            replace_module(model, name, layer)
            self.layers[name] = layer
        self.freeze_step = None if self.freeze_at is None else int(self.freeze_at * total)
        self._set_temperature()
        if self.freeze_step == 0:
            self._freeze()
        if self.sync_topology and distributed_ready():
            self.broadcast_topology()
        self.active = {name: layer.offsets().clone() for name, layer in self.layers.items()}
        return model

    def _set_temperature(self) -> None:
        end = self.freeze_step if self.freeze_step is not None else self._require_total_steps() - 1
        temperature = cosine_temperature(self.step_count, end, self.t_max, self.t_min)
        for layer in self.layers.values():
            layer.temperature = temperature

    def _freeze(self) -> None:
        for layer in self.layers.values():
            if not layer.is_frozen:
                layer.freeze(self.fold_gates)

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        if not self.densities:
            raise UserError("dynadiag: call prepare(model) before step()")
        self.step_count += 1
        self._set_temperature()
        if self.freeze_step is not None and self.step_count >= self.freeze_step:
            self._freeze()
        if self.sync_topology and distributed_ready():
            self.broadcast_topology()
        changed = False
        for name, layer in self.layers.items():
            offsets = layer.offsets()
            if torch.equal(offsets, self.active[name]):
                continue
            changed = True
            if self.reset_reentering:
                self._reset_entering(layer, offsets, self.active[name], optimizer)
            self.active[name] = offsets.clone()
        return changed

    @torch.no_grad()
    def _reset_entering(self, layer: DiagonalTrainLinear, new: Tensor, old: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
        entering = new[~torch.isin(new, old)]
        layer.values[entering] = 0.0
        keep = torch.ones_like(layer.values, dtype=torch.bool)
        keep[entering] = False
        reset_optimizer_state(optimizer, layer.values, keep)

    def dynamic_fraction(self) -> float:
        """freeze_at (1.0 without a freeze): the dense-cost phase where every diagonal is gated."""
        return 1.0 if self.freeze_at is None else self.freeze_at

    def broadcast_topology(self) -> None:
        """Broadcast every layer's importances and frozen offsets from rank 0 (no-op without torch.distributed)."""
        if not distributed_ready():
            return
        with torch.no_grad():
            for layer in self.layers.values():
                broadcast_(layer.alpha.data)
                broadcast_(layer.frozen_offsets)

    def to_inference(self, model: nn.Module) -> nn.Module:
        def convert(name: str, module: nn.Module) -> nn.Module | None:
            if name in self.layers:
                return DiagonalLinear(module.to_weight(), self.impl)
            return None

        return inference_copy(unwrap(model), convert)

    # --- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["alpha"] = {n: layer.alpha.detach().cpu().clone() for n, layer in self.layers.items()}
        state["frozen"] = {n: layer.frozen_offsets.cpu().clone() if layer.is_frozen else None for n, layer in self.layers.items()}
        state["active"] = {n: offsets.cpu().clone() for n, offsets in self.active.items()}
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["alpha"]) != set(self.layers):
            raise UserError(f"dynadiag: the saved state is for layers {sorted(state['alpha'])}, this model has "
                            f"{sorted(self.layers)}; prepare the same model first")
        super().load_state_dict(state)
        for name, layer in self.layers.items():
            layer.alpha.copy_(state["alpha"][name])
            frozen = state["frozen"][name]
            if frozen is not None:
                layer.frozen_offsets.copy_(frozen)
                layer.is_frozen = True
                layer.alpha.requires_grad_(False)
            self.active[name] = state["active"][name].to(layer.frozen_offsets.device)
        self._set_temperature()

    def summary(self, model: nn.Module, example_input: Tensor | None = None) -> dict[str, float]:
        model = unwrap(model)
        counts = {}
        for name in self.densities:
            module = model.get_submodule(name)
            if name in self.layers:
                p, d = module.values.shape
                counts[name] = LayerCount(nnz=module.k * d, numel=module.out_features * module.in_features, trained=p * d + p)
            else:
                counts[name] = LayerCount(nnz=module.weight.numel(), numel=module.weight.numel(), trained=module.weight.numel())
        return summarize(model, counts, example_input)
