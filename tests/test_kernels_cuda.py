"""The CUDA kernels on a GPU against the pure-torch reference, forward and backward.

Marked ``gpu``: skipped without a CUDA device (tests/conftest.py) or without
CuPy. Run on a GPU machine with ``pytest -m gpu tests/test_kernels_cuda.py``
(``python -m dstbench.gpu_check`` runs them, then the suites). Before each
test, torch's cached GPU memory is filled with NaN, so an output element that
a kernel never writes shows up as a mismatch. The tests marked ``small`` (all
kernels on small shapes) are the ones run under compute-sanitizer.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("cupy", reason="CuPy is not installed: pip install dstbench[cuda13] (or [cuda12])")

from dstbench import cuda_graphs, timing  # noqa: E402
from dstbench.cli import main  # noqa: E402
from dstbench.errors import UserError  # noqa: E402
from dstbench.kernels import cuda as cuda_backend  # noqa: E402
from dstbench.kernels import ops, reference  # noqa: E402
from dstbench.kernels.cuda import kernel_sweep, launches  # noqa: E402
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight  # noqa: E402
from dstbench.kernels.layers import CondensedLinear, DiagonalLinear  # noqa: E402
from dstbench.methods import options  # noqa: E402
from dstbench.registry import list_methods, make_method, method_class  # noqa: E402
from dstbench.runs import load_run  # noqa: E402
from dstbench.suites.inference import build_layer  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
DEV = "cuda"


@pytest.fixture(autouse=True)
def _nan_filled_allocator():
    """Fill torch's cached GPU blocks with NaN, so that memory a kernel should write but does not reads as NaN.

    16 blocks of 1 MiB fill eight 2 MiB segments of the small-allocation pool
    (requests up to 1 MiB); one 256 MiB block fills the large pool, which later
    requests split. Freed, they stay cached and back the next allocations.
    """
    torch.cuda.empty_cache()
    blocks = [torch.full((2**18,), math.nan, device=DEV) for _ in range(16)]
    blocks.append(torch.full((2**26,), math.nan, device=DEV))
    del blocks
    yield


def assert_close(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, dtype: torch.dtype) -> None:
    """|got - want| <= 8 * eps(dtype) * (the same sum over |terms|) + the spacing of dtype's subnormals.

    The absolute term covers a result that rounds into float16's subnormal range (below 6.1e-5), where the
    rounding error is absolute (up to 2**-25), not relative. want and bound are float64.
    """
    assert got.shape == want.shape and got.dtype == dtype and got.device == want.device
    err = (got.double() - want).abs()
    limit = 8 * EPS[dtype] * bound + torch.finfo(dtype).smallest_normal * EPS[dtype]
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
    check_diagonal(*diag_data(out_f, in_f, batch, k, dtype), out_f, in_f, dtype)


def check_diagonal(x, offsets, values, dy, out_f: int, in_f: int, dtype: torch.dtype) -> None:
    """Forward, input gradient (transpose) and values gradient against the reference in float64."""
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
    check_condensed(*condensed_data(out_f, in_f, batch, k, ablate, index_dtype, dtype), out_f, in_f, dtype)


def check_condensed(x, values, indices, rows, dy, out_f: int, in_f: int, dtype: torch.dtype) -> None:
    """The three condensed kernels against the reference in float64."""
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


@pytest.mark.small
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_small_shapes_every_kernel(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel and code path once on small shapes: the set run under compute-sanitizer."""
    for out_f, in_f, batch in [(40, 24, 3), (24, 40, 20), (32, 32, 17)]:  # diag_fwd_small, diag_fwd_staged
        check_diagonal(*diag_data(out_f, in_f, batch, 9, dtype, seed=out_f), out_f, in_f, dtype)
    for out_f, in_f, batch in [(40, 9000, 20)]:  # no staged tile fits: diag_fwd_tiled
        check_diagonal(*diag_data(out_f, in_f, batch, 9, dtype, seed=out_f), out_f, in_f, dtype)
    for out_f, in_f, batch in [(20, 30, 1), (30, 20, 21), (6, 30000, 3), (6, 30000, 20)]:
        # B = 1 with x staged, condensed_fwd_batched, unstaged xT, no batched tile fits
        check_condensed(*condensed_data(out_f, in_f, batch, 5, 3, torch.int16, dtype, seed=in_f), out_f, in_f, dtype)
    diag_tiles, condensed_tiles = launches.DIAG_STAGED_TILES, launches.CONDENSED_BATCHED_TILES
    for tile in diag_tiles:  # each batch tile of the staged and batched kernels
        monkeypatch.setattr(launches, "DIAG_STAGED_TILES", (tile,))
        check_diagonal(*diag_data(24, 40, 37, 9, dtype, seed=tile), 24, 40, dtype)
        if tile in condensed_tiles:
            monkeypatch.setattr(launches, "CONDENSED_BATCHED_TILES", (tile,))
            check_condensed(*condensed_data(30, 20, 37, 5, 3, torch.int16, dtype, seed=tile), 30, 20, dtype)


@pytest.mark.parametrize("batch", [1, 40])
def test_layers_fuse_the_bias(batch: int) -> None:
    """The inference layers add the bias inside the kernel; ablated rows output the bias."""
    torch.manual_seed(0)
    w, bias = torch.randn(96, 64, device=DEV), torch.randn(96, device=DEV)
    x = torch.randn(batch, 64, device=DEV)
    diag = DiagonalWeight.top_k(w, 0.8, bias)
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[1::2, :7] = True  # every other row ablated
    cond = CondensedWeight.from_mask(w, mask, bias)
    with torch.inference_mode():
        for layer, weight in ((DiagonalLinear(diag, impl="cuda"), diag), (CondensedLinear(cond, impl="cuda"), cond)):
            want = x.double() @ weight.to_dense().double().T + bias.double()
            bound = x.double().abs() @ weight.to_dense().double().abs().T + bias.double().abs()
            assert_close(layer(x), want, bound, torch.float32)


def test_refuses_bad_pattern_with_one_line() -> None:
    x = torch.randn(2, 8, device=DEV)
    with pytest.raises(UserError, match=r"offsets must lie in \[0, 8\), found 8") as info:
        cuda_backend.diag_mm(x, torch.tensor([0, 8], device=DEV), torch.ones(2, 8, device=DEV), 8)
    assert "\n" not in str(info.value)
    indices = torch.tensor([[0, 1], [2, 3]], dtype=torch.int16, device=DEV)
    with pytest.raises(UserError, match="row 3 appears twice"):
        cuda_backend.condensed_mm(x, torch.ones(2, 2, device=DEV), indices, torch.tensor([3, 3], device=DEV), 4)
    with pytest.raises(UserError, match=r"indices must lie in \[0, 8\), found 8"):
        cuda_backend.condensed_mm(x, torch.ones(2, 2, device=DEV), indices + 8, torch.tensor([0, 1], device=DEV), 4)


def test_cuda_graph_replay() -> None:
    """After one warm-up call, forward and backward launch without a host sync, so a CUDA graph captures them."""
    x0, values, indices, rows, dy0 = condensed_data(300, 200, 24, 20, 4, torch.int16, torch.float32)
    xd0, offsets, dvalues, _ = diag_data(300, 200, 8, 40, torch.float32)
    static = [t.clone() for t in (x0, dy0, xd0)]

    def step() -> list[torch.Tensor]:
        x, dy, xd = static
        return [cuda_backend.condensed_mm(x, values, indices, rows, 300),
                cuda_backend.condensed_input_grad(dy, values, indices, rows, 200),
                cuda_backend.condensed_values_grad(dy, x, indices, rows),
                cuda_backend.diag_mm(xd, offsets, dvalues, 300)]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: compiles, checks the patterns, builds the transposed pattern
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for t in static:
        t.normal_()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outs, step()):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", list_methods())
def test_training_steps_on_cuda(name: str) -> None:
    """Three training steps of every registered method on CUDA (a topology update each step, DynaDiag frozen
    after the first), with the CUDA kernels and with the reference: the same losses, all finite."""
    losses = {}
    for impl in ("cuda", "reference"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 48),
                                    torch.nn.ReLU(), torch.nn.Linear(48, 10)).to(DEV)
        wanted = {"sparsity": 0.9, "total_steps": 4, "delta_t": 1, "impl": impl}
        method = make_method(name, **options.accepted(method_class(name), wanted))
        model = method.prepare(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        losses[impl] = []
        for _ in range(3):
            x, y = torch.randn(32, 64, generator=gen).to(DEV), torch.randint(0, 10, (32,), generator=gen).to(DEV)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            method.step(optimizer)
            losses[impl].append(loss.item())
        assert all(torch.isfinite(p).all() for p in model.parameters())
    torch.testing.assert_close(losses["cuda"], losses["reference"], rtol=1e-4, atol=1e-5)


def test_graph_replay_of_every_inference_format() -> None:
    """cuda_graphs.captured: the replay of each format's layer (dense, CSR, condensed, diagonal) writes the eager
    output for new input values."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 130).to(DEV)
    x = torch.randn(40, 96, device=DEV)
    for name in ("dense", "rigl", "srigl", "dynadiag"):
        layer = build_layer(name, linear, 0.9, "cuda")
        with torch.inference_mode():
            out: list[torch.Tensor] = []
            replay = cuda_graphs.captured(lambda layer=layer: out.append(layer(x)) or out[-1], torch.device(DEV), name)
            x.normal_()
            replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(out[-1], layer(x), msg=name)


def test_inference_suite_times_eager_and_graph_rows(tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["run", "--suite", "inference", "--device", "cuda", "--cases", "64x96", "--sparsity", "0.9",
                 "--batch", "1,33", "--rounds", "2", "--min-time", "0.001", "--no-e2e", "--l2", "warm",
                 "--launch", "eager,graph", "--methods", "srigl,dynadiag", "--out", str(out)]) == 0
    rows = load_run(out).rows
    assert {(r["launch"], r["method"]) for r in rows} == {(launch, m) for launch in ("eager", "graph")
                                                          for m in ("dense", "rigl", "srigl", "dynadiag")}
    assert all(r["p50_s"] > 0 for r in rows)


def test_cuda_cold_blocks_are_calibrated_on_wall_time() -> None:
    """A cold block's L2 flushes outlast a small call; calibrated on wall time, the block lasts about min_time."""
    x = torch.randn(64, 64, device=DEV)
    samples = timing.interleaved({"mm": lambda: x @ x}, rounds=2, min_time=0.05, threads=1,
                                 device=torch.device(DEV), l2="cold")
    block = timing.CUDAColdBlockTimer(lambda: x @ x, 1, torch.device(DEV))
    assert block.wall(samples["mm"].n_inner) < 0.5 and all(s > 0 for s in samples["mm"].samples_s)


def test_kernel_sweep_on_the_gpu(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_sweep, "SHAPES", {"proj": (768, 768)})
    out = tmp_path / "kernels.md"
    assert kernel_sweep.main(["--out", str(out), "--batch", "40", "--grad-batch", "8"]) == 0
    text = out.read_text()
    assert "| proj | 40 | diagonal | diag_fwd_staged" in text and "| proj | 8 | condensed |" in text
