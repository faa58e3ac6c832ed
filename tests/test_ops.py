"""Autograd through kernels.ops (and the layers) for every implementation that runs on CPU: reference and cpu."""

from __future__ import annotations

import copy
import os
import pickle
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dstbench.errors import UserError
from dstbench.kernels import cpu, ops
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight, diagonal_coords
from dstbench.kernels.layers import CondensedLinear, DiagonalLinear

CPU_OK = cpu.unavailable_reason(torch.device("cpu"), torch.float32) is None
IMPLS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not CPU_OK, reason="CPU kernels unavailable"))]
GEOMETRIES = [(7, 4), (4, 7), (5, 5), (1, 3), (3, 1)]  # out > in, out < in, square, out == 1, in == 1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diag_inputs(out_f: int, in_f: int, batch: int, dtype: torch.dtype = torch.float64):
    p, d = max(out_f, in_f), min(out_f, in_f)
    offsets = torch.tensor(sorted({0, p // 2, p - 1}))
    values = torch.randn(offsets.numel(), d, generator=gen(1), dtype=dtype, requires_grad=True)
    x = torch.randn(batch, in_f, generator=gen(2), dtype=dtype, requires_grad=True)
    return x, offsets, values


def condensed_inputs(out_f: int, in_f: int, batch: int, dtype: torch.dtype = torch.float64):
    k = max(1, in_f // 2)
    rows = torch.arange(0, out_f, 2)  # every other row ablated
    indices = torch.stack([torch.randperm(in_f, generator=gen(r))[:k] for r in range(rows.numel())]).to(torch.int16)
    values = torch.randn(rows.numel(), k, generator=gen(1), dtype=dtype, requires_grad=True)
    x = torch.randn(batch, in_f, generator=gen(2), dtype=dtype, requires_grad=True)
    return x, values, indices, rows


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("out_f, in_f", GEOMETRIES)
@pytest.mark.parametrize("batch", [1, 5])
def test_diag_gradcheck(impl: str, out_f: int, in_f: int, batch: int) -> None:
    x, offsets, values = diag_inputs(out_f, in_f, batch)
    assert torch.autograd.gradcheck(lambda a, v: ops.diag_mm(a, offsets, v, out_f, impl), (x, values))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("out_f, in_f", GEOMETRIES)
@pytest.mark.parametrize("batch", [1, 5])
def test_condensed_gradcheck(impl: str, out_f: int, in_f: int, batch: int) -> None:
    x, values, indices, rows = condensed_inputs(out_f, in_f, batch)
    assert torch.autograd.gradcheck(lambda a, v: ops.condensed_mm(a, v, indices, rows, out_f, impl), (x, values))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("out_f, in_f", [(40, 24), (24, 40), (32, 32)])
def test_diag_grads_match_dense(impl: str, dtype: torch.dtype, out_f: int, in_f: int) -> None:
    x, offsets, values = diag_inputs(out_f, in_f, 9, dtype)
    dy = torch.randn(9, out_f, generator=gen(3), dtype=dtype)
    ops.diag_mm(x, offsets, values, out_f, impl).backward(dy)
    x64 = x.detach().double().requires_grad_()
    v64 = values.detach().double().requires_grad_()
    rows, cols = diagonal_coords(offsets, out_f, in_f)
    w = torch.zeros(out_f, in_f, dtype=torch.float64).index_put((rows, cols), v64)
    (x64 @ w.T).backward(dy.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 0.1}[dtype]
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(values.grad.double(), v64.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_condensed_grads_match_dense(impl: str, dtype: torch.dtype) -> None:
    x, values, indices, rows = condensed_inputs(30, 20, 9, dtype)
    dy = torch.randn(9, 30, generator=gen(3), dtype=dtype)
    ops.condensed_mm(x, values, indices, rows, 30, impl).backward(dy)
    x64 = x.detach().double().requires_grad_()
    v64 = values.detach().double().requires_grad_()
    r = rows.unsqueeze(1).expand_as(indices)
    w = torch.zeros(30, 20, dtype=torch.float64).index_put((r, indices.long()), v64)
    (x64 @ w.T).backward(dy.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 0.1}[dtype]
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(values.grad.double(), v64.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_layers_take_non_contiguous_and_batched_input(impl: str) -> None:
    w, bias = torch.randn(24, 16, generator=gen(0)), torch.randn(24, generator=gen(1))
    diag = DiagonalLinear(DiagonalWeight.top_k(w, 0.5, bias), impl=impl)
    cond = CondensedLinear(CondensedWeight.top_k(w, 0.5, bias), impl=impl)
    x = torch.randn(16, 3, 5, generator=gen(2)).permute(1, 2, 0)  # (3, 5, 16), not contiguous
    assert not x.is_contiguous()
    for layer, dense in ((diag, DiagonalWeight.top_k(w, 0.5).to_dense()), (cond, CondensedWeight.top_k(w, 0.5).to_dense())):
        assert layer.impl == impl
        y = layer(x)
        assert y.shape == (3, 5, 24)
        torch.testing.assert_close(y, F.linear(x, dense, bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_input_grad(impl: str) -> None:
    x, offsets, values = diag_inputs(6, 4, 5)
    xt = x.detach().t().contiguous().t().requires_grad_()  # same values, column-major
    ops.diag_mm(xt, offsets, values, 6, impl).sum().backward()
    x2 = x.detach().requires_grad_()
    ops.diag_mm(x2, offsets, values.detach(), 6, "reference").sum().backward()
    torch.testing.assert_close(xt.grad, x2.grad)


@pytest.mark.skipif(not CPU_OK, reason="CPU kernels unavailable")
def test_auto_picks_cpu_and_explicit_requests_are_checked() -> None:
    assert ops.select_impl("cpu", torch.float32) == "cpu"
    assert ops.select_impl("cpu", torch.bfloat16, "reference") == "reference"
    assert ops.select_impl("cpu", torch.float16) == "cpu"
    with pytest.raises(UserError, match="int32"):
        ops.select_impl("cpu", torch.int32, "cpu")
    with pytest.raises(UserError, match="unknown kernel"):
        ops.select_impl("cpu", torch.float32, "fast")


class _SeenOps(TorchDispatchMode):
    """Records the name of every operator that reaches the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _products() -> list:
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(12, 9, generator=gen), torch.randn(12, generator=gen)
    d, c = DiagonalWeight.top_k(w, 0.5, b), CondensedWeight.top_k(w, 0.5, b)
    csr = w.to_sparse_csr()
    return [
        ("dstbench.diag_mm", lambda x: ops.diag_mm(x, d.offsets, d.values, 12, bias=d.bias), d.to_dense()),
        ("dstbench.condensed_mm",
         lambda x: ops.condensed_mm(x, c.values, c.indices, c.active_rows, 12, bias=c.bias), c.to_dense()),
        ("dstbench.csr_mm", lambda x: ops.csr_mm(x, csr.crow_indices(), csr.col_indices(), csr.values(), 12, bias=b), w),
    ]


@pytest.mark.parametrize("name, product, weight", _products(), ids=lambda p: p if isinstance(p, str) else "")
def test_eager_inference_skips_the_dispatcher_but_modes_and_autograd_see_the_operator(
        monkeypatch: pytest.MonkeyPatch, name, product, weight) -> None:
    x = torch.randn(3, 9)
    bias = product(torch.zeros(1, 9))[0]
    with torch.no_grad(), _SeenOps() as mode:  # a dispatch mode must see the operator
        y_mode = product(x)
    assert f"{name}.default" in mode.names
    with monkeypatch.context() as patch, torch.inference_mode():  # eager, no gradient: the kernel is called directly
        patch.setattr(ops, name.split(".")[1] + "_op", None)
        y_direct = product(x)
    torch.testing.assert_close(y_direct, y_mode)  # ... with the same result
    torch.testing.assert_close(y_direct, x @ weight.T + bias)
    x.requires_grad_(True)
    y = product(x)
    if name != "dstbench.csr_mm":  # CSR is inference only
        assert y.grad_fn is not None
        y.sum().backward()
        torch.testing.assert_close(x.grad, weight.sum(0).expand(3, -1))


@pytest.mark.skipif(not CPU_OK, reason="CPU kernels unavailable")
def test_layers_rebind_when_buffers_change_and_fall_back_for_other_input() -> None:
    w, bias = torch.randn(24, 16, generator=gen(0)), torch.randn(24, generator=gen(1))
    x = torch.randn(5, 16, generator=gen(2))
    for layer in (DiagonalLinear(DiagonalWeight.top_k(w, 0.5, bias)), CondensedLinear(CondensedWeight.top_k(w, 0.5, bias))):
        dense = (layer._product(torch.eye(16)) - layer.bias).T  # the layer's weight (out, in), by the operator path
        with torch.no_grad():
            torch.testing.assert_close(layer(x), x @ dense.T + layer.bias)  # the bound product
            first = layer.bound_product()
            layer(x)
            assert layer.bound_product() is first  # unchanged buffers keep their binding
            layer.bias = torch.zeros(24)  # a replaced buffer is rebound
            torch.testing.assert_close(layer(x), x @ dense.T)
            assert layer.bound_product() is not first
            layer.values.mul_(2)  # an in-place update is seen by the bound product (or rebinds a copy of it)
            torch.testing.assert_close(layer(x), 2 * x @ dense.T)
            torch.testing.assert_close(layer(x[:1]), 2 * x[:1] @ dense.T)
            copied = copy.deepcopy(layer)  # copies and pickles leave the native binding behind
            pickle.loads(pickle.dumps(layer))
            torch.testing.assert_close(copied(x), layer(x))
            with pytest.raises(UserError, match="mixed dtypes"):  # other input reaches the general checks
                layer(x.double())
            torch.testing.assert_close(layer(torch.empty(0, 16)), torch.empty(0, 24))
            layer.double()
            torch.testing.assert_close(layer(x.double()), 2 * x.double() @ dense.double().T, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not CPU_OK, reason="CPU kernels unavailable")
def test_layers_guarded_native_call_runs_only_what_the_python_path_would_run_directly(monkeypatch) -> None:
    if os.environ.get("DSTBENCH_NATIVE_CALLER") == "0":
        pytest.skip("DSTBENCH_NATIVE_CALLER=0 switches the native call path off")
    w, bias = torch.randn(24, 16, generator=gen(0)), torch.randn(24, generator=gen(1))
    x = torch.randn(5, 16, generator=gen(2))
    for layer in (DiagonalLinear(DiagonalWeight.top_k(w, 0.5, bias)), CondensedLinear(CondensedWeight.top_k(w, 0.5, bias))):
        dense = (layer._product(torch.eye(16)) - layer.bias).T  # the layer's weight (out, in), by the operator path
        layer.bound_product()
        fast = layer._fast
        torch.testing.assert_close(fast(x, layer._buffers), x @ dense.T + layer.bias)
        x3 = x.reshape(5, 1, 16)  # leading dimensions run as rows, as ops.batched runs them
        torch.testing.assert_close(fast(x3, layer._buffers), (x @ dense.T + layer.bias).reshape(5, 1, 24))
        assert fast(x[0], layer._buffers).shape == (24,)
        with monkeypatch.context() as patch, torch.inference_mode():  # a plain eager call never reaches Python's checks
            patch.setattr(ops, "direct", None)
            torch.testing.assert_close(layer(x3), (x @ dense.T + layer.bias).reshape(5, 1, 24))
        # what ops.direct sends to the operators: a tensor subclass, a gradient to record, a dispatch mode
        assert fast(torch.nn.Parameter(x), layer._buffers) is None
        x_grad = x.clone().requires_grad_(True)
        assert fast(x_grad, layer._buffers) is None
        assert layer(x_grad).grad_fn is not None
        with torch.no_grad():
            assert fast(x_grad, layer._buffers) is not None
        with _SeenOps() as mode:
            assert fast(x, layer._buffers) is None
            layer(x)
        assert any(name.startswith("dstbench.") for name in mode.names)
        # x the kernels do not take, and buffers that are not the ones bound
        assert fast(x.T.contiguous().T, layer._buffers) is None and fast(x.double(), layer._buffers) is None
        assert fast(torch.empty(0, 16), layer._buffers) is None and fast(torch.randn(5, 15), layer._buffers) is None
        assert fast(x, dict(layer._buffers)) is not None
        assert fast(x, {**layer._buffers, "bias": torch.zeros(24)}) is None
        assert fast(x, dict(reversed(layer._buffers.items()))) is None
        assert fast(x, {**layer._buffers, "extra": None}) is None
        for name in layer.copied:  # an in-place change of a copied buffer: the layer rebinds
            with torch.no_grad():
                layer._buffers[name].add_(0)
            assert fast(x, layer._buffers) is None
            with torch.no_grad():
                torch.testing.assert_close(layer(x), x @ dense.T + layer.bias)
            assert layer._fast is not fast and layer._fast(x, layer._buffers) is not None
            fast = layer._fast
        layer.register_buffer("extra", torch.zeros(1))  # one rule for both paths: a buffer added rebinds too
        with torch.no_grad():
            torch.testing.assert_close(layer(x), x @ dense.T + layer.bias)
        assert layer._fast is not fast and layer._fast(x, layer._buffers) is not None
        fast = layer._fast
        product, held = layer.bound_product(), sys.getrefcount(layer.bound_product())
        layer._fast = fast = None
        assert sys.getrefcount(product) == held - 1  # the guarded call holds its product, whose copy it reads
    with torch.inference_mode():  # inference tensors keep no version counter: only replacing a buffer rebinds
        layer = DiagonalLinear(DiagonalWeight.top_k(w, 0.5, bias))
        layer(x)
        fast, bound = layer._fast, dict(layer._buffers)
        assert fast(x, layer._buffers) is not None
        layer.bias = torch.zeros(24)
        assert fast(x, layer._buffers) is None
        torch.testing.assert_close(layer(x), fast(x, bound) - bias)


@pytest.mark.skipif(not CPU_OK, reason="CPU kernels unavailable")
def test_native_call_path_matches_the_python_path_and_reports_kernel_errors() -> None:
    from dstbench.kernels.cpu import caller

    if os.environ.get("DSTBENCH_NATIVE_CALLER") == "0":
        pytest.skip("DSTBENCH_NATIVE_CALLER=0 switches the native call path off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build warns: here it fails the test with the build's error
        assert caller.native() is not None
    w, bias = torch.randn(40, 24, generator=gen(0)), torch.randn(40, generator=gen(1))
    for x in (torch.randn(1, 24, generator=gen(2)), torch.randn(7, 24, generator=gen(3))):
        for bound in (cpu.bind_diag_mm(*_diag_parts(w, bias)), cpu.bind_condensed_mm(*_condensed_parts(w, bias))):
            assert bound._native is not None
            y = bound(x)
            bound._native = None  # the Python path on the same binding
            torch.testing.assert_close(y, bound(x), rtol=0, atol=0)
    # indices past in_features: the kernel's check (float64: no lane-packed copy, whose packing would refuse them)
    values, indices, rows = torch.randn(40, 3).double(), torch.full((40, 3), 30, dtype=torch.int16), torch.arange(40)
    bound = cpu.bind_condensed_mm(values, indices, rows, 24, 40)
    with pytest.raises(UserError, match="condensed indices must lie in"):
        bound(torch.randn(1, 24).double())
    with pytest.raises(UserError, match="condensed indices must lie in"):  # float32: refused at binding
        cpu.bind_condensed_mm(values.float(), indices, rows, 24, 40)


def _diag_parts(w: torch.Tensor, bias: torch.Tensor) -> tuple:
    d = DiagonalWeight.top_k(w, 0.5, bias)
    return d.offsets, d.values, w.shape[1], w.shape[0], d.bias


def _condensed_parts(w: torch.Tensor, bias: torch.Tensor) -> tuple:
    c = CondensedWeight.top_k(w, 0.5, bias)
    return c.values, c.indices, c.active_rows, w.shape[1], w.shape[0], c.bias


@pytest.mark.skipif(not CPU_OK, reason="CPU kernels unavailable")
def test_bound_products_keep_the_python_path_when_the_native_one_cannot_be_built(monkeypatch) -> None:
    from torch.utils import cpp_extension

    from dstbench.kernels.cpu import caller

    def broken(**kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(caller, "_state", {})
    monkeypatch.delenv("DSTBENCH_NATIVE_CALLER", raising=False)
    w, bias = torch.randn(40, 24, generator=gen(0)), torch.randn(40, generator=gen(1))
    with pytest.warns(UserWarning, match="could not be built .Ninja is required"):
        bound = cpu.bind_diag_mm(*_diag_parts(w, bias))
    assert bound._native is None
    x = torch.randn(3, 24, generator=gen(2))
    torch.testing.assert_close(bound(x), x @ DiagonalWeight.top_k(w, 0.5, bias).to_dense().T + bias)
    monkeypatch.setattr(caller, "_state", {})
    monkeypatch.setenv("DSTBENCH_NATIVE_CALLER", "0")  # switched off on purpose: no build, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu.bind_diag_mm(*_diag_parts(w, bias))._native is None
