"""RigL: invariants after every topology update in a real training loop, determinism, resume, inference format."""

from __future__ import annotations


import pytest
import torch

from dstbench.errors import UserError
from dstbench.kernels.layers import CSRLinear
from methods_harness import batch, checkpoint, cnn, mlp, restore, setup, train

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

OPTIONS = dict(sparsity=0.9, total_steps=60, delta_t=5)


def state_tensors(optimizer, param):
    return [v for v in optimizer.state[param].values() if isinstance(v, torch.Tensor) and v.shape == param.shape]


@pytest.mark.parametrize("opt", ["adam", "sgd"])
@pytest.mark.parametrize("model_fn", [mlp, cnn])
def test_invariants_after_every_update(opt, model_fn):
    model, method, optimizer = setup("rigl", model_fn, opt=opt, **OPTIONS)
    before = {}
    updates = []
    total_grown = []

    def check(step, changed):
        for name, mw in method.masked.items():
            assert mw.nnz == method.targets[name]
            assert not mw.param[~mw.mask].any(), "weights outside the mask must be exactly zero"
            if changed:
                grown = mw.mask & ~before[name]
                total_grown.append(int(grown.sum()))
                assert not mw.param[grown].any(), "grown weights start at zero"
                for state in state_tensors(optimizer, mw.param):
                    assert not state[grown].any(), "grown weights get a fresh optimizer state"
                    assert not state[~mw.mask].any()
            else:
                assert torch.equal(mw.mask, before[name])
            before[name] = mw.mask.clone()
        if changed:
            updates.append(step + 1)

    for name, mw in method.masked.items():
        before[name] = mw.mask.clone()
    train(model, method, optimizer, 60, after_step=check)
    # every delta_t steps until t_end * total = 45 (late updates may drop floor(alpha_t * nnz) = 0 weights)
    assert set(updates) <= set(range(5, 45, 5)) and updates[:5] == [5, 10, 15, 20, 25]
    assert sum(total_grown) > 0


def test_gradient_is_masked_except_before_an_update():
    model, method, optimizer = setup("rigl", **OPTIONS)
    mw = method.masked["0"]
    for step in range(5):
        x, y = batch(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        dense = step == 4  # the 5th optimizer step is followed by an update
        assert bool(mw.param.grad[~mw.mask].any()) == dense
        optimizer.step()
        method.step(optimizer)


def test_drop_and_grow_follow_magnitude_and_gradient():
    model, method, _ = setup("rigl", sparsity=0.5, distribution="uniform", total_steps=10)
    mask = torch.tensor([[True, True, True, False, False, False]])
    w = torch.tensor([[3.0, 0.1, 2.0, 0.0, 0.0, 0.0]])
    g = torch.tensor([[0.0, 0.0, 0.0, 0.5, 9.0, 1.0]])
    method.targets["0"] = 3
    new = method.update_mask("0", w, g, mask, drop_fraction=0.4)  # floor(0.4 * 3) = 1 dropped
    assert new.tolist() == [[True, False, True, False, True, False]]
    g2 = torch.tensor([[0.0, 5.0, 0.0, 0.5, 0.2, 1.0]])  # the dropped weight has the largest gradient
    assert method.update_mask("0", w, g2, mask, 0.4).tolist() == mask.tolist()


def test_same_seed_same_masks_other_seed_other_masks():
    runs = []
    for seed in (0, 0, 1):
        model, method, opt = setup("rigl", seed=seed, **OPTIONS)
        train(model, method, opt, 20)
        runs.append({n: mw.mask.clone() for n, mw in method.masked.items()})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert not all(torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_resume_mid_training_is_bit_identical(opt):
    model, method, optimizer = setup("rigl", opt=opt, **OPTIONS)
    train(model, method, optimizer, 40)
    straight = [p.detach().clone() for p in model.parameters()]

    model, method, optimizer = setup("rigl", opt=opt, **OPTIONS)
    train(model, method, optimizer, 17)
    blob = checkpoint(model, method, optimizer)
    model, method, optimizer = setup("rigl", opt=opt, model_seed=5, seed=3, **OPTIONS)
    restore(blob, model, method, optimizer)
    train(model, method, optimizer, 23, start=17)
    assert all(torch.equal(a, b) for a, b in zip(straight, model.parameters()))


def test_to_inference_gives_csr_with_the_same_outputs():
    model, method, optimizer = setup("rigl", **OPTIONS)
    train(model, method, optimizer, 12)
    fast = method.to_inference(model)
    assert isinstance(fast[0], CSRLinear) and isinstance(fast[2], CSRLinear)
    assert isinstance(fast[4], CSRLinear)  # the head is sparse too, as in the authors' code
    assert fast[0].nnz <= method.masked["0"].nnz
    x = torch.randn(7, 64)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
    assert model.training  # the training model is untouched


def test_step_needs_the_optimizer_and_the_gradient():
    model, method, optimizer = setup("rigl", sparsity=0.9, total_steps=60, delta_t=1)
    x, y = batch(0)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    with pytest.raises(UserError, match="optimizer"):
        method.step()
    optimizer.zero_grad(set_to_none=True)
    with pytest.raises(UserError, match="zero_grad"):
        method.step(optimizer)


def test_load_state_dict_rejects_another_model():
    _, method, _ = setup("rigl", **OPTIONS)
    _, other, _ = setup("rigl", cnn, **OPTIONS)
    with pytest.raises(UserError, match="prepare the same model"):
        other.load_state_dict(method.state_dict())
