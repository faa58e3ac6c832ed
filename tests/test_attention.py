"""The CPU attention kernel (kernels/cpu/attention.cpp) and the ``self_attention`` operator around it.

The oracle is attention's definition, softmax(q k^T / sqrt(dh)) v per head, computed by torch in float64: the
kernel must be as accurate as torch's own float32 ``scaled_dot_product_attention`` on the same input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dstbench.errors import UserError
from dstbench.kernels import cpu, ops, reference
from dstbench.suites import vit_e2e

_REASON = cpu.unavailable_reason(torch.device("cpu"), torch.float32)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"CPU kernels unavailable: {_REASON}")


def definition(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) v per head, written out in float64; qkv (B, T, 3 D) -> (B, T, D)."""
    b, t, width = qkv.shape
    d = width // 3
    q, k, v = qkv.double().reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, t, d)


def torch_float32_error(qkv: torch.Tensor, heads: int) -> float:
    """How far torch's float32 attention lands from the float64 definition on this input."""
    return (reference.self_attention(qkv, heads).double() - definition(qkv, heads)).abs().max().item()


@pytest.mark.parametrize(("batch", "tokens", "heads", "head_width"), [
    (1, 1, 1, 16), (1, 5, 2, 16), (1, 6, 1, 32), (2, 7, 3, 32), (1, 17, 2, 48), (2, 50, 4, 80), (1, 197, 12, 64),
])
@pytest.mark.parametrize("spread", [1.0, 10.0])
def test_kernel_is_as_accurate_as_torch_float32(batch: int, tokens: int, heads: int, head_width: int,
                                                spread: float) -> None:
    torch.manual_seed(tokens * heads + head_width)
    qkv = torch.randn(batch, tokens, 3 * heads * head_width) * spread
    got = cpu.self_attention(qkv, heads)
    assert got.shape == (batch, tokens, heads * head_width) and got.dtype == torch.float32
    error = (got.double() - definition(qkv, heads)).abs().max().item()
    assert error <= 4 * torch_float32_error(qkv, heads) + 1e-6


def test_kernel_gives_the_same_bits_on_any_thread_count() -> None:
    torch.manual_seed(0)
    qkv = torch.randn(1, 23, 3 * 2 * 16)  # 2 heads: 3 and 5 threads split each head's query rows
    results = []
    for threads in (1, 3, 5):
        torch.set_num_threads(threads)
        results.append(cpu.self_attention(qkv, 2))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_kernel_softmax_survives_huge_logits() -> None:
    qkv = torch.zeros(1, 3, 3 * 16)
    qkv[0, :, :16] = 100.0  # q
    qkv[0, 0, 16:32] = 100.0  # key 0 scores 10^4 / 4 against every query, the others 0
    qkv[0, :, 32:] = torch.arange(3.0).unsqueeze(1)  # v of token j is j everywhere
    got = cpu.self_attention(qkv, 1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.zeros(1, 3, 16))  # all weight on key 0, whose v is 0


def test_kernel_reads_non_contiguous_qkv() -> None:
    torch.manual_seed(1)
    qkv = torch.randn(2, 3 * 32, 9).transpose(1, 2)  # (2, 9, 96), not contiguous
    torch.testing.assert_close(cpu.self_attention(qkv, 2), reference.self_attention(qkv, 2))


@pytest.mark.parametrize(("qkv", "heads", "reason"), [
    (torch.randn(1, 4, 3 * 16, dtype=torch.float64), 1, "float32"),
    (torch.randn(1, 4, 3 * 8), 1, "multiple of 16"),
    (torch.randn(1, 4, 50), 1, "divisible"),
    (torch.randn(4, 3 * 16), 1, "divisible"),
])
def test_unsupported_input_is_refused_with_the_reason(qkv: torch.Tensor, heads: int, reason: str) -> None:
    assert reason in cpu.attention_unavailable(qkv, heads)
    with pytest.raises(UserError, match=reason):
        cpu.self_attention(qkv, heads)


def test_operator_falls_back_to_torch_where_the_kernel_cannot_run() -> None:
    torch.manual_seed(2)
    for qkv in (torch.randn(2, 5, 3 * 2 * 8), torch.randn(2, 5, 3 * 2 * 16, dtype=torch.float64)):
        torch.testing.assert_close(ops.self_attention(qkv, 2), reference.self_attention(qkv, 2))


def test_operator_has_no_gradient() -> None:
    qkv = torch.randn(1, 4, 3 * 16, requires_grad=True)
    y = ops.self_attention_op(qkv, 1)
    with pytest.raises(UserError, match="no gradient"):
        y.sum().backward()


def attention_module() -> vit_e2e.LinearQKVAttention:
    torch.manual_seed(3)
    return vit_e2e.LinearQKVAttention.from_mha(nn.MultiheadAttention(64, 2, batch_first=True)).eval()


def test_module_runs_the_kernel_for_inference_and_torch_for_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    attn, x = attention_module(), torch.randn(2, 11, 64)
    with torch.no_grad():
        expected = attn(x, x, x)[0]
    calls = []
    real = cpu.self_attention
    monkeypatch.setattr(cpu, "self_attention", lambda qkv, heads: calls.append(heads) or real(qkv, heads))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, x, x)[0], expected)
    assert calls == [2]
    y = attn(x, x, x)[0]  # parameters that want gradients: torch's attention, differentiable
    y.sum().backward()
    assert calls == [2] and attn.qkv.weight.grad is not None
    torch.testing.assert_close(y.detach(), expected)


def test_module_with_the_kernel_equals_multihead_attention() -> None:
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(96, 3, batch_first=True).eval()
    attn = vit_e2e.LinearQKVAttention.from_mha(mha).eval()
    x = torch.randn(2, 13, 96)
    with torch.inference_mode():
        torch.testing.assert_close(attn(x, x, x)[0], mha(x, x, x, need_weights=False)[0])


def test_compiled_module_matches_eager() -> None:
    attn, x = attention_module(), torch.randn(1, 9, 64)
    with torch.no_grad():
        eager = attn(x, x, x)[0]
        compiled = torch.compile(lambda t: attn(t, t, t)[0], fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
