"""Mask bookkeeping shared by the mask-based methods (RigL, SRigL): masked weights, top-k masks,
optimizer-state reset, broadcast.

A masked layer keeps its ordinary dense weight parameter; the mask is applied
multiplicatively to it (``w *= mask`` after every optimizer step), so the
weights outside the mask stay exactly zero and ``weight.grad`` is the dense
gradient dL/dW. A tensor hook on the weight masks that gradient (before DDP
all-reduces it) on every step except the ones followed by a topology update,
where the dense gradient is needed for growth; those steps therefore also
move the inactive weights, which ``apply`` puts back to zero right after.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class MaskedWeight:
    """One masked weight: the parameter, its boolean mask (same shape) and the gradient hook.

    Args:
        param: the layer's weight, (out, in) or (out, in, kh, kw).
        mask: boolean, same shape and device as ``param``.
        dense_grad_wanted: called during backward; True leaves the gradient dense.
    """

    def __init__(self, param: nn.Parameter, mask: Tensor, dense_grad_wanted: Callable[[], bool]) -> None:
        self.param = param
        self.mask = mask
        # the mask in the weight's dtype: multiplying by a bool tensor would convert it on every step
        self._factor = mask.to(param.dtype)
        self._dense_grad_wanted = dense_grad_wanted
        self._hook = param.register_hook(self._mask_grad)

    def _mask_grad(self, grad: Tensor) -> Tensor:
        return grad if self._dense_grad_wanted() else grad * self._factor

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the weights outside the mask."""
        self.param.mul_(self._factor)

    @torch.no_grad()
    def set_mask(self, mask: Tensor) -> None:
        """Replace the mask (in place, so references stay valid) and apply it."""
        self.mask.copy_(mask)
        self._factor.copy_(mask)
        self.apply()

    @property
    def nnz(self) -> int:
        return int(self.mask.sum())

    def remove(self) -> None:
        """Remove the gradient hook."""
        self._hook.remove()


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer | None, param: Tensor, keep: Tensor) -> None:
    """Zero the optimizer state of ``param`` where ``keep`` is False.

    Every state tensor with the parameter's shape is masked: SGD ``momentum_buffer``,
    Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, RMSprop ``square_avg``, ...
    Scalars such as ``step`` are left alone.
    """
    if optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.mul_(keep.to(value.dtype))


def top_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask, shape of ``scores``, with True at the ``k`` largest entries (layer-wise)."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    flat[torch.topk(scores.flatten(), k).indices] = True
    return flat.view_as(scores)


def row_top_mask(scores: Tensor, k: Tensor | int) -> Tensor:
    """Boolean (rows, cols) mask with True at the ``k[r]`` largest entries of each row r (ties: lower column first)."""
    rows, cols = scores.shape
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(cols, device=scores.device).expand(rows, cols))
    limit = k.unsqueeze(1) if isinstance(k, Tensor) else k
    return rank < limit


def distributed_ready() -> bool:
    """True when torch.distributed is available and initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def broadcast_(tensor: Tensor, src: int = 0) -> None:
    """Broadcast ``tensor`` in place from rank ``src`` (bool tensors travel as uint8)."""
    if tensor.dtype == torch.bool:
        carrier = tensor.to(torch.uint8)
        torch.distributed.broadcast(carrier, src)
        tensor.copy_(carrier.bool())
    else:
        torch.distributed.broadcast(tensor, src)
