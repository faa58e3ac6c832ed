"""SET against its authors' rewiring rule (``rewireMask`` of dcmocanu/sparse-evolutionary-artificial-neural-networks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dstbench.kernels.layers import CSRLinear
from dstbench.methods.set import set_kept
from dstbench.registry import make_method
from methods_harness import setup, train

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


def authors_core(weights: np.ndarray, zeta: float) -> np.ndarray:
    """The authors' weightMaskCore: sort every entry (zeros included), cut both tails near zero with strict bounds."""
    values = np.sort(weights.ravel())
    first_zero = np.abs(values).argmin()
    last_zero = values.shape[0] - np.abs(values)[::-1].argmin()
    largest_negative = values[int((1 - zeta) * first_zero)]
    smallest_positive = values[int(min(values.shape[0] - 1, last_zero + zeta * (values.shape[0] - last_zero)))]
    return (weights > smallest_positive) | (weights < largest_negative)


@pytest.mark.parametrize("zeta", [0.3, 0.5, 0.05])
@pytest.mark.parametrize("seed", range(4))
def test_the_kept_weights_are_exactly_the_authors(seed, zeta):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(30, 40, generator=gen) < 0.2
    weight = torch.randn(30, 40, generator=gen) * mask
    assert torch.equal(set_kept(weight, mask, zeta), torch.from_numpy(authors_core(weight.numpy(), zeta)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_rewiring_keeps_what_the_authors_keep_and_regrows_at_random(seed):
    model, method, optimizer = setup("set", sparsity=0.8, total_steps=100, delta_t=10, seed=seed)
    assert not method.sparse_head and "4" not in method.masked, "the authors keep the output layer dense"
    mw = method.masked["0"]
    train(model, method, optimizer, 9)
    before = mw.mask.clone()
    train(model, method, optimizer, 1, start=9)  # step 10 ends with a rewiring
    core = torch.from_numpy(authors_core(method.rewired_weights["0"], 0.3))
    assert torch.equal(mw.mask & core, core), "every weight the authors keep is kept"
    assert int(mw.mask.sum()) == int(before.sum()) == method.targets["0"], "as many regrown as removed"
    grown = mw.mask & ~core
    assert grown.any() and not mw.param[grown & ~before].any(), "new connections start at 0"


@pytest.fixture(autouse=True)
def _spy_update(monkeypatch):
    """Record the weights each layer had when SET rewired it."""
    from dstbench.methods import set as set_module  # noqa: PLC0415

    real = set_module.SET.update_mask

    def spy(self, name, weight, grad, mask, drop_fraction):
        self.__dict__.setdefault("rewired_weights", {})[name] = weight.numpy().copy()
        assert drop_fraction == 0.3, "zeta stays constant"
        return real(self, name, weight, grad, mask, drop_fraction)

    monkeypatch.setattr(set_module.SET, "update_mask", spy)


def test_rewiring_continues_to_the_end_and_regrowth_is_random():
    model, method, optimizer = setup("set", sparsity=0.8, total_steps=40, delta_t=10)
    steps = []
    train(model, method, optimizer, 39, after_step=lambda step, changed: steps.append(step + 1) if changed else None)
    assert steps == [10, 20, 30], "no t_end: every delta_t until the end"
    other, method2, opt2 = setup("set", sparsity=0.8, total_steps=40, delta_t=10, seed=1)
    train(other, method2, opt2, 10)
    assert not torch.equal(method.masked["0"].mask, method2.masked["0"].mask)


def test_inference_is_csr_with_the_same_outputs():
    model, method, optimizer = setup("set", sparsity=0.8, total_steps=30, delta_t=10)
    train(model, method, optimizer, 25)
    fast = method.to_inference(model)
    assert isinstance(fast[0], CSRLinear) and isinstance(fast[4], nn.Linear)
    x = torch.randn(6, 64)
    torch.testing.assert_close(fast(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    assert make_method("set").distribution == "erk", "Erdos-Renyi densities"
