"""The sparse products as PyTorch operators: ``opcheck`` on every ``dstbench::`` operator, and converted models
(dense, RigL's CSR, SRigL's condensed, DynaDiag's diagonal) captured whole by ``torch.compile(fullgraph=True)``
and ``torch.export``, matching eager, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dstbench import registry
from dstbench.errors import UserError
from dstbench.kernels import cpu, ops
from dstbench.kernels.layers import CondensedLinear, CSRLinear, DenseLinear, DiagonalLinear

CPU_OK = cpu.unavailable_reason(torch.device("cpu"), torch.float32) is None
IMPLS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not CPU_OK, reason="CPU kernels unavailable"))]
FORMATS = {"dense": DenseLinear, "rigl": CSRLinear, "srigl": CondensedLinear, "dynadiag": DiagonalLinear}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # every test compiles its own models; no recompile limit carried over
    yield
    torch._dynamo.reset()


def rand(*shape: int, seed: int, grad: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_(grad)


def op_samples(impl: str) -> list[tuple[torch._ops.OpOverload, tuple]]:
    """One call of every operator: non-square and square diagonal geometries, an ablated condensed row, bias or not."""
    samples = []
    for out_f, in_f in ((7, 4), (5, 5)):
        offsets, d = torch.tensor([0, 2, max(out_f, in_f) - 1]), min(out_f, in_f)
        x, dy, values = rand(3, in_f, seed=1, grad=True), rand(3, out_f, seed=2), rand(3, d, seed=3, grad=True)
        samples += [
            (ops.diag_mm_op, (x, offsets, values, out_f, impl, rand(out_f, seed=4, grad=True))),
            (ops.diag_mm_op, (x, offsets, values, out_f, impl)),
            (ops.diag_input_grad_op, (dy, offsets, values.detach(), in_f, impl)),
            (ops.diag_values_grad_op, (dy, x.detach(), offsets, impl)),
        ]
    indices, rows = torch.tensor([[0, 3], [2, 1], [4, 0]], dtype=torch.int16), torch.tensor([0, 2, 3])
    x, dy, values = rand(3, 5, seed=1, grad=True), rand(3, 6, seed=2), rand(3, 2, seed=3, grad=True)
    samples += [
        (ops.condensed_mm_op, (x, values, indices, rows, 6, impl, rand(6, seed=4, grad=True))),
        (ops.condensed_mm_op, (x, values, indices.int(), rows, 6, impl)),
        (ops.condensed_input_grad_op, (dy, values.detach(), indices, rows, 5, impl)),
        (ops.condensed_values_grad_op, (dy, x.detach(), indices, rows, impl)),
    ]
    return samples


@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck_diagonal_and_condensed(impl: str) -> None:
    for op, args in op_samples(impl):
        torch.library.opcheck(op, args)  # schema, autograd registration, fake tensor, aot_autograd (dynamic)


def test_opcheck_csr_and_its_backward_refuses() -> None:
    layer = CSRLinear(rand(6, 5, seed=0) * (rand(6, 5, seed=1) > 0), rand(6, seed=2))
    x = rand(3, 5, seed=3)
    for bias in (layer.bias, None):
        torch.library.opcheck(ops.csr_mm_op, (x, layer.crow_indices, layer.col_indices, layer.values, 6, bias))
    with pytest.raises(UserError, match="no gradient"):
        layer(x.clone().requires_grad_()).sum().backward()


def converted(method: str, impl: str = "auto") -> nn.Module:
    """A three-linear MLP (12 -> 20 -> 16 -> 5) with every linear in ``method``'s inference format."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.GELU(), nn.Linear(16, 5))
    options = {} if method == "dense" else {"sparsity": 0.75, "impl": impl}
    model = registry.make_method(method, **options).sparsify_model(model).eval()
    assert all(isinstance(model[i], FORMATS[method]) for i in (0, 2, 4))
    return model


@pytest.mark.parametrize("method", FORMATS)
def test_compile_fullgraph_matches_eager(method: str) -> None:
    model, x = converted(method), rand(2, 3, 12, seed=5, dtype=torch.float32)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("method", FORMATS)
def test_export_matches_eager_and_holds_the_operators(method: str) -> None:
    model, x = converted(method), rand(4, 12, seed=5, dtype=torch.float32)
    with torch.no_grad():
        want = model(x)  # eager first: the layers bind their guarded native call, which export must not take
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), want)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    expected = {"rigl": "dstbench.csr_mm.default", "srigl": "dstbench.condensed_mm.default",
                "dynadiag": "dstbench.diag_mm.default"}.get(method)
    assert expected is None or expected in targets, targets


def test_inductor_compiles_a_model_mixing_every_format() -> None:
    mixed = nn.Sequential(converted("dynadiag")[0], nn.ReLU(), converted("srigl")[2], nn.GELU(),
                          converted("rigl")[4], nn.Tanh(), DenseLinear(5, 3)).eval()
    x = rand(3, 12, seed=6, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(mixed, fullgraph=True)(x), mixed(x))


@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_backward_matches_eager(impl: str) -> None:
    """Training through the operators: aot_autograd traces the registered backward into the compiled graph."""
    x = rand(4, 6, seed=1, grad=True)
    d_values, c_values, bias = rand(2, 6, seed=2, grad=True), rand(9, 3, seed=3, grad=True), rand(9, seed=4, grad=True)
    offsets, rows = torch.tensor([1, 8]), torch.arange(9)
    indices = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(r))[:3] for r in range(9)]).int()

    def loss(x, d_values, c_values, bias):
        h = torch.relu(ops.diag_mm(x, offsets, d_values, 9, impl))  # (4, 6) -> (4, 9), out > in
        return ops.condensed_mm(h, c_values, indices, rows, 9, impl, bias=bias).square().sum()

    inputs = (x, d_values, c_values, bias)
    want = torch.autograd.grad(loss(*inputs), inputs)
    got = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(*inputs), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.skipif(not CPU_OK, reason="CPU kernels unavailable")
def test_cpu_gradient_kernels_take_expanded_gradients() -> None:
    """The gradient operators pass dy as autograd gives it, here expanded (strides 0, as ``y.sum()`` gives);
    the CPU kernels once read a contiguous copy that was already freed (found by opcheck)."""
    x, dy = rand(3, 4, seed=1), torch.ones(1, 1, dtype=torch.float64).expand(3, 7)
    offsets, values = torch.tensor([0, 2, 6]), rand(3, 4, seed=2)
    indices, rows = torch.tensor([[0, 3], [2, 1]], dtype=torch.int16), torch.tensor([1, 5])
    c_values = rand(2, 2, seed=3)
    for impl_args in (("diag_values_grad", (dy, x, offsets)),
                      ("diag_mm", (dy, offsets, values, 4, True)),
                      ("condensed_values_grad", (dy, x, indices, rows)),
                      ("condensed_input_grad", (dy, c_values, indices, rows, 4))):
        name, args = impl_args
        want = getattr(ops.backend("reference"), name)(*args)
        torch.testing.assert_close(getattr(cpu, name)(*args), want)
