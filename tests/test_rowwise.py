"""The CPU row-wise kernels (kernels/cpu/rowwise.cpp), their operators, and the encoder that fuses them.

The oracles are the definitions computed by torch in float64: GELU = x/2 (1 + erf(x / sqrt 2)) and
LayerNorm = (s - mean) / sqrt(biased var + eps) * weight + bias. Each kernel must land as close to them as
torch's own float32 ops do (within a float32 rounding or two of the output's size).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer

from dstbench.errors import UserError
from dstbench.kernels import cpu, ops
from dstbench.suites import vit_e2e

_REASON = cpu.unavailable_reason(torch.device("cpu"), torch.float32)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"CPU kernels unavailable: {_REASON}")


def gelu_definition(x: torch.Tensor) -> torch.Tensor:
    """x/2 (1 + erf(x / sqrt 2)) in float64, element by element from math.erf."""
    return torch.tensor([v / 2 * (1 + math.erf(v / math.sqrt(2))) for v in x.double().flatten().tolist()],
                        dtype=torch.float64).reshape(x.shape)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000, 70001])
def test_gelu_is_as_accurate_as_torch_float32(n: int) -> None:
    torch.manual_seed(n)
    x = torch.randn(n) * 4
    got, exact = cpu.gelu(x), gelu_definition(x)
    assert got.shape == x.shape and got.dtype == torch.float32
    if n:
        torch_error = (F.gelu(x).double() - exact).abs().max().item()
        assert (got.double() - exact).abs().max().item() <= 2 * torch_error + 1e-6


def test_gelu_over_the_whole_range_and_at_special_values() -> None:
    x = torch.linspace(-12, 12, 24001)  # past the clamp of the rational erf (|x / sqrt 2| = 4) on both sides
    exact = gelu_definition(x)
    error = (cpu.gelu(x).double() - exact).abs()
    assert (error <= 1e-6 * (1 + exact.abs())).all(), error.max()
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-30, -1e-30, 3e38, -3e38])
    exact = torch.tensor([0.0, 0.0, float("inf"), float("nan"), float("nan"), 5e-31, -5e-31, 3e38, 0.0])
    torch.testing.assert_close(cpu.gelu(special), exact, equal_nan=True)  # torch's own: NaN at inf, inf at 3e38


def test_gelu_keeps_the_shape_and_reads_non_contiguous_input() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 40, 7).transpose(0, 2)
    torch.testing.assert_close(cpu.gelu(x), F.gelu(x), rtol=0, atol=2e-6)


def layer_norm_definition(s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    s = s.double()
    mean = s.mean(-1, keepdim=True)
    var = ((s - mean) ** 2).mean(-1, keepdim=True)
    return (s - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 16), (2, 5, 17), (1, 197, 768), (4, 33)])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_add_layer_norm_is_as_accurate_as_torch_float32(shape: tuple[int, ...], offset: float) -> None:
    torch.manual_seed(sum(shape))
    a, b = torch.randn(shape) + offset, torch.randn(shape)
    weight, bias = torch.randn(shape[-1]), torch.randn(shape[-1])
    s, y = cpu.add_layer_norm(a, b, weight, bias, 1e-6)
    assert torch.equal(s, a + b)
    exact = layer_norm_definition(a + b, weight, bias, 1e-6)
    torch_error = (F.layer_norm(a + b, shape[-1:], weight, bias, 1e-6).double() - exact).abs().max().item()
    assert (y.double() - exact).abs().max().item() <= 2 * torch_error + 2e-6


def test_add_layer_norm_gives_the_same_bits_on_any_thread_count() -> None:
    torch.manual_seed(2)
    a, b, weight, bias = torch.randn(37, 64), torch.randn(37, 64), torch.randn(64), torch.randn(64)
    results = []
    for threads in (1, 2, 5):
        torch.set_num_threads(threads)
        results.append(cpu.add_layer_norm(a, b, weight, bias, 1e-5)[1])
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize(("args", "reason"), [
    ((torch.randn(2, 8), torch.randn(2, 8, dtype=torch.float64), torch.ones(8), torch.zeros(8)), "float32"),
    ((torch.randn(2, 8), torch.randn(1, 8), torch.ones(8), torch.zeros(8)), "one shape"),
    ((torch.randn(2, 8), torch.randn(2, 8), torch.ones(7), torch.zeros(8)), "one shape"),
    ((torch.tensor(1.0), torch.tensor(2.0), torch.ones(1), torch.zeros(1)), "one shape"),
])
def test_add_layer_norm_refuses_bad_input_with_the_reason(args: tuple, reason: str) -> None:
    with pytest.raises(UserError, match=reason):
        cpu.add_layer_norm(*args, 1e-5)


def test_operators_fall_back_to_torch_where_the_kernels_cannot_run() -> None:
    torch.manual_seed(3)
    x = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(ops.gelu(x), F.gelu(x))
    weight, bias = torch.randn(9, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    s, y = ops.add_layer_norm(x, x, weight, bias, 1e-5)
    torch.testing.assert_close(y, F.layer_norm(2 * x, (9,), weight, bias, 1e-5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the kernel and the fallback
@pytest.mark.parametrize("transposed", [False, True])  # a column-major x, as torch's CSR product returns
def test_operators_fake_outputs_match_the_real_ones(dtype: torch.dtype, transposed: bool) -> None:
    torch.manual_seed(5)
    x = torch.randn(6, 4, dtype=dtype).t() if transposed else torch.randn(4, 6, dtype=dtype)
    weight, bias = torch.randn(6, dtype=dtype), torch.randn(6, dtype=dtype)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.gelu_op, (x,), test_utils=checks)
    torch.library.opcheck(ops.add_layer_norm_op, (x, x, weight, bias, 1e-5), test_utils=checks)


def test_operators_have_no_gradient() -> None:
    x = torch.randn(2, 16, requires_grad=True)
    with pytest.raises(UserError, match="no gradient"):
        ops.gelu_op(x).sum().backward()
    with pytest.raises(UserError, match="no gradient"):
        ops.add_layer_norm_op(x, x, torch.ones(16), torch.zeros(16), 1e-5)[1].sum().backward()


def tiny_vit() -> nn.Module:
    torch.manual_seed(4)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    for block in model.encoder.layers:  # non-trivial LayerNorms, so that a mixed-up norm shows
        for norm in (block.ln_1, block.ln_2):
            nn.init.normal_(norm.weight)
            nn.init.normal_(norm.bias)
    return vit_e2e.with_linear_qkv(model).eval()


def test_fused_encoder_computes_torchvisions_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tiny_vit()
    fused = vit_e2e.with_fused_rows(copy.deepcopy(plain))
    assert {n for n, _ in fused.named_parameters()} == {n for n, _ in plain.named_parameters()}
    tokens = torch.randn(2, 5, 32)
    calls = []
    for name in ("gelu", "add_layer_norm"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    with torch.inference_mode():
        expected, got = plain.encoder(tokens), fused.encoder(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert calls.count("gelu") == 3 and calls.count("add_layer_norm") == 1 + 2 * 3  # the kernels ran
    calls.clear()
    y = fused.encoder(tokens.requires_grad_())  # a gradient wanted: torchvision's ops, differentiable
    y.sum().backward()
    assert calls == [] and tokens.grad is not None
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-5)


def test_fused_encoder_refuses_blocks_it_cannot_fuse() -> None:
    model = tiny_vit()
    model.encoder.layers[1].mlp[1] = nn.GELU(approximate="tanh")
    with pytest.raises(ValueError, match="exact"):
        vit_e2e.with_fused_rows(model)
    plain = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64)
    with pytest.raises(ValueError, match="with_linear_qkv"):
        vit_e2e.with_fused_rows(plain)


def test_compiled_fused_encoder_matches_eager() -> None:
    model = vit_e2e.with_fused_rows(tiny_vit())
    tokens = torch.randn(1, 5, 32)
    with torch.no_grad():
        eager = model.encoder(tokens)
        compiled = torch.compile(model.encoder, fullgraph=True, backend="aot_eager")(tokens)
    torch.testing.assert_close(compiled, eager)
