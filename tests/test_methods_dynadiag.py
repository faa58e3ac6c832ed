"""DynaDiag: initialisation, all-P gating before the freeze, K diagonals after it, temperature, resume, inference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dstbench.errors import UserError
from dstbench.kernels.formats import diagonal_coords, num_diagonals
from dstbench.kernels.layers import DiagonalLinear
from dstbench.methods import diagonal_layer
from dstbench.methods.diagonal_layer import DiagonalTrainLinear
from dstbench.registry import make_method
from methods_harness import batch, checkpoint, restore, setup, train

pytestmark = pytest.mark.filterwarnings("ignore:dstbench. .* kernel unavailable")

OPTIONS = dict(sparsity=0.9, total_steps=40, freeze_at=0.5)


def dense_effective(layer: DiagonalTrainLinear) -> torch.Tensor:
    return layer.to_weight().to_dense()


def test_prepare_replaces_linears_but_not_the_head():
    model, method, _ = setup("dynadiag", **OPTIONS)
    assert isinstance(model[0], DiagonalTrainLinear) and isinstance(model[2], DiagonalTrainLinear)
    assert type(model[4]) is torch.nn.Linear
    assert model[0].k == num_diagonals(96, 64, 0.9) == 10
    assert model[2].k == num_diagonals(48, 96, 0.9) == 10
    assert model[0].values.shape == (96, 64) and model[0].alpha.shape == (96,)
    assert torch.allclose(model[0].alpha, torch.full((96,), 1 / 96))


def test_initialisation_follows_the_authors():
    """Authors: V kaiming_uniform_(a=sqrt(5)) over (P, D), i.e. U(-1/sqrt(D), 1/sqrt(D)); alpha = 1/P; bias 0."""
    model, method, _ = setup("dynadiag", **OPTIONS)
    for layer, (p, d) in ((model[0], (96, 64)), (model[2], (96, 48))):
        bound = math.sqrt(2 / (1 + 5)) * math.sqrt(3 / d)
        values = layer.values.detach()
        assert values.shape == (p, d) and values.abs().max() <= bound
        assert values.abs().max() > 0.95 * bound
        assert values.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert torch.equal(layer.alpha.detach(), torch.full((p,), 1 / p))
        assert layer.bias is not None and not layer.bias.any()
    bare = make_method("dynadiag", sparse_head=True, total_steps=10).prepare(torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False)))
    assert bare[0].bias is None


def test_effective_weight_is_a_union_of_k_diagonals_after_the_freeze():
    model, method, optimizer = setup("dynadiag", **OPTIONS)
    x = torch.randn(6, 64)

    def check(step, changed):
        for layer in method.layers.values():
            offsets = layer.offsets()
            assert offsets.numel() == layer.k and torch.equal(offsets, torch.unique(offsets))
            dense = dense_effective(layer)
            rows, cols = diagonal_coords(offsets, layer.out_features, layer.in_features)
            allowed = torch.zeros_like(dense, dtype=torch.bool)
            allowed[rows, cols] = True
            assert int(allowed.sum()) == layer.k * min(layer.out_features, layer.in_features)
            assert not dense[~allowed].any()
        if method.layers["0"].is_frozen:
            with torch.no_grad():
                h = F.relu(x @ dense_effective(model[0]).T + model[0].bias)
                torch.testing.assert_close(F.relu(model[0](x)), h, rtol=1e-5, atol=1e-5)

    train(model, method, optimizer, 40, after_step=check)


def spy_kernel(monkeypatch) -> list[tuple[int, ...]]:
    shapes = []
    real = diagonal_layer.ops.diag_mm

    def spy(x, offsets, values, out_features, impl="auto"):
        shapes.append(tuple(values.shape))
        return real(x, offsets, values, out_features, impl)

    monkeypatch.setattr(diagonal_layer.ops, "diag_mm", spy)
    return shapes


def test_every_diagonal_is_computed_before_the_freeze_and_only_k_after(monkeypatch):
    model, method, optimizer = setup("dynadiag", **OPTIONS)
    shapes = spy_kernel(monkeypatch)
    train(model, method, optimizer, 20)
    assert shapes == [], "before the freeze (after 20 steps) the layer runs one GEMM on the assembled W"
    train(model, method, optimizer, 2, start=20)
    assert shapes == [(10, 64), (10, 48)] * 2


def test_selection_topk_computes_only_k_diagonals(monkeypatch):
    model, method, optimizer = setup("dynadiag", selection="topk", **OPTIONS)
    shapes = spy_kernel(monkeypatch)
    train(model, method, optimizer, 2)
    assert shapes == [(10, 64), (10, 48)] * 2


def test_gradients_reach_alpha_until_the_freeze_then_stop():
    model, method, optimizer = setup("dynadiag", **OPTIONS)
    layer = model[0]
    seen = []

    def check(step, changed):
        seen.append((layer.alpha.grad is not None and bool(layer.alpha.grad.abs().sum() > 0), layer.is_frozen))

    train(model, method, optimizer, 20, after_step=check)
    assert all(grad and not frozen for grad, frozen in seen[:19])
    assert seen[19][1], "frozen after freeze_at * total_steps = 20 steps"
    alpha, offsets = layer.alpha.detach().clone(), layer.offsets().clone()
    train(model, method, optimizer, 5, start=20)
    assert layer.alpha.grad is None and not layer.alpha.requires_grad
    assert torch.equal(layer.alpha, alpha) and torch.equal(layer.offsets(), offsets)


def test_every_diagonal_learns_before_the_freeze():
    model, method, _ = setup("dynadiag", **OPTIONS)
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    layer = model[0]
    assert layer.values.grad.abs().sum(dim=1).gt(0).all(), "every one of the P diagonals gets a values gradient"
    assert layer.alpha.grad.ne(0).float().mean() > 0.9, "and its alpha a gradient of its own"


@pytest.mark.parametrize("frozen", [False, True])
def test_values_gradient_only_on_the_kept_diagonals_with_topk_or_after_the_freeze(frozen):
    model, method, _ = setup("dynadiag", **{**OPTIONS, "selection": "all" if frozen else "topk"})
    if frozen:
        method._freeze()
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    layer = model[0]
    active = torch.zeros(layer.num_candidates, dtype=torch.bool)
    active[layer.offsets()] = True
    assert layer.values.grad[active].abs().sum(dim=1).gt(0).all()
    assert not layer.values.grad[~active].any()


def test_freeze_sets_the_gates_to_one_as_the_authors_do():
    model, method, optimizer = setup("dynadiag", **OPTIONS)
    train(model, method, optimizer, 19)
    layer = model[0]
    offsets = layer.offsets()
    values = layer.values.detach().clone()
    method._freeze()
    assert torch.equal(layer.values.detach(), values)
    assert torch.equal(layer.to_weight().values, values[offsets])


def test_fold_gates_keeps_the_function_continuous():
    model, method, optimizer = setup("dynadiag", fold_gates=True, **OPTIONS)
    train(model, method, optimizer, 19)
    x = torch.randn(5, 64)
    before = method.to_inference(model)(x)
    method._freeze()
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


def test_temperature_reaches_t_min_at_the_freeze_and_stays():
    model, method, optimizer = setup("dynadiag", **OPTIONS)
    assert model[0].temperature == pytest.approx(5.0)
    temps = []
    train(model, method, optimizer, 39, after_step=lambda s, c: temps.append((model[0].temperature, model[0].is_frozen)))
    before = [t for t, frozen in temps if not frozen]
    assert len(before) == 19 and all(a > b for a, b in zip(before, before[1:]))
    assert before[-1] > 0.05
    assert all(t == pytest.approx(0.05) for t, frozen in temps if frozen)


def test_temperature_without_a_freeze_ends_at_the_last_step():
    model, method, optimizer = setup("dynadiag", sparsity=0.9, total_steps=40, freeze_at=None)
    temps = []
    train(model, method, optimizer, 39, after_step=lambda s, c: temps.append(model[0].temperature))
    assert temps[-1] == pytest.approx(0.05) and temps[-2] > 0.05


def test_topology_moves_before_the_freeze_and_returns_true():
    model, method, optimizer = setup("dynadiag", sparsity=0.8, total_steps=60, freeze_at=0.9, t_max=0.05)
    changes = []
    train(model, method, optimizer, 50, after_step=lambda s, c: changes.append(c))
    assert any(changes)


def test_reset_reentering_zeroes_values_and_optimizer_state():
    model, method, optimizer = setup("dynadiag", sparsity=0.8, total_steps=60, freeze_at=None, t_max=0.05,
                                     selection="topk", reset_reentering=True)
    previous = {n: layer.offsets().clone() for n, layer in method.layers.items()}
    entered = []

    def check(step, changed):
        for name, layer in method.layers.items():
            offsets = layer.offsets()
            new = offsets[~torch.isin(offsets, previous[name])]
            if new.numel():
                entered.append(new.numel())
                assert not layer.values[new].any()
                for state in optimizer.state[layer.values].values():
                    if isinstance(state, torch.Tensor) and state.shape == layer.values.shape:
                        assert not state[new].any()
            previous[name] = offsets.clone()

    train(model, method, optimizer, 50, after_step=check)
    assert entered


def test_same_seed_same_topology():
    runs = []
    for _ in range(2):
        model, method, opt = setup("dynadiag", **OPTIONS)
        train(model, method, opt, 25)
        runs.append([layer.offsets().clone() for layer in method.layers.values()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("split", [12, 27])  # before and after the freeze at step 20
def test_resume_mid_training_is_bit_identical(split):
    model, method, optimizer = setup("dynadiag", **OPTIONS)
    train(model, method, optimizer, 35)
    straight = [p.detach().clone() for p in model.parameters()]
    model, method, optimizer = setup("dynadiag", **OPTIONS)
    train(model, method, optimizer, split)
    blob = checkpoint(model, method, optimizer)
    model, method, optimizer = setup("dynadiag", model_seed=7, seed=2, **OPTIONS)
    restore(blob, model, method, optimizer)
    train(model, method, optimizer, 35 - split, start=split)
    assert all(torch.equal(a, b) for a, b in zip(straight, model.parameters()))


def test_reset_reentering_needs_selection_topk():
    with pytest.raises(UserError, match="selection=topk"):
        make_method("dynadiag", reset_reentering=True)


@pytest.mark.parametrize("selection, steps", [("all", 30), ("topk", 5), ("topk", 30)])
def test_to_inference_is_diagonal_with_the_same_outputs(selection, steps):
    model, method, optimizer = setup("dynadiag", selection=selection, **OPTIONS)
    train(model, method, optimizer, steps)
    fast = method.to_inference(model)
    assert isinstance(fast[0], DiagonalLinear) and isinstance(fast[2], DiagonalLinear)
    assert fast[0].offsets.numel() == model[0].k
    x = torch.randn(8, 64)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_erk_distribution_and_freeze_at_start():
    model, method, optimizer = setup("dynadiag", sparsity=0.9, total_steps=10, distribution="erk", freeze_at=0.0)
    assert all(layer.is_frozen for layer in method.layers.values())
    assert model[0].k != model[2].k or model[0].k == num_diagonals(96, 64, 1 - method.densities["0"])
    train(model, method, optimizer, 3)
    assert all(layer.alpha.grad is None for layer in method.layers.values())


@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (9, 9)])
def test_topk_gradients_match_a_dense_autograd_reference(shape):
    out_f, in_f = shape
    torch.manual_seed(0)
    layer = DiagonalTrainLinear(out_f, in_f, 3, torch.randperm(max(shape)), selection="topk")
    layer.temperature = 0.3
    with torch.no_grad():
        layer.alpha.copy_(torch.randn(max(shape)))
    x = torch.randn(5, in_f, requires_grad=True)
    dy = torch.randn(5, out_f)
    layer(x).backward(dy)
    got = [x.grad.clone(), layer.values.grad.clone(), layer.alpha.grad.clone(), layer.bias.grad.clone()]

    for t in (x, layer.values, layer.alpha, layer.bias):
        t.grad = None
    offsets = layer.offsets()
    rows, cols = diagonal_coords(offsets, out_f, in_f)
    gates = torch.clamp(3 * torch.softmax(layer.alpha / 0.3, dim=0), max=1.0)
    weight = torch.zeros(out_f, in_f).index_put((rows, cols), layer.values[offsets] * gates[offsets, None])
    (x @ weight.T + layer.bias).backward(dy)
    want = [x.grad, layer.values.grad, layer.alpha.grad, layer.bias.grad]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert got[2].abs().sum() > 0
