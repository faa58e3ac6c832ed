"""Static sparse: the random ERK mask of prepare() is the mask at the end; no schedule; CSR inference."""

from __future__ import annotations

import pytest
import torch

from dstbench.errors import UserError
from dstbench.kernels.layers import CSRLinear
from dstbench.methods.distributions import layer_densities
from dstbench.registry import make_method
from methods_harness import setup, train

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


def test_the_mask_never_changes_and_stays_exactly_sparse():
    model, method, optimizer = setup("static", sparsity=0.8)
    masks = {name: mw.mask.clone() for name, mw in method.masked.items()}
    changed = []
    train(model, method, optimizer, 30, after_step=lambda step, c: changed.append(c))
    assert not any(changed) and method.dynamic_fraction() == 0.0
    for name, mw in method.masked.items():
        assert torch.equal(mw.mask, masks[name])
        assert not mw.param.detach()[~mw.mask].any()


def test_erk_budgets_over_every_layer_and_seeded_masks():
    _, method, _ = setup("static", sparsity=0.8)
    shapes = [(96, 64), (48, 96), (10, 48)]
    assert list(method.densities.values()) == pytest.approx(layer_densities(shapes, 0.8, "erk"))
    _, again, _ = setup("static", sparsity=0.8)
    _, other, _ = setup("static", sparsity=0.8, seed=4)
    assert all(torch.equal(again.masked[n].mask, method.masked[n].mask) for n in method.masked)
    assert any(not torch.equal(other.masked[n].mask, method.masked[n].mask) for n in method.masked)


def test_no_schedule_options_and_inference_through_csr():
    with pytest.raises(UserError, match="has no option"):
        make_method("static", delta_t=10)
    model, method, optimizer = setup("static", sparsity=0.8)
    train(model, method, optimizer, 5)
    fast = method.to_inference(model)
    assert all(isinstance(fast[i], CSRLinear) for i in (0, 2, 4))
    x = torch.randn(5, 64)
    torch.testing.assert_close(fast(x), model.eval()(x), rtol=1e-5, atol=1e-6)
