"""The README's "How to add a method" example is the shipped methods/static.py, word for word, and it trains."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from dstbench.registry import make_method

ROOT = Path(__file__).resolve().parent.parent


def test_readme_method_example_is_the_shipped_module():
    blocks = re.findall(r"```python\n# methods/static.py\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README's add-a-method example is missing"
    assert blocks[0] == (ROOT / "methods" / "static.py").read_text()


def test_readme_method_example_trains_and_converts():
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
