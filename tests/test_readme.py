"""The README's "How to add a method" example is real code: it registers, trains and converts."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from dstbench.registry import _METHODS, make_method

README = Path(__file__).resolve().parent.parent / "README.md"


def _example_source() -> str:
    blocks = re.findall(r"```python\n(# methods/static_magnitude.py\n.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README's add-a-method example is missing"
    return blocks[0]


def test_readme_method_example_trains_and_converts():
    namespace: dict = {}
    registered = dict(_METHODS)
    exec(compile(_example_source(), "README.md", "exec"), namespace)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        method = make_method("static", sparsity=0.75, total_steps=20)
        model = method.prepare(model)
        mask_before = (model[0].weight != 0).clone()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
        for _ in range(20):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            method.step(optimizer)
        assert torch.equal(model[0].weight != 0, mask_before)
        assert abs(method.summary(model)["sparsity"] - 0.75) < 0.02
        fast = method.to_inference(model)
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
    finally:
        _METHODS.clear()
        _METHODS.update(registered)
