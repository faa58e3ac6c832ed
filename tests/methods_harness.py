"""A small real training loop for the method tests: an MLP (or a tiny CNN) on scikit-learn's digits.

Batches depend only on the step index, so a run resumed from a checkpoint
sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstbench.registry import make_method


@lru_cache(maxsize=1)
def digits() -> tuple[Tensor, Tensor]:
    """(1797, 64) float32 standardized pixels and (1797,) int64 labels."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(data.target, dtype=torch.int64)


def mlp(seed: int = 0) -> nn.Module:
    """64 -> 96 -> 48 -> 10: a tall (out > in), a wide (out < in) layer and the head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10))


class TinyCNN(nn.Module):
    """(B, 64) digits as (B, 1, 8, 8) -> conv 1->8 3x3 -> conv 8->12 3x3 -> linear 12*4*4 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 12, 3)
        self.head = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x.view(-1, 1, 8, 8)))
        x = F.relu(self.conv2(x))
        return self.head(x.flatten(1))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN()


def batch(step: int, size: int = 64) -> tuple[Tensor, Tensor]:
    """The batch of optimizer step ``step`` (0-based), a function of the step only."""
    x, y = digits()
    idx = torch.randint(0, x.shape[0], (size,), generator=torch.Generator().manual_seed(1000 + step))
    return x[idx], y[idx]


def train(model: nn.Module, method, optimizer: torch.optim.Optimizer, steps: int, start: int = 0,
          after_step: Callable[[int, bool], None] | None = None) -> None:
    """``steps`` optimizer steps from step ``start``; ``after_step(step, changed)`` after each ``method.step``."""
    model.train()
    for step in range(start, start + steps):
        x, y = batch(step)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        changed = method.step(optimizer)
        if after_step is not None:
            after_step(step, changed)


def setup(name: str, model_fn: Callable[[int], nn.Module] = mlp, model_seed: int = 0, opt: str = "adam", **options):
    """(model, method, optimizer) with the method prepared; ``options`` go to ``make_method``."""
    method = make_method(name, **options)
    model = method.prepare(model_fn(model_seed))
    if opt == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return model, method, optimizer


def checkpoint(model: nn.Module, method, optimizer: torch.optim.Optimizer) -> bytes:
    """Model, optimizer and method state serialized with torch.save."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": optimizer.state_dict(), "method": method.state_dict()}, buf)
    return buf.getvalue()


def restore(blob: bytes, model: nn.Module, method, optimizer: torch.optim.Optimizer) -> None:
    state = torch.load(io.BytesIO(blob), weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["opt"])
    method.load_state_dict(state["method"])


def accuracy(model: nn.Module) -> float:
    x, y = digits()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
