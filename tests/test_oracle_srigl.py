"""Oracle: one SRigL update against the authors' rule, written from their ``RigLConstFanScheduler``, not from ours.

The rule (``rigl_torch/rigl_constant_fan.py`` of calgaryml/condensed-sparsity):
budget B = int(numel * (1 - s)); n_drop = int(nnz * alpha_t), n_keep = nnz - n_drop;
a weight is salient if among the n_keep largest |w| or the n_drop largest |grad|
of the layer; a neuron with fewer than max(1, int(gamma_sal * (B // out))) salient
weights is ablated; survivors get fan-in k = B // n_active; keep the n_keep largest
|w| (ablated rows excluded), cap rows at k; grow per surviving row the largest
|grad| among positions not kept, up to k; new weights start at 0. Initial
weights are redrawn by ``grad_flow_init``: N(0, std = 2 / fan_in) per row.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dstbench.registry import make_method

OUT, FAN, SPARSITY = 8, 20, 0.735


def authors_update(w: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, drop_fraction: float,
                   gamma: float, ablation: bool) -> torch.Tensor:
    score_drop, score_grow = w.abs(), g.abs()
    n_ones = int(mask.sum())
    n_prune = int(n_ones * drop_fraction)
    n_keep = n_ones - n_prune
    budget = int(w.numel() * (1 - SPARSITY))
    ablated: list[int] = []
    if ablation:
        salient = torch.zeros(w.numel(), dtype=torch.bool)
        salient[score_drop.flatten().sort(descending=True).indices[:n_keep]] = True
        salient[score_grow.flatten().sort(descending=True).indices[:n_prune]] = True
        counts = salient.view(OUT, FAN).sum(dim=1).tolist()
        threshold = max(1, int(gamma * (budget // OUT)))
        ablated = [i for i in range(OUT) if counts[i] < threshold]
    k = budget // (OUT - len(ablated))
    scores = score_drop.clone()
    scores[ablated] = scores.min() - 1
    keep = torch.zeros(w.numel(), dtype=torch.bool)
    keep[torch.topk(scores.flatten(), n_keep).indices] = True
    keep = keep.view(OUT, FAN)
    assert (keep.sum(dim=1) <= k).all(), "the oracle case avoids the row cap, where the authors' order is unspecified"
    new = keep.clone()
    for row in range(OUT):
        if row in ablated:
            new[row] = False
            continue
        lifted = torch.where(keep[row], score_grow[row].min() - 1, score_grow[row])
        new[row, torch.topk(lifted, k - int(keep[row].sum())).indices] = True
    return new


def prepared(**options):
    method = make_method("srigl", sparsity=SPARSITY, distribution="uniform", total_steps=100, delta_t=10, **options)
    model = method.prepare(nn.Sequential(nn.Linear(FAN, OUT), nn.ReLU(), nn.Linear(OUT, 2)))
    return model, method


@pytest.mark.parametrize("gamma, ablation", [(0.7, True), (0.3, True), (0.7, False)])
def test_one_update_gives_the_authors_mask(gamma, ablation):
    model, method = prepared(gamma_sal=gamma, ablation=ablation, seed=3)
    mw = method.masked["0"]
    mask = mw.mask.clone()
    gen = torch.Generator().manual_seed(11)
    weight = (torch.rand(OUT, FAN, generator=gen) + 0.5) * mask
    grad = torch.rand(OUT, FAN, generator=gen) + 0.5
    weight[5] *= 1e-3   # neuron 5: tiny weights, and gradients too small to be salient
    grad[5] *= 1e-3
    with torch.no_grad():
        mw.param.copy_(weight)
    mw.param.grad = grad.clone()
    model[2].weight.grad = torch.ones_like(model[2].weight)
    method.step_count = 9
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert method.step(optimizer)
    alpha_t = 0.3 * (1 + math.cos(math.pi * 10 / 75)) / 2
    want = authors_update(weight, grad, mask, alpha_t, gamma, ablation)
    assert torch.equal(mw.mask, want)
    counts = mw.mask.sum(dim=1)
    if ablation:
        assert counts[5] == 0 and (counts[torch.arange(OUT) != 5] == 42 // 7).all(), "ablated; survivors k = 6"
    else:
        assert (counts == 42 // 8).all()
    grown = mw.mask & ~mask
    assert grown.any() and not mw.param[grown].any(), "new connections start at 0"


def test_budget_is_the_authors_floor():
    _, method = prepared()
    assert method.targets["0"] == int(OUT * FAN * (1 - SPARSITY)) == 42
    assert method.targets["2"] == int(2 * OUT * (1 - SPARSITY)) == 4
    assert method.budget(120, 1 - 0.8) == int(120 * (1 - 0.8)) == 23, "floor of 23.999..., where rounding gives 24"


def test_head_is_sparse_and_never_ablated():
    model, method = prepared(gamma_sal=1.0)
    assert method.head == "2" and "2" in method.masked
    mask = method.masked["2"].mask.clone()
    weight = torch.rand(2, OUT) * mask
    weight[1] *= 1e-4
    new = method.update_mask("2", weight, torch.zeros(2, OUT), mask, 0.3)
    assert (new.sum(dim=1) == 4 // 2).all()


def test_sparse_init_is_the_authors_grad_flow_init():
    method = make_method("srigl", sparsity=0.9, distribution="uniform", total_steps=10)
    model = method.prepare(nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)))
    mask = method.masked["0"].mask
    weight = model[0].weight.detach()
    fan_in = int(512 * 256 * 0.1) // 256
    assert (mask.sum(dim=1) == fan_in).all()
    assert not weight[~mask].any()
    assert weight[mask].std().item() == pytest.approx(2 / fan_in, rel=0.05), "std 2 / fan_in, as the authors' normal_(0, 2 / f)"
    assert weight[mask].mean().abs().item() < 0.1 * 2 / fan_in
    plain = make_method("srigl", sparsity=0.9, distribution="uniform", total_steps=10, sparse_init="none")
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    before = dense[0].weight.detach().clone()
    plain.prepare(dense)
    assert torch.equal(dense[0].weight[plain.masked["0"].mask], before[plain.masked["0"].mask])
