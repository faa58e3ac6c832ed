"""The training loop shared by the mask-based methods: prepare, masks, state, inference copy; scheduled updates.

``MaskedDST`` keeps a fixed mask per selected layer (a static sparse
method subclasses it directly); ``PruneAndGrow`` adds the RigL family's
schedule (RigL, SRigL, SET): every ``delta_t`` steps until ``t_end`` of
training, ``update_mask`` drops a cosine-decayed fraction of the active
weights and grows as many. Subclasses give the initial mask and the update
rule, both on the weight seen as a matrix (out, fan_in) with fan_in = in
(* kh * kw), and the inference layer for a masked ``nn.Linear``. Convolutions are trained with
masks the same way; ``to_inference`` keeps them as dense ``nn.Conv2d``
whose masked weights are zero (there is no sparse conv kernel here).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from dstbench.errors import UserError
from dstbench.methods.base import SparsityMethod, inference_copy, unwrap
from dstbench.methods.distributions import kept_weights, layer_densities
from dstbench.methods.masking import MaskedWeight, broadcast_, distributed_ready, reset_optimizer_state
from dstbench.methods.schedules import UpdateSchedule
from dstbench.methods.selection import head_name, select_layers
from dstbench.methods.sparse_init import SPARSE_INITS, grad_flow_init_
from dstbench.methods.summary import LayerCount, summarize


class MaskedDST(SparsityMethod):
    """Sparse training with a boolean mask per selected layer; the mask changes only where ``update_schedule`` says.

    After ``prepare``: ``masked`` maps layer name -> MaskedWeight, ``densities``
    maps every selected layer (ERK may keep some dense; they get no mask) to its
    target density, ``targets`` maps masked layers to their kept-weight budget.

    Options of the family:
        sparse_init: "grad_flow" redraws the masked weights after the initial mask
            (``sparse_init.grad_flow_init_``), "none" keeps the model's own initialisation;
            None takes the method's authors' choice (``default_sparse_init``).
    """

    #: the sparse re-initialisation the method's authors run
    default_sparse_init: str = "none"
    default_sparse_head = True

    def __init__(self, sparsity: float = 0.9, *, sparse_init: str | None = None, **options: Any) -> None:
        super().__init__(sparsity, **options)
        self.sparse_init = self.default_sparse_init if sparse_init is None else sparse_init
        if self.sparse_init not in SPARSE_INITS:
            raise UserError(f"{self.name}: sparse_init must be one of {', '.join(SPARSE_INITS)}, got {sparse_init!r}")
        self.masked: dict[str, MaskedWeight] = {}
        self.densities: dict[str, float] = {}
        self.targets: dict[str, int] = {}
        self.head: str | None = None
        self.schedule: UpdateSchedule | None = None

    # --- subclass hooks -----------------------------------------------------------
    def budget(self, numel: int, density: float) -> int:
        """Kept weights of a layer of ``numel`` weights at ``density``: round(density * numel), in [1, numel]."""
        return kept_weights(numel, density)

    @abstractmethod
    def initial_mask(self, name: str, shape: tuple[int, int]) -> Tensor:
        """Boolean (out, fan_in) CPU mask with ``self.targets[name]``-consistent nnz, drawn from ``self.generator``."""

    def update_schedule(self) -> UpdateSchedule | None:
        """When the topology changes; None (a fixed mask) unless a subclass has a schedule."""
        return None

    def update_mask(self, name: str, weight: Tensor, grad: Tensor, mask: Tensor, drop_fraction: float) -> Tensor:
        """The new boolean (out, fan_in) mask from |weight|, |dense grad| and the current mask (scheduled methods)."""
        raise NotImplementedError(f"{self.name} has no topology updates")

    @abstractmethod
    def inference_linear(self, linear: nn.Linear, mask: Tensor) -> nn.Module:
        """The masked ``linear`` in the method's inference format."""

    # --- SparsityMethod -------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        if self.densities:
            raise UserError(f"{self.name}: prepare() was already called; make a new method for another model")
        selected = select_layers(model, self.layer_types, include=self.include, sparse_head=self.sparse_head,
                                 dense_first_layer=self.dense_first_layer)
        densities = layer_densities([tuple(m.weight.shape) for _, m in selected], self.sparsity, self.distribution)
        self.schedule = self.update_schedule()
        self.head = head_name(model)
        for (name, module), density in zip(selected, densities):
            self.densities[name] = density
            weight = module.weight
            if density >= 1.0:
                continue
            self.targets[name] = self.budget(weight.numel(), density)
            rows = weight.shape[0]
            mask = self.initial_mask(name, (rows, weight.numel() // rows)).reshape(weight.shape).to(weight.device)
            if self.sparse_init == "grad_flow":
                grad_flow_init_(weight, mask, self.generator)
            self.masked[name] = MaskedWeight(weight, mask, self._dense_grad_wanted)
            self.masked[name].apply()
        if self.sync_topology and distributed_ready():
            self.broadcast_topology()
        return model

    def _dense_grad_wanted(self) -> bool:
        return self.schedule is not None and self.schedule.is_update(self.step_count + 1)

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        if not self.densities:
            raise UserError(f"{self.name}: call prepare(model) before step()")
        self.step_count += 1
        if self.schedule is None or not self.schedule.is_update(self.step_count):
            for mw in self.masked.values():
                mw.apply()
            return False
        if optimizer is None and self.masked:
            raise UserError(f"{self.name}: pass the optimizer to step(optimizer) so grown weights get a fresh optimizer state")
        drop = self.schedule.drop_fraction(self.step_count)
        changed = False
        for name, mw in self.masked.items():
            changed |= self._update_layer(name, mw, optimizer, drop)
        if self.sync_topology and distributed_ready():
            self.broadcast_topology()
        return changed

    @torch.no_grad()
    def _update_layer(self, name: str, mw: MaskedWeight, optimizer: torch.optim.Optimizer | None, drop: float) -> bool:
        param = mw.param
        if param.grad is None:
            raise UserError(f"{self.name}: layer {name} has no gradient at a topology update; call step() after "
                            "optimizer.step() and before optimizer.zero_grad()")
        mw.apply()
        rows = param.shape[0]
        old = mw.mask.reshape(rows, -1).clone()
        new = self.update_mask(name, param.detach().reshape(rows, -1), param.grad.reshape(rows, -1), old, drop)
        grown = (new & ~old).reshape(param.shape)
        param.masked_fill_(grown, 0.0)
        mw.set_mask(new.reshape(param.shape))
        reset_optimizer_state(optimizer, param, (new & old).reshape(param.shape))
        return bool((new != old).any())

    def broadcast_topology(self) -> None:
        """Broadcast every mask from rank 0 and re-apply it (no-op without torch.distributed)."""
        if not distributed_ready():
            return
        for mw in self.masked.values():
            mask = mw.mask.clone()
            broadcast_(mask)
            mw.set_mask(mask)

    def to_inference(self, model: nn.Module) -> nn.Module:
        def convert(name: str, module: nn.Module) -> nn.Module | None:
            if name in self.masked and isinstance(module, nn.Linear):
                return self.inference_linear(module, self.masked[name].mask)
            return None

        return inference_copy(unwrap(model), convert)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["masks"] = {name: mw.mask.detach().cpu().clone() for name, mw in self.masked.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["masks"]) != set(self.masked):
            raise UserError(f"{self.name}: the saved masks are for layers {sorted(state['masks'])}, "
                            f"this model has {sorted(self.masked)}; prepare the same model first")
        super().load_state_dict(state)
        for name, mask in state["masks"].items():
            self.masked[name].set_mask(mask.to(self.masked[name].mask.device))

    def summary(self, model: nn.Module, example_input: Tensor | None = None) -> dict[str, float]:
        model = unwrap(model)
        counts = {}
        for name in self.densities:
            numel = model.get_submodule(name).weight.numel()
            nnz = self.masked[name].nnz if name in self.masked else numel
            counts[name] = LayerCount(nnz=nnz, numel=numel, trained=numel)
        return summarize(model, counts, example_input)


class PruneAndGrow(MaskedDST):
    """The RigL family: masks updated by ``update_mask`` every ``delta_t`` steps until ``t_end`` of training.

    Options of the family:
        delta_t: steps between topology updates (100).
        t_end: fraction of ``total_steps`` after which the topology stops changing (0.75).
        drop_fraction: alpha, the initial fraction of active weights dropped per update (0.3),
            decayed by a cosine to 0 at t_end.
    """

    def __init__(self, sparsity: float = 0.9, *, delta_t: int = 100, t_end: float = 0.75, drop_fraction: float = 0.3,
                 **options: Any) -> None:
        super().__init__(sparsity, **options)
        if not isinstance(delta_t, int) or delta_t < 1:
            raise UserError(f"delta_t must be a positive integer number of steps, got {delta_t!r}")
        if not 0.0 <= float(t_end) <= 1.0:
            raise UserError(f"t_end must be a fraction of training in [0, 1], got {t_end!r}")
        if not 0.0 <= float(drop_fraction) <= 1.0:
            raise UserError(f"drop_fraction must be in [0, 1], got {drop_fraction!r}")
        self.delta_t = delta_t
        self.t_end = float(t_end)
        self.drop_fraction = float(drop_fraction)

    def update_schedule(self) -> UpdateSchedule:
        return UpdateSchedule(self.delta_t, int(self.t_end * self._require_total_steps()), self.drop_fraction)

    @abstractmethod
    def update_mask(self, name: str, weight: Tensor, grad: Tensor, mask: Tensor, drop_fraction: float) -> Tensor:
        """The new boolean (out, fan_in) mask from |weight|, |dense grad| and the current mask."""

    def dynamic_fraction(self) -> float:
        """t_end: updates stop after this share of training."""
        return self.t_end
