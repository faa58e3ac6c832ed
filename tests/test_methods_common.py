"""Shared parts of the methods: distributions, schedules, selection, bad input, summary, dense baseline."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dstbench.errors import UserError
from dstbench.methods.distributions import erk_densities, kept_weights, layer_densities
from dstbench.methods.options import accepted, accepts, declared
from dstbench.methods.schedules import UpdateSchedule, cosine_temperature
from dstbench.methods.selection import select_layers
from dstbench.kernels.layers import InferenceLayer
from dstbench.registry import list_methods, make_method, method_class
from methods_harness import accuracy, cnn, mlp, setup, train

pytestmark = [pytest.mark.filterwarnings("ignore:dstbench. .* kernel unavailable"),
              pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")]

SHAPES = [(96, 64), (48, 96), (10, 48), (8, 1, 3, 3), (300, 300)]
#: every registered method: the contract tests below cover a new method without edits
ALL = list_methods()
SPARSE = [name for name in ALL if name != "dense"]
#: the methods whose topology changes during training (they need total_steps for their schedule)
DYNAMIC = [name for name in SPARSE if make_method(name).dynamic_fraction() > 0]


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.99])
def test_erk_densities_match_budget(sparsity):
    dens = erk_densities(SHAPES, 1 - sparsity)
    numels = [math.prod(s) for s in SHAPES]
    assert sum(d * n for d, n in zip(dens, numels)) == pytest.approx((1 - sparsity) * sum(numels), rel=1e-9)
    assert all(0 < d <= 1 for d in dens)


def test_erk_makes_small_layers_dense_and_follows_the_erk_ratio():
    dens = erk_densities(SHAPES, 0.5)
    assert dens[3] == 1.0  # the 1->8 3x3 conv would exceed density 1
    sparse = [i for i, d in enumerate(dens) if d < 1]
    raw = {i: sum(SHAPES[i]) / math.prod(SHAPES[i]) for i in sparse}
    eps = {dens[i] / raw[i] for i in sparse}
    assert max(eps) == pytest.approx(min(eps))  # one epsilon for all non-dense layers


def test_uniform_and_kept_weights():
    assert layer_densities(SHAPES, 0.9, "uniform") == [pytest.approx(0.1)] * len(SHAPES)
    assert kept_weights(1000, 0.1) == 100
    assert kept_weights(10, 0.001) == 1


def test_schedule_update_steps_and_cosine_drop_fraction():
    sched = UpdateSchedule(delta_t=10, end_step=75, alpha=0.3)
    assert [t for t in range(1, 101) if sched.is_update(t)] == [10, 20, 30, 40, 50, 60, 70]
    assert sched.drop_fraction(0) == pytest.approx(0.3)
    assert sched.drop_fraction(75) == pytest.approx(0.0)
    assert sched.drop_fraction(37.5) == pytest.approx(0.15)
    constant = UpdateSchedule(delta_t=10, end_step=75, alpha=0.3, cosine=False)
    assert constant.drop_fraction(0) == constant.drop_fraction(60) == 0.3
    assert cosine_temperature(0, 100, 5.0, 0.05) == pytest.approx(5.0)
    assert cosine_temperature(50, 100, 5.0, 0.05) == pytest.approx(2.525)
    assert cosine_temperature(100, 100, 5.0, 0.05) == pytest.approx(0.05)
    assert cosine_temperature(170, 100, 5.0, 0.05) == pytest.approx(0.05), "stays at t_min after end_step"
    assert cosine_temperature(0, 0, 5.0, 0.05) == pytest.approx(0.05)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [{"sparsity": 1.0}, {"sparsity": -0.1}, {"sparsity": "lots"}, {"distribution": "gaussian"},
                                 {"total_steps": 0}, {"delta_t": 0}, {"t_end": 1.5}, {"no_such_option": 1}])
def test_bad_input_raises_user_error(name, bad):
    if name == "dense" and "sparsity" in bad:
        pytest.skip("dense ignores the sparsity")
    with pytest.raises(UserError):
        make_method(name, **{"sparsity": 0.9, "total_steps": 10, **bad})


@pytest.mark.parametrize("name, bad", [("srigl", {"gamma_sal": 2.0}), ("dynadiag", {"t_min": 0.0}),
                                       ("dynadiag", {"t_min": 6.0}), ("dynadiag", {"freeze_at": 1.5}),
                                       ("rigl", {"gamma_sal": 0.3}), ("dynadiag", {"ablation": True})])
def test_bad_method_options_raise_user_error(name, bad):
    with pytest.raises(UserError):
        make_method(name, sparsity=0.9, total_steps=10, **bad)


@pytest.mark.parametrize("name, options, message", [
    ("srigl", {"ablation": "maybe"}, "option ablation takes true or false, got 'maybe'"),
    ("srigl", {"gamma_sal": "high"}, "option gamma_sal takes a number"),
    ("rigl", {"delta_t": 2.5}, "option delta_t takes an integer"),
    ("dynadiag", {"freeze_at": "late"}, "option freeze_at takes a number or none"),
    ("dynadiag", {"delta_t": 10}, "has no option(s) delta_t; its options are"),
    ("dense", {"delta_t": 10}, "has no option(s) delta_t"),
])
def test_option_types_are_checked_against_the_declaration(name, options, message):
    with pytest.raises(UserError) as err:
        make_method(name, sparsity=0.9, total_steps=10, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_schedule_options_belong_to_the_rigl_family():
    assert all(accepts(method_class(n), "delta_t") for n in ("rigl", "srigl"))
    assert not any(accepts(method_class(n), "delta_t") for n in ("dense", "dynadiag"))
    assert declared(method_class("srigl"))["ablation"] is bool


@pytest.mark.parametrize("name", DYNAMIC)
def test_prepare_needs_total_steps(name):
    with pytest.raises(UserError, match="total_steps"):
        make_method(name, sparsity=0.9).prepare(mlp())


def test_layer_selection_rules():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 8), nn.Linear(8, 3))
    names = lambda sel: [n for n, _ in sel]  # noqa: E731
    assert names(select_layers(model, (nn.Linear, nn.Conv2d))) == ["0", "2"]
    assert names(select_layers(model, (nn.Linear,))) == ["2"]
    assert names(select_layers(model, (nn.Linear, nn.Conv2d), sparse_head=True)) == ["0", "2", "3"]
    assert names(select_layers(model, (nn.Linear, nn.Conv2d), dense_first_layer=True)) == ["2"]
    assert names(select_layers(model, (nn.Linear, nn.Conv2d), include=lambda n, m: n == "3")) == ["3"]
    with pytest.raises(UserError):
        select_layers(nn.Sequential(nn.Linear(3, 3)), (nn.Linear,))
    attn = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 2))
    assert names(select_layers(attn, (nn.Linear,))) == ["0"]


@pytest.mark.parametrize("name", SPARSE)
def test_summary_counts_sparse_params_and_flops(name):
    model, method, _ = setup(name, sparsity=0.8, distribution="uniform", total_steps=10, sparse_head=False)
    s = method.summary(model)
    dense = make_method("dense").summary(mlp())
    weights = 96 * 64 + 48 * 96
    assert dense["sparsity"] == 0.0
    assert dense["params"] == sum(p.numel() for p in mlp().parameters())
    assert dense["flops"] == 2 * (weights + 10 * 48)
    assert s["sparsity"] == pytest.approx(0.8, abs=0.02)
    nnz = round((1 - s["sparsity"]) * weights)
    assert s["params"] == nnz + 10 * 48 + 96 + 48 + 10
    assert s["flops"] == 2 * (nnz + 10 * 48)


def test_summary_of_a_cnn_needs_an_example_input():
    model, method, _ = setup("rigl", cnn, sparsity=0.5, distribution="uniform", total_steps=10, sparse_head=False)
    with pytest.raises(UserError, match="example_input"):
        method.summary(model)
    s = method.summary(model, example_input=torch.zeros(3, 64))
    nnz1, nnz2 = (method.masked[n].nnz for n in ("conv1", "conv2"))
    assert s["flops"] == 2 * (nnz1 * 36 + nnz2 * 16 + 192 * 10)


def test_dense_to_inference_and_training_options_accepted():
    method = make_method("dense", sparsity=0.9, total_steps=5, distribution="erk")
    model = method.prepare(mlp())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, method, opt, 3)
    fast = method.to_inference(model)
    x = torch.randn(5, 64)
    assert type(fast[0]).__name__ == "DenseLinear"
    torch.testing.assert_close(fast(x), model(x))


@pytest.mark.parametrize("name", ALL)
def test_every_method_learns_digits(name):
    schedule = accepted(method_class(name), {"delta_t": 10})
    model, method, opt = setup(name, sparsity=0.8, total_steps=150, **schedule)
    train(model, method, opt, 150)
    assert accuracy(model) > 0.85
    assert accuracy(method.to_inference(model)) > 0.85


@pytest.mark.parametrize("name", ALL)
def test_every_method_honours_the_interface(name):
    """Declared display metadata, an InferenceLayer from sparsify_linear that matches the dense product's shape,
    a state that round-trips, and an inference copy that computes what the trained model computes."""
    cls = method_class(name)
    assert cls.name == name and cls.display_name and cls.color.startswith("#") and cls.marker
    assert cls.inference_format in ("dense", "csr", "condensed", "diagonal")
    linear = nn.Linear(24, 40)
    layer = make_method(name, sparsity=0.75).sparsify_linear(linear)
    assert isinstance(layer, InferenceLayer) and (layer.in_features, layer.out_features) == (24, 40)
    assert layer(torch.randn(3, 24)).shape == (3, 40) and 0 < layer.nnz <= 24 * 40
    schedule = accepted(cls, {"delta_t": 5})
    model, method, opt = setup(name, sparsity=0.8, total_steps=20, **schedule)
    train(model, method, opt, 12)
    fresh = make_method(name, sparsity=0.8, total_steps=20, seed=5, **schedule)
    fresh.prepare(mlp(3))
    fresh.load_state_dict(method.state_dict())
    assert fresh.step_count == method.step_count == 12
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(method.to_inference(model)(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_methods_list_in_their_declared_order():
    orders = [method_class(name).order for name in ALL]
    assert orders == sorted(orders) and ALL[0] == "dense"
