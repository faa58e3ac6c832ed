"""Oracle: RigL's ERK densities and one update against the rule of the authors' code, not ours.

ERK (``sparse_utils.get_sparsities`` of google-research/rigl): each layer's raw
density is sum(shape) / prod(shape); eps is solved so that the kept weights
match (1 - s) * sum(numel); while eps * max raw > 1, the layers with the
largest raw density become dense and eps is solved again. An update at step
t < T_end drops the floor(alpha_t * nnz) active weights of smallest |w|, with
alpha_t = alpha * (1 + cos(pi t / T_end)) / 2, and grows as many of the
largest |grad| among positions not kept (a dropped weight may come back,
keeping its value); newly grown weights are 0.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dstbench.methods.distributions import erk_densities
from dstbench.registry import make_method


def reference_erk(shapes: list[tuple[int, ...]], sparsity: float) -> list[float]:
    dense: set[int] = set()
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for i, shape in enumerate(shapes):
            n_param = math.prod(shape)
            if i in dense:
                rhs -= n_param * sparsity
            else:
                rhs += n_param * (1 - sparsity)
                raw[i] = sum(shape) / n_param
                divisor += raw[i] * n_param
        eps = rhs / divisor
        max_prob = max(raw.values())
        if max_prob * eps <= 1:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense |= {i for i, p in raw.items() if p == max_prob}


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_erk_densities_equal_the_reference(sparsity):
    shapes = [(64, 3, 7, 7), (64, 64, 3, 3), (128, 64, 3, 3), (256, 128, 1, 1), (512, 256, 3, 3), (1000, 512),
              (10, 3072), (3072, 3072)]
    assert erk_densities(shapes, 1 - sparsity) == pytest.approx(reference_erk(shapes, sparsity), rel=1e-12)


def test_one_update_drops_and_grows_exactly_the_named_weights():
    # 3x4 layer, budget 6; at t = 5 of T_end = 10 with alpha = 1.0: alpha_t = 0.5, floor(0.5 * 6) = 3 swapped
    method = make_method("rigl", sparsity=0.5, distribution="uniform", total_steps=10, delta_t=5, t_end=1.0,
                         drop_fraction=1.0)
    model = method.prepare(nn.Sequential(nn.Linear(4, 3, bias=False)))
    mw = method.masked["0"]
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    weight = torch.tensor([[0.1, 0.5, 0, 0], [-0.2, 0.6, 0, 0], [0.3, -0.7, 0, 0]])
    grad = torch.full((3, 4), 0.01)
    grad[:, 1] = 5.0            # kept weights' gradients never count for growth
    grad[0, 0] = 0.9            # dropped (smallest |w|), then grown back: keeps its value
    grad[2, 2] = -0.85
    grad[0, 3] = 0.8
    mw.set_mask(mask)
    with torch.no_grad():
        mw.param.copy_(weight)
    mw.param.grad = grad
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.state[mw.param]["momentum_buffer"] = torch.ones(3, 4)
    method.step_count = 4
    assert method.step(optimizer)
    want = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(mw.mask, want)
    expected = torch.tensor([[0.1, 0.5, 0, 0], [0, 0.6, 0, 0], [0, -0.7, 0, 0]])
    torch.testing.assert_close(mw.param.detach(), expected)
    momentum = optimizer.state[mw.param]["momentum_buffer"]
    assert torch.equal(momentum, (want & mask).float()), "state of grown and dropped weights reset"


def test_resnet50_imagenet_preset_keeps_the_first_conv_dense_and_the_fc_sparse():
    from dstbench.suites.accuracy import method_options  # noqa: PLC0415

    options = method_options("resnet50", "rigl")
    assert options["dense_first_layer"] and options["sparse_head"]
    from torchvision.models import resnet50  # noqa: PLC0415

    method = make_method("rigl", sparsity=0.9, total_steps=10, **options)
    method.prepare(resnet50(weights=None))
    assert "conv1" not in method.masked and "fc" in method.masked
