"""The CUDA kernels on a GPU against the pure-torch reference, forward and backward.

Marked ``gpu``: skipped without a CUDA device (tests/conftest.py) or without
CuPy. Run on a GPU machine with ``pytest -m gpu tests/test_kernels_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cupy", reason="CuPy is not installed: pip install dstbench[cuda13] (or [cuda12])")

from dstbench.errors import UserError  # noqa: E402
from dstbench.kernels import cuda as cuda_backend  # noqa: E402
from dstbench.kernels import ops, reference  # noqa: E402
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
DEV = "cuda"


def assert_close(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, dtype: torch.dtype) -> None:
    """|got - want| <= 8 * eps(dtype) * (the same sum over |terms|); want and bound in float64."""
    assert got.shape == want.shape and got.dtype == dtype and got.device == want.device
    err = (got.double() - want).abs()
    limit = 8 * EPS[dtype] * bound + 1e-300
    assert bool((err <= limit).all()), f"max error {err.max().item():.3g}, limit {limit.max().item():.3g}"


def diag_data(out_f, in_f, batch, k, dtype, sort=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    p, d = max(out_f, in_f), min(out_f, in_f)
    offsets = torch.randperm(p, generator=g)[:k]
    offsets = torch.sort(offsets).values if sort else offsets
    x = torch.randn(batch, in_f, generator=g)
    values = torch.randn(k, d, generator=g)
    dy = torch.randn(batch, out_f, generator=g)
    return (t.to(DEV) for t in (x.to(dtype), offsets, values.to(dtype), dy.to(dtype)))


DIAG_CASES = [  # out, in, batch, K
    (1, 1, 1, 1), (5, 3, 1, 5), (3, 5, 2, 1), (150, 40, 20, 30), (40, 150, 17, 150), (70, 70, 33, 12),
    (130, 7, 5, 130), (7, 130, 16, 40), (9, 4, 3, 0), (8, 8, 1, 5), (100, 100, 24, 30), (3072, 768, 197, 308), (768, 3072, 1, 31), (768, 768, 256, 77),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_f, in_f, batch, k", DIAG_CASES)
def test_diagonal_matches_reference(out_f, in_f, batch, k, dtype) -> None:
    x, offsets, values, dy = diag_data(out_f, in_f, batch, k, dtype)
    x64, v64, dy64 = x.double(), values.double(), dy.double()
    assert_close(cuda_backend.diag_mm(x, offsets, values, out_f), reference.diag_mm(x64, offsets, v64, out_f),
                 reference.diag_mm(x64.abs(), offsets, v64.abs(), out_f), dtype)
    dense = DiagonalWeight(offsets, v64, out_f, in_f).to_dense()
    assert_close(cuda_backend.diag_mm(dy, offsets, values, in_f, transpose=True), dy64 @ dense,
                 dy64.abs() @ dense.abs(), dtype)
    assert_close(cuda_backend.diag_values_grad(dy, x, offsets), reference.diag_values_grad(dy64, x64, offsets),
                 reference.diag_values_grad(dy64.abs(), x64.abs(), offsets), dtype)


@pytest.mark.parametrize("batch", [3, 64])
def test_diagonal_unsorted_offsets(batch: int) -> None:
    x, offsets, values, _ = diag_data(300, 100, batch, 90, torch.float32, sort=False, seed=1)
    x64, v64 = x.double(), values.double()
    assert_close(cuda_backend.diag_mm(x, offsets, values, 300), reference.diag_mm(x64, offsets, v64, 300),
                 reference.diag_mm(x64.abs(), offsets, v64.abs(), 300), torch.float32)


def condensed_data(out_f, in_f, batch, k, ablate, index_dtype, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(out_f, in_f, generator=g).argsort(dim=1)[:, :k]
    mask = torch.zeros(out_f, in_f, dtype=torch.bool).scatter_(1, keep, True)
    if ablate:
        mask[::ablate] = False
    w = CondensedWeight.from_mask(torch.randn(out_f, in_f, generator=g), mask)
    x = torch.randn(batch, in_f, generator=g)
    dy = torch.randn(batch, out_f, generator=g)
    tensors = (x.to(dtype), w.values.to(dtype), w.indices.to(index_dtype), w.active_rows, dy.to(dtype))
    return (t.to(DEV) for t in tensors)


CONDENSED_CASES = [  # out, in, batch, k, ablate every n-th row (0: none), index dtype
    (1, 1, 1, 1, 0, torch.int16), (5, 3, 2, 1, 2, torch.int16), (50, 40, 20, 7, 3, torch.int32),
    (40, 150, 37, 13, 0, torch.int16), (20, 30, 5, 30, 4, torch.int64), (7, 7000, 3, 69, 2, torch.int32),
    (6, 9, 4, 3, 1, torch.int32), (3072, 768, 197, 77, 5, torch.int16), (768, 3072, 1, 307, 0, torch.int16),
    (64, 20000, 40, 200, 0, torch.int32),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_f, in_f, batch, k, ablate, index_dtype", CONDENSED_CASES)
def test_condensed_matches_reference(out_f, in_f, batch, k, ablate, index_dtype, dtype) -> None:
    x, values, indices, rows, dy = condensed_data(out_f, in_f, batch, k, ablate, index_dtype, dtype)
    x64, v64, dy64 = x.double(), values.double(), dy.double()
    assert_close(cuda_backend.condensed_mm(x, values, indices, rows, out_f),
                 reference.condensed_mm(x64, v64, indices, rows, out_f),
                 reference.condensed_mm(x64.abs(), v64.abs(), indices, rows, out_f), dtype)
    assert_close(cuda_backend.condensed_values_grad(dy, x, indices, rows),
                 reference.condensed_values_grad(dy64, x64, indices, rows),
                 reference.condensed_values_grad(dy64.abs(), x64.abs(), indices, rows), dtype)
    assert_close(cuda_backend.condensed_input_grad(dy, values, indices, rows, in_f),
                 reference.condensed_input_grad(dy64, v64, indices, rows, in_f),
                 reference.condensed_input_grad(dy64.abs(), v64.abs(), indices, rows, in_f), dtype)


@pytest.mark.parametrize("out_f, in_f, batch", [(12, 5, 3), (5, 12, 17), (8, 8, 1), (20, 20, 16)])
def test_diagonal_gradcheck(out_f: int, in_f: int, batch: int) -> None:
    x, offsets, values, _ = diag_data(out_f, in_f, batch, max(1, max(out_f, in_f) // 2), torch.float64)
    x.requires_grad_(True)
    values.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, v: ops.diag_mm(a, offsets, v, out_f, impl="cuda"), (x, values))


@pytest.mark.parametrize("out_f, in_f, batch", [(12, 9, 3), (6, 20, 17)])
def test_condensed_gradcheck(out_f: int, in_f: int, batch: int) -> None:
    x, values, indices, rows, _ = condensed_data(out_f, in_f, batch, 4, 3, torch.int16, torch.float64)
    x.requires_grad_(True)
    values.requires_grad_(True)
    fn = lambda a, v: ops.condensed_mm(a, v, indices, rows, out_f, impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, values))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autograd_matches_reference_impl(dtype: torch.dtype) -> None:
    """Backward through kernels.ops with impl='cuda' equals impl='reference' (3-D input, batch 2 x 10)."""
    x, offsets, values, _ = diag_data(96, 40, 20, 30, dtype)
    grads = {}
    for impl in ("cuda", "reference"):
        a = x.double().reshape(2, 10, 40).detach().requires_grad_(True)
        v = values.double().detach().requires_grad_(True)
        if impl == "cuda":
            a = a.detach().to(dtype).requires_grad_(True)
            v = v.detach().to(dtype).requires_grad_(True)
        (ops.diag_mm(a, offsets, v, 96, impl=impl).double() ** 2).sum().backward()
        grads[impl] = (a.grad.double(), v.grad.double())
    for got, want in zip(grads["cuda"], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=50 * EPS[dtype], atol=50 * EPS[dtype] * want.abs().max().item())


def test_runs_on_torch_current_stream() -> None:
    """Work queued on a side stream is ordered: the kernel sees x written just before it on that stream."""
    x, offsets, values, _ = diag_data(256, 256, 64, 64, torch.float32)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keep the side stream busy so a wrong stream would race
        x2 = x * 2
        y = cuda_backend.diag_mm(x2, offsets, values, 256)
    side.synchronize()
    want = reference.diag_mm(x.double() * 2, offsets, values.double(), 256)
    assert_close(y, want, reference.diag_mm(x.double().abs() * 2, offsets, values.double().abs(), 256), torch.float32)


def test_refuses_unsupported_input() -> None:
    x = torch.randn(2, 3, device=DEV, dtype=torch.float32)
    with pytest.raises(UserError, match="unsupported"):
        cuda_backend.diag_mm(x.to(torch.int32), torch.tensor([0], device=DEV), torch.ones(1, 3, device=DEV), 3)
    with pytest.raises(UserError, match="shape"):
        cuda_backend.diag_mm(x, torch.tensor([0], device=DEV), torch.ones(1, 2, device=DEV), 3)
    assert cuda_backend.unavailable_reason(x.device, torch.float32) is None
