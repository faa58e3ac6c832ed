"""Oracle: DynaDiag's layer against the authors' forward rule, written from their released code, not from ours.

The rule (``TempSoftmaxDiagLinear`` in ``MLP/linear_softmax.py`` of
horizon-research/DynaDiag): P = max(out, in) diagonals of length
D = min(out, in); diagonal p holds (row (j + p) % out, col j) if out >= in,
else (row j, col (j + p) % in); gates a = clamp(K * softmax(alpha / T), 0, 1)
before the freeze, 1 on the top-K of alpha and 0 elsewhere after it;
out[:, row] += x[:, col] * V[p, j] * a[p] for every diagonal p; + bias.
The temperature (``mlp.py``) is a cosine from t_max to t_min over the epochs
before the freeze, so it is t_min at the freeze; K = max(1, ceil(int((1 - s)
* out * in) / D)).
"""

from __future__ import annotations

import math

import pytest
import torch

from dstbench.methods.diagonal_layer import DiagonalTrainLinear
from dstbench.methods.dynadiag import DynaDiag
from dstbench.registry import make_method


def authors_forward(x: torch.Tensor, values: torch.Tensor, gates: torch.Tensor, bias: torch.Tensor,
                    out_f: int, in_f: int) -> torch.Tensor:
    """The authors' scatter-add over all P diagonals, entry by entry."""
    p_count, d = values.shape
    out = torch.zeros(x.shape[0], out_f, dtype=x.dtype)
    for p in range(p_count):
        for j in range(d):
            row, col = ((j + p) % out_f, j) if out_f >= in_f else (j, (j + p) % in_f)
            out[:, row] = out[:, row] + x[:, col] * values[p, j] * gates[p]
    return out + bias


def authors_gates(alpha: torch.Tensor, k: int, temperature: float, frozen: bool) -> torch.Tensor:
    if frozen:
        gates = torch.zeros_like(alpha)
        gates[torch.topk(alpha.detach(), k).indices] = 1.0
        return gates
    return torch.clamp(k * torch.softmax(alpha / temperature, dim=0), 0.0, 1.0)


@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (9, 9), (1, 5), (6, 1)])
@pytest.mark.parametrize("frozen", [False, True])
def test_forward_and_gradients_match_the_authors_rule(shape, frozen):
    out_f, in_f = shape
    p, k = max(shape), min(3, max(shape))
    torch.manual_seed(0)
    layer = DiagonalTrainLinear(out_f, in_f, k, torch.randperm(p), dtype=torch.float64)
    layer.temperature = 0.7
    with torch.no_grad():
        layer.alpha.copy_(torch.randn(p, dtype=torch.float64))  # distinct: the top-K is unique
        layer.bias.copy_(torch.randn(out_f, dtype=torch.float64))
    if frozen:
        layer.freeze()
    x = torch.randn(4, in_f, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4, out_f, dtype=torch.float64)
    y = layer(x)
    y.backward(dy)
    got = [y.detach(), x.grad.clone(), layer.values.grad.clone(), layer.bias.grad.clone()]
    got_alpha = None if frozen else layer.alpha.grad.clone()

    values = layer.values.detach().clone().requires_grad_(True)
    alpha = layer.alpha.detach().clone().requires_grad_(not frozen)
    bias = layer.bias.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = authors_forward(x_ref, values, authors_gates(alpha, k, 0.7, frozen), bias, out_f, in_f)
    y_ref.backward(dy)
    want = [y_ref.detach(), x_ref.grad, values.grad, bias.grad]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    if not frozen:
        torch.testing.assert_close(got_alpha, alpha.grad, rtol=1e-6, atol=1e-6)
        assert alpha.grad.abs().gt(0).sum() > 1


def test_values_initialisation_is_kaiming_uniform_over_p_by_d():
    """kaiming_uniform_(V (P, D), a=sqrt(5)) draws U(-b, b), b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2))."""
    layer = DiagonalTrainLinear(40, 300, 4, torch.randperm(300), generator=torch.Generator().manual_seed(0))
    bound = math.sqrt(2 / (1 + 5)) * math.sqrt(3 / 40)
    assert layer.values.abs().max() <= bound and layer.values.abs().max() > 0.99 * bound
    assert layer.values.mean().abs() < 0.02 * bound


def authors_temperature(epoch: int, freeze_epoch: int, t_max: float = 5.0, t_min: float = 0.05) -> float:
    """mlp.py: schedule over freeze_epoch epochs, e clamped to freeze_epoch - 1, prog = e / (freeze_epoch - 1)."""
    e = min(epoch, freeze_epoch - 1)
    return t_min + 0.5 * (t_max - t_min) * (1 + math.cos(math.pi * e / max(1, freeze_epoch - 1)))


def test_temperature_and_freeze_follow_the_authors_schedule():
    """One step stands for one of the authors' epochs: 10 epochs, freeze at epoch index 3 (freeze_at 0.3)."""
    method = make_method("dynadiag", sparsity=0.5, total_steps=10, freeze_at=0.3, sparse_head=True)
    model = method.prepare(torch.nn.Sequential(torch.nn.Linear(6, 6)))
    for epoch in range(10):
        assert model[0].temperature == pytest.approx(authors_temperature(epoch, 3 + 1))
        assert model[0].is_frozen == (epoch >= 3), "frozen before the forward of epoch index 3"
        method.step()


def test_default_options_are_the_authors():
    method = DynaDiag()
    assert (method.t_max, method.t_min, method.freeze_at) == (5.0, 0.05, 0.3)
    assert method.selection == "all" and not method.fold_gates and method.distribution == "uniform"
    assert not method.sparse_head, "the authors' MLP keeps its classifier head dense"
