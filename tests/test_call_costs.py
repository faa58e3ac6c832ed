"""dstbench.call_costs: the calls it times compute the layer's product; the compile check and the forward's parts on a
tiny ViT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dstbench import call_costs
from dstbench.kernels import cpu, ops
from dstbench.suites import vit_e2e
from dstbench.suites.inference import build_layer
from vit_harness import use_tiny_vit

pytestmark = pytest.mark.skipif(cpu.unavailable_reason(torch.device("cpu"), torch.float32) is not None,
                                reason="the compiled CPU kernels are unavailable")


@pytest.mark.parametrize("method", call_costs.LAYER_METHODS)
def test_the_three_calls_compute_the_layer(method: str) -> None:
    torch.manual_seed(0)
    linear, x = nn.Linear(40, 24), torch.randn(1, 40)
    with torch.inference_mode():
        layer = build_layer(method, linear, call_costs.SPARSITY, "auto")
        fns = call_costs._three_ways(method, layer, x, 24)
        want = layer(x)
        torch.testing.assert_close(fns["operator"](), want)
        direct = fns["direct"]()
        if method == "rigl":  # torch.sparse.mm on x.T, no bias
            torch.testing.assert_close(direct.T + layer.bias, want)
        else:
            assert direct == 0  # the kernel's status: it ran on the bound pointers


def test_layer_costs_rows() -> None:
    rows = call_costs.layer_costs(shapes=[(16, 32)], methods=["dynadiag", "srigl"], rounds=2, calls=3)
    assert [(r["method"], r["in_features"], r["out_features"]) for r in rows] == [("dynadiag", 16, 32), ("srigl", 16, 32)]
    assert all(r[k] > 0 for r in rows for k in ("direct", "layer", "operator"))


@pytest.fixture
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    """``vit_e2e.vit_b16`` and its image shape replaced by a two-block ViT on 32x32 images."""
    use_tiny_vit(monkeypatch)


@pytest.mark.usefixtures("tiny_vit")
def test_compile_costs_match_eager_on_a_tiny_vit() -> None:
    (row,) = call_costs.compile_costs(methods=["dynadiag"], calls=2)
    assert row["max_abs"] > 0  # the random head makes the outputs non-zero, so the differences mean something
    assert row["compiled_diff"] < 1e-4 * row["max_abs"] and row["export_diff"] < 1e-5 * row["max_abs"]
    assert row["eager_ms"] > 0 and row["compiled_ms"] > 0


@pytest.mark.usefixtures("tiny_vit")
def test_forward_parts_time_every_linear_kind_and_the_shared_ops_then_unhook() -> None:
    originals = [getattr(ops, name) for name in call_costs.SHARED_OPS]
    rows = call_costs.forward_parts(models=["dynadiag", "srigl"], threads=1, forwards=2, warmup=1)
    assert [r["model"] for r in rows] == ["dynadiag", "srigl"]
    parts = (*call_costs.LINEAR_KINDS.values(), *call_costs.SHARED_OPS.values())
    for row in rows:
        assert all(row[part] > 0 for part in parts), row  # every kind was hooked, every shared op wrapped
        assert row["total"] >= sum(row[part] for part in parts)
    assert [getattr(ops, name) for name in call_costs.SHARED_OPS] == originals  # the wrappers are gone


@pytest.mark.usefixtures("tiny_vit")
def test_forward_parts_hooks_are_removed() -> None:
    model = vit_e2e.vit_b16(0, torch.device("cpu"), torch.float32)
    seconds: dict[str, float] = {}
    with torch.inference_mode():
        with call_costs._timed_parts(model, seconds):
            model(torch.randn(vit_e2e.IMAGE_SHAPE))
        assert set(seconds) == {*call_costs.LINEAR_KINDS.values(), *call_costs.SHARED_OPS.values()}
        seen = dict(seconds)
        model(torch.randn(vit_e2e.IMAGE_SHAPE))
    assert seconds == seen  # a forward after the block adds nothing


def test_parts_refuses_zero_threads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        call_costs.main(["parts", "--threads", "0"])
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_threads_apply_to_parts_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        call_costs.main(["layers", "--threads", "4"])
    assert "--threads applies to parts only" in capsys.readouterr().err
