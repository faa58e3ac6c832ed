"""SRigL: constant fan-in, neuron ablation and its budget, resume, condensed inference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dstbench.kernels.layers import CondensedLinear
from dstbench.registry import make_method
from methods_harness import checkpoint, cnn, mlp, restore, setup, train

pytestmark = pytest.mark.filterwarnings("ignore:dstbench. .* kernel unavailable")

OPTIONS = dict(sparsity=0.9, total_steps=60, delta_t=5)


def fan_in_rows(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1).sum(dim=1)


def check_constant_fan_in(method, name):
    """Every active row has fan-in k = budget // n_active; returns n_active."""
    counts = fan_in_rows(method.masked[name].mask)
    active = counts > 0
    n_active = int(active.sum())
    k = method.targets[name] // n_active
    assert (counts[active] == k).all(), f"{name}: fan-ins {counts.tolist()}"
    assert method.masked[name].nnz == k * n_active
    return n_active


@pytest.mark.parametrize("model_fn", [mlp, cnn])
@pytest.mark.parametrize("ablation", [True, False])
def test_constant_fan_in_after_every_update(model_fn, ablation):
    model, method, optimizer = setup("srigl", model_fn, ablation=ablation, gamma_sal=0.5, **OPTIONS)
    before = {n: mw.mask.clone() for n, mw in method.masked.items()}
    grown_total = []

    def check(step, changed):
        for name, mw in method.masked.items():
            n_active = check_constant_fan_in(method, name)
            if not ablation:
                assert n_active == mw.mask.shape[0]
            assert not mw.param[~mw.mask].any()
            grown = mw.mask & ~before[name]
            grown_total.append(int(grown.sum()))
            assert not mw.param[grown].any(), "grown weights start at zero"
            for state in optimizer.state[mw.param].values():
                if isinstance(state, torch.Tensor) and state.shape == mw.param.shape:
                    assert not state[grown].any()
            before[name] = mw.mask.clone()

    train(model, method, optimizer, 60, after_step=check)
    assert sum(grown_total) > 0


def tiny(**options):
    """A method prepared on Linear(20, 8) -> Linear(8, 2) with a budget of int(160 * 0.265) = 42 weights in layer "0" (k0 = 5)."""
    method = make_method("srigl", sparsity=0.735, distribution="uniform", total_steps=10, **options)
    model = method.prepare(nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 2)))
    assert method.targets["0"] == 42
    return model, method


def low_salience_case(weak_row: int = 3):
    """Mask with 5 weights per row; row ``weak_row`` has tiny weights and no gradient."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(8, 20, dtype=torch.bool)
    mask[:, :5] = True
    weight = (torch.rand(8, 20, generator=gen) + 1.0) * mask
    weight[weak_row] *= 1e-3
    grad = torch.rand(8, 20, generator=gen) + 0.5
    grad[weak_row] = 0.0
    return weight, grad, mask


def test_ablation_fires_and_the_budget_is_redistributed():
    _, method = tiny(gamma_sal=0.3)
    weight, grad, mask = low_salience_case()
    new = method.update_mask("0", weight, grad, mask, drop_fraction=0.3)
    counts = new.sum(dim=1)
    assert counts[3] == 0, "the low-salience neuron is ablated"
    assert (counts[torch.arange(8) != 3] == 6).all(), "k = 42 // 7 = 6 for the survivors"
    assert int(new.sum()) == 42


def test_no_ablation_without_the_option_or_in_the_head():
    _, method = tiny(ablation=False)
    weight, grad, mask = low_salience_case()
    assert (method.update_mask("0", weight, grad, mask, 0.3).sum(dim=1) == 5).all()
    _, method = tiny(sparse_head=True)
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :2] = True
    weight = torch.rand(2, 8, generator=gen) * mask
    weight[1] *= 1e-4
    grad = torch.zeros(2, 8)
    assert method.head == "2"
    assert (method.update_mask("2", weight, grad, mask, 0.3).sum(dim=1) == 2).all()


def test_enough_neurons_survive_to_hold_the_budget():
    _, method = tiny(gamma_sal=1.0)
    weight, grad, mask = low_salience_case()
    grad.zero_()
    weight[:] = torch.linspace(1, 2, 160).reshape(8, 20) * mask
    new = method.update_mask("0", weight, grad, mask, drop_fraction=0.5)
    counts = new.sum(dim=1)
    n_active = int((counts > 0).sum())
    assert n_active >= 3  # ceil(42 / 20)
    assert (counts[counts > 0] == 42 // n_active).all()


def test_grow_picks_largest_gradients_per_row():
    _, method = tiny(ablation=False)
    mask = torch.zeros(8, 20, dtype=torch.bool)
    mask[:, :5] = True
    weight = torch.arange(1.0, 161.0).reshape(8, 20) * mask
    grad = torch.zeros(8, 20)
    grad[:, 10:19] = 1.0
    grad[:, 19] = 10.0
    new = method.update_mask("0", weight, grad, mask, drop_fraction=0.25)  # floor(0.25 * 40) = 10 dropped
    assert (new.sum(dim=1) == 5).all()
    assert torch.equal(new[2:], mask[2:]), "rows 2-7 keep their (larger) weights and are full"
    assert not new[:2, :5].any(), "rows 0-1 hold the 10 smallest weights, all dropped"
    assert new[:2].nonzero()[:, 1].tolist() == [10, 11, 12, 13, 19] * 2, "refilled by largest |grad|, ties: lower column"


def test_same_seed_same_masks():
    masks = []
    for _ in range(2):
        model, method, opt = setup("srigl", **OPTIONS)
        train(model, method, opt, 20)
        masks.append({n: mw.mask.clone() for n, mw in method.masked.items()})
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_resume_mid_training_is_bit_identical():
    model, method, optimizer = setup("srigl", opt="sgd", **OPTIONS)
    train(model, method, optimizer, 40)
    straight = [p.detach().clone() for p in model.parameters()]
    model, method, optimizer = setup("srigl", opt="sgd", **OPTIONS)
    train(model, method, optimizer, 23)
    blob = checkpoint(model, method, optimizer)
    model, method, optimizer = setup("srigl", opt="sgd", model_seed=4, seed=9, **OPTIONS)
    restore(blob, model, method, optimizer)
    train(model, method, optimizer, 17, start=23)
    assert all(torch.equal(a, b) for a, b in zip(straight, model.parameters()))


def test_to_inference_is_condensed_with_ablated_rows_dropped():
    model, method, optimizer = setup("srigl", gamma_sal=0.9, **OPTIONS)
    train(model, method, optimizer, 30)
    fast = method.to_inference(model)
    for name in ("0", "2"):
        layer = fast.get_submodule(name)
        assert isinstance(layer, CondensedLinear)
        assert layer.active_rows.numel() == int((fan_in_rows(method.masked[name].mask) > 0).sum())
    assert any(fast.get_submodule(n).active_rows.numel() < fast.get_submodule(n).out_features for n in ("0", "2")), \
        "gamma_sal=0.9 ablates some neurons in this run"
    x = torch.randn(9, 64)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_conv_keeps_constant_fan_in_per_filter_and_stays_a_masked_conv():
    model, method, optimizer = setup("srigl", cnn, sparse_head=True, distribution="uniform", **OPTIONS)
    train(model, method, optimizer, 20)
    fast = method.to_inference(model)
    assert isinstance(fast.conv2, nn.Conv2d) and isinstance(fast.head, CondensedLinear)
    assert not fast.conv2.weight[~method.masked["conv2"].mask].any()
    x = torch.randn(4, 64)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
