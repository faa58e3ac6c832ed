"""The compiled CPU kernels against the pure-torch reference and the dense product, forward and backward.

Every comparison is done in float64 on the inputs as stored (bfloat16 and float16 inputs are upcast exactly),
with a bound proportional to the sum of absolute terms. Also covers input validation, the build
cache and the fallback when no compiler works.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dstbench.errors import UserError
from dstbench.kernels import cpu, ops, reference
from dstbench.kernels.cpu import build
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight, diagonal_coords

_REASON = cpu.unavailable_reason(torch.device("cpu"), torch.float32)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"CPU kernels unavailable: {_REASON}")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def assert_close(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, dtype: torch.dtype) -> None:
    """|got - want| <= 8 * eps(dtype) * bound + the dtype's smallest subnormal (a result stored below the
    normal range keeps only an absolute precision: float16 products of two 1e-3 values do), with want and
    bound (the same sum over |terms|) in float64."""
    assert got.shape == want.shape and got.dtype == dtype
    err = (got.double() - want).abs()
    limit = 8 * EPS[dtype] * bound + max(torch.finfo(dtype).smallest_normal * EPS[dtype], 1e-300)
    assert bool((err <= limit).all()), f"max error {err.max().item():.3g}, limit {limit.max().item():.3g}"


def rand(*shape: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def check_diagonal(out_f: int, in_f: int, batch: int, offsets: torch.Tensor, dtype: torch.dtype, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    d = min(out_f, in_f)
    values = rand(offsets.numel(), d, gen=gen, dtype=dtype)
    x, dy = rand(batch, in_f, gen=gen, dtype=dtype), rand(batch, out_f, gen=gen, dtype=dtype)
    x64, v64, dy64 = x.double(), values.double(), dy.double()
    rows, cols = diagonal_coords(offsets, out_f, in_f)
    w = torch.zeros(out_f, in_f, dtype=torch.float64).index_put_((rows, cols), v64, accumulate=True)  # repeats add up

    y = cpu.diag_mm(x, offsets, values, out_f)
    assert_close(y, x64 @ w.T, x64.abs() @ w.abs().T, dtype)
    assert_close(y, reference.diag_mm(x64, offsets, v64, out_f), x64.abs() @ w.abs().T, dtype)
    bias = rand(out_f, gen=gen, dtype=dtype)
    assert_close(cpu.diag_mm(x, offsets, values, out_f, bias=bias), x64 @ w.T + bias.double(),
                 x64.abs() @ w.abs().T + bias.double().abs(), dtype)
    dx = cpu.diag_mm(dy, offsets, values, in_f, transpose=True)
    assert_close(dx, dy64 @ w, dy64.abs() @ w.abs(), dtype)
    dv = cpu.diag_values_grad(dy, x, offsets)
    assert_close(dv, reference.diag_values_grad(dy64, x64, offsets),
                 reference.diag_values_grad(dy64.abs(), x64.abs(), offsets), dtype)


DIAG_CASES = [  # out, in, batch, K
    (1, 1, 1, 1), (5, 3, 1, 5), (3, 5, 2, 1), (1, 7, 3, 7), (7, 1, 4, 3), (6, 6, 1, 6), (6, 6, 9, 2),
    (150, 40, 20, 30), (40, 150, 15, 150), (70, 70, 33, 12), (130, 7, 5, 130), (7, 130, 16, 40),
    (37, 20, 3, 37), (20, 37, 7, 5), (3072, 768, 9, 31), (768, 3072, 1, 31), (100, 83, 2, 100),
    (3072, 768, 1, 31), (70, 45, 2, 69), (45, 70, 1, 33),
    # float32 tiles are 32 lanes: the long side within one tile of the short one, partial second vectors
    (45, 40, 11, 45), (40, 45, 6, 20), (97, 33, 12, 60), (33, 97, 5, 90), (48, 48, 8, 7),
    # float32 and float64 take the batch-major kernel (two or more SIMD vectors of batch rows per thread; half
    # precision the tiles): ragged lanes, lane groups of one vector, vectors left over whose outputs the
    # threads share (97 rows: 3 vectors per thread and a seventh), partial blocks of 12 outputs, blocks that
    # pass the ends of a diagonal, sides shorter than a block (and between one and two blocks), padding rows
    # that wrap; the rows past the last whole vector go to the row kernels when they are few (out >= in: up to
    # 6, else 8; float32 71 and 73 rows keep a lane group for their 7 and 9)
    (45, 40, 97, 45), (40, 45, 130, 20), (70, 70, 70, 12), (5, 3, 70, 5), (3, 5, 66, 1), (1, 1, 64, 1),
    (7, 1, 80, 3), (1, 7, 80, 7), (20, 9, 70, 15), (9, 20, 97, 20), (3072, 768, 70, 31), (768, 3072, 70, 31),
    (300, 50, 129, 150), (45, 40, 71, 45), (40, 45, 72, 20), (40, 45, 73, 20), (768, 3072, 197, 31),
    # a lane group's rows of x over 256 KiB are transposed strip of 16 rows by strip: ragged rows and columns
    (500, 2100, 70, 40),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_f, in_f, batch, k", DIAG_CASES)
def test_diagonal_matches_reference_and_dense(out_f: int, in_f: int, batch: int, k: int, dtype: torch.dtype) -> None:
    torch.set_num_threads(2)  # fixes which kernel each batch takes on any machine (conftest restores the count)
    p = max(out_f, in_f)
    offsets = torch.sort(torch.randperm(p, generator=torch.Generator().manual_seed(k))[:k]).values
    check_diagonal(out_f, in_f, batch, offsets, dtype)


# bfloat16 at batches 1-2 takes the AVX512-BF16 pair kernel where the CPU has it: pairs far apart on the long
# side (49 and 3 of 50) go one diagonal at a time, and the odd fifth diagonal goes alone; float32 and float64 take
# the runs
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [1, 2, 6])
@pytest.mark.parametrize("out_f, in_f", [(50, 20), (20, 50), (24, 24)])
def test_diagonal_unsorted_and_repeated_offsets(out_f: int, in_f: int, batch: int, dtype: torch.dtype) -> None:
    p = max(out_f, in_f)
    check_diagonal(out_f, in_f, batch, torch.tensor([p - 1, 3, 0, 3, p // 2]), dtype)


@settings(max_examples=25, deadline=None)
@given(out_f=st.integers(1, 80), in_f=st.integers(1, 80), batch=st.integers(1, 20), frac=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_diagonal_property(out_f: int, in_f: int, batch: int, frac: float, seed: int) -> None:
    p = max(out_f, in_f)
    k = max(1, round(frac * p))
    offsets = torch.sort(torch.randperm(p, generator=torch.Generator().manual_seed(seed))[:k]).values
    check_diagonal(out_f, in_f, batch, offsets, torch.float64, seed)


def check_condensed(out_f: int, in_f: int, batch: int, rows: torch.Tensor, k: int, dtype: torch.dtype,
                    index: torch.dtype = torch.int16, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = rows.numel()
    idx = torch.stack([torch.randperm(in_f, generator=gen)[:k] for _ in range(n)]) if n else torch.zeros(0, k)
    idx = idx.to(index).reshape(n, k)
    values = rand(n, k, gen=gen, dtype=dtype)
    x, dy = rand(batch, in_f, gen=gen, dtype=dtype), rand(batch, out_f, gen=gen, dtype=dtype)
    x64, v64, dy64 = x.double(), values.double(), dy.double()
    w = CondensedWeight(v64, idx.to(torch.int32), rows, out_f, in_f).to_dense()

    y = cpu.condensed_mm(x, values, idx, rows, out_f)
    assert_close(y, x64 @ w.T, x64.abs() @ w.abs().T, dtype)
    bias = rand(out_f, gen=gen, dtype=dtype)  # ablated columns hold their bias
    assert_close(cpu.condensed_mm(x, values, idx, rows, out_f, bias=bias), x64 @ w.T + bias.double(),
                 x64.abs() @ w.abs().T + bias.double().abs(), dtype)
    dx = cpu.condensed_input_grad(dy, values, idx, rows, in_f)
    assert_close(dx, dy64 @ w, dy64.abs() @ w.abs(), dtype)
    dv = cpu.condensed_values_grad(dy, x, idx, rows)
    ref_idx = idx.to(torch.int64)
    assert_close(dv, reference.condensed_values_grad(dy64, x64, ref_idx, rows),
                 reference.condensed_values_grad(dy64.abs(), x64.abs(), ref_idx, rows), dtype)


COND_CASES = [  # out, in, batch, n_active, k
    (1, 1, 1, 1, 1), (5, 3, 1, 5, 3), (3, 5, 2, 2, 1), (1, 9, 3, 1, 4), (9, 1, 17, 5, 1), (6, 4, 4, 0, 2),
    (40, 30, 33, 40, 30), (40, 30, 2, 20, 7), (30, 40, 16, 30, 10), (64, 64, 130, 50, 9), (3072, 768, 3, 3072, 77),
    (400, 1600, 40, 350, 160),
    # float32 moves whole 16 x 16 blocks through registers: full and partial blocks, runs of active rows
    (48, 20, 64, 48, 5), (70, 33, 35, 60, 8),
    # bfloat16 at batches 1-2 gathers 32 entries at a time where the CPU has AVX512-BF16: whole blocks and a
    # tail, rows that are exactly two blocks, the last input (whose 32-bit word ends at x's spare element)
    (3072, 768, 1, 300, 77), (50, 40, 2, 45, 40), (20, 64, 1, 19, 64),
    # a lane group's rows of x over 256 KiB are transposed strip of 16 rows by strip: 24 of 32 rows, 2100 inputs
    (300, 2100, 40, 280, 30),
    # float32 with int16 indices on AVX-512: batched rows of 16 entries or more (fewer: one at a time, as k = 1-10
    # above) go four entries a step, in passes when a lane group's slice of x is over 64 KiB: 3 passes (1600
    # inputs) and 4 (2100) above, entries split unevenly, each with a tail of fewer than four; here 19 passes capped
    # at the 16 entries a row has
    (20, 10000, 33, 20, 16),
]


@pytest.mark.parametrize("index", [torch.int16, torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_f, in_f, batch, n_active, k", COND_CASES)
def test_condensed_matches_dense(out_f: int, in_f: int, batch: int, n_active: int, k: int, dtype: torch.dtype,
                                 index: torch.dtype) -> None:
    rows = torch.sort(torch.randperm(out_f, generator=torch.Generator().manual_seed(1))[:n_active]).values
    check_condensed(out_f, in_f, batch, rows, k, dtype, index)


@pytest.fixture(params=[False, True], ids=["hardware-gathers", "assembled-gathers"])
def gathers(request: pytest.FixtureRequest):
    """Both ways the float32 small-batch condensed product gathers x, whichever this CPU uses by default."""
    before = cpu.assembled_gathers(request.param)
    yield request.param
    cpu.assembled_gathers(before)


# at batches 1-2 float32 takes 16 entries per step and bfloat16 32 (where the CPU has AVX512-BF16): rows of one
# partial step, whole steps only (16, 64), whole steps and a tail, an odd row count (one row walked alone)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("index", [torch.int16, torch.int32], ids=str)
@pytest.mark.parametrize("out_f, in_f, batch, n_active, k",
                         [c for c in COND_CASES if c[2] <= 2] + [(9, 50, 1, 9, 16), (7, 50, 2, 7, 17)])
def test_condensed_small_batch_gathers(out_f: int, in_f: int, batch: int, n_active: int, k: int, index: torch.dtype,
                                       dtype: torch.dtype, gathers: bool) -> None:
    rows = torch.sort(torch.randperm(out_f, generator=torch.Generator().manual_seed(1))[:n_active]).values
    check_condensed(out_f, in_f, batch, rows, k, dtype, index)


def test_gathers_can_be_switched_and_restored() -> None:
    default = cpu.assembled_gathers()
    assert cpu.assembled_gathers(not default) == default
    assert cpu.assembled_gathers(default) == (not default)
    assert cpu.assembled_gathers() == default


@settings(max_examples=25, deadline=None)
@given(out_f=st.integers(1, 60), in_f=st.integers(1, 60), batch=st.integers(1, 40), active=st.floats(0.0, 1.0),
       fan=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_condensed_property(out_f: int, in_f: int, batch: int, active: float, fan: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(out_f, generator=gen)[: round(active * out_f)]  # unsorted on purpose
    check_condensed(out_f, in_f, batch, rows, max(1, round(fan * in_f)), torch.float64, seed=seed)


def test_ablated_columns_are_zero_even_in_garbage_memory() -> None:
    x = torch.randn(5, 8)
    values, idx, rows = torch.ones(1, 2), torch.tensor([[0, 1]], dtype=torch.int16), torch.tensor([2])
    for _ in range(3):  # torch.empty may hand back memory holding old results
        y = cpu.condensed_mm(x, values, idx, rows, 6)
        assert torch.equal(y[:, [0, 1, 3, 4, 5]], torch.zeros(5, 5))
        torch.testing.assert_close(y[:, 2], x[:, 0] + x[:, 1])


# 5 rows: fewer blocks of rows than threads, which then share tiles; 37 and 130 rows: the batch-major kernel where
# each thread gets two or more vectors of rows (float64: 8 lanes), else the tiled one, and condensed lane groups
# (5 and 17 vectors) that two or more threads share, and so transpose together, by input range
@pytest.mark.parametrize("batch", [130, 37, 5])
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_results_do_not_depend_on_the_thread_count(threads: int, batch: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(batch, 300, generator=gen, dtype=torch.float64), torch.randn(500, 300, generator=gen, dtype=torch.float64)
    dw, cw = DiagonalWeight.top_k(w, 0.8), CondensedWeight.top_k(w, 0.8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y_d = cpu.diag_mm(x, dw.offsets, dw.values, 500)
        y_c = cpu.condensed_mm(x, cw.values, cw.indices, cw.active_rows, 500)
        dx_c = cpu.condensed_input_grad(y_c, cw.values, cw.indices, cw.active_rows, 300)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(y_d, x @ dw.to_dense().T)
    torch.testing.assert_close(y_c, x @ cw.to_dense().T)
    torch.testing.assert_close(dx_c, y_c @ cw.to_dense())


def test_bfloat16_rounds_to_nearest_even() -> None:
    x = torch.tensor([[1.0, 2.0**-8 + 2.0**-10]], dtype=torch.bfloat16)  # 1 + 2**-8 + 2**-10 needs rounding
    y = cpu.condensed_mm(x, torch.ones(1, 2, dtype=torch.bfloat16), torch.tensor([[0, 1]], dtype=torch.int16),
                         torch.tensor([0]), 1)
    assert y.item() == (x.double().sum()).to(torch.bfloat16).item()


def test_float16_rounds_to_nearest_even() -> None:
    x = torch.tensor([[1.0, 2.0**-11 + 2.0**-13]], dtype=torch.float16)  # 1 + 2**-11 + 2**-13 rounds up
    y = cpu.condensed_mm(x, torch.ones(1, 2, dtype=torch.float16), torch.tensor([[0, 1]], dtype=torch.int16),
                         torch.tensor([0]), 1)
    assert y.item() == (x.double().sum()).to(torch.float16).item() == 1 + 2.0**-10


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: cpu.diag_mm(torch.ones(2, 3), torch.tensor([5]), torch.ones(1, 3), 5), "offsets"),
        (lambda: cpu.diag_mm(torch.ones(2, 3), torch.tensor([0]), torch.ones(1, 4), 5), "shape"),
        (lambda: cpu.diag_mm(torch.ones(2, 3), torch.tensor([0.0]), torch.ones(1, 3), 5), "integer"),
        (lambda: cpu.diag_mm(torch.ones(2, 3, dtype=torch.int32), torch.tensor([0]),
                             torch.ones(1, 3, dtype=torch.int32), 5), "int32"),
        (lambda: cpu.diag_mm(torch.ones(2, 3), torch.tensor([0]), torch.ones(1, 3, dtype=torch.float64), 5), "mixed"),
        (lambda: cpu.diag_mm(torch.ones(2, 2, 3), torch.tensor([0]), torch.ones(1, 3), 5), "2-D"),
        (lambda: cpu.diag_values_grad(torch.ones(2, 5), torch.ones(3, 3), torch.tensor([0])), "batch"),
        (lambda: cpu.condensed_mm(torch.ones(2, 3), torch.ones(1, 2), torch.tensor([[0, 3]], dtype=torch.int16),
                                  torch.tensor([0]), 4), "indices"),
        (lambda: cpu.condensed_mm(torch.ones(2, 3), torch.ones(1, 2), torch.tensor([[0, -1]], dtype=torch.int32),
                                  torch.tensor([0]), 4), "indices"),
        (lambda: cpu.condensed_mm(torch.ones(2, 3), torch.ones(1, 2), torch.tensor([[0, 1]], dtype=torch.int16),
                                  torch.tensor([4]), 4), "active_rows"),
        (lambda: cpu.condensed_mm(torch.ones(2, 3), torch.ones(1, 2), torch.tensor([[0, 1]], dtype=torch.uint8),
                                  torch.tensor([0]), 4), "int16 or int32"),
        (lambda: cpu.condensed_mm(torch.ones(2, 3), torch.ones(2, 2), torch.tensor([[0, 1], [1, 2]], dtype=torch.int16),
                                  torch.tensor([3, 3]), 4), "active_rows must be distinct"),
        (lambda: cpu.condensed_input_grad(torch.ones(2, 4), torch.ones(1, 2), torch.tensor([[0, 9]], dtype=torch.int16),
                                          torch.tensor([0]), 3), "indices"),
        (lambda: cpu.condensed_values_grad(torch.ones(2, 4), torch.ones(2, 3), torch.tensor([[0, 1]], dtype=torch.int16),
                                           torch.tensor([7]), ), "active_rows"),
    ],
)
def test_bad_input_raises_user_error(call, match: str) -> None:
    with pytest.raises(UserError, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("index", [torch.int16, torch.int32], ids=str)
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("row, entry, bad", [(0, 0, 8), (1, 17, -1), (2, 32, 8), (2, 5, 1000)])
def test_an_out_of_range_index_anywhere_is_caught(index: torch.dtype, batch: int, row: int, entry: int,
                                                  bad: int, dtype: torch.dtype, gathers: bool) -> None:
    """Rows of 33 entries (float32: two blocks of 16 and a tail; bfloat16: a block of 32, even and odd
    entries gathered apart, and a tail), three rows (a pair and a single, for the small batches)."""
    idx = torch.arange(3 * 33).reshape(3, 33).remainder(8).to(index)
    idx[row, entry] = bad
    with pytest.raises(UserError, match="indices"):
        cpu.condensed_mm(torch.ones(batch, 8, dtype=dtype), torch.ones(3, 33, dtype=dtype), idx, torch.arange(3), 3)


def test_bias_must_match_the_output() -> None:
    with pytest.raises(UserError, match="bias"):
        cpu.diag_mm(torch.ones(2, 3), torch.tensor([0]), torch.ones(1, 3), 5, bias=torch.ones(4))
    with pytest.raises(UserError, match="bias"):
        cpu.condensed_mm(torch.ones(2, 3), torch.ones(1, 2), torch.tensor([[0, 1]], dtype=torch.int16),
                         torch.tensor([0]), 4, bias=torch.ones(4, dtype=torch.float64))


def test_unavailable_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu.unavailable_reason(torch.device("cpu"), torch.bfloat16) is None
    assert cpu.unavailable_reason(torch.device("cpu"), torch.float64) is None
    assert cpu.unavailable_reason(torch.device("cpu"), torch.float16) is None  # GCC 12 has _Float16
    assert "int32" in cpu.unavailable_reason(torch.device("cpu"), torch.int32)
    assert "CPU" in cpu.unavailable_reason(torch.device("cuda"), torch.float32)
    without_f16 = {key: fn for key, fn in cpu._library.functions.items() if key[1] is not torch.float16}
    monkeypatch.setattr(cpu._library, "functions", without_f16)  # a compiler without _Float16
    assert "_Float16" in cpu.unavailable_reason(torch.device("cpu"), torch.float16)
    with pytest.raises(UserError, match="_Float16"):
        cpu.diag_mm(torch.ones(2, 3, dtype=torch.float16), torch.tensor([0]), torch.ones(1, 3, dtype=torch.float16), 5)


def test_build_cache_hit_on_second_load() -> None:
    path, _ = build.ensure_built()
    again, hit = build.ensure_built()
    assert hit and again == path and path.parent == build.cache_dir()


def test_cache_key_depends_on_the_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSTBENCH_CACHE", str(tmp_path))
    default, _ = build.library_path()
    monkeypatch.setenv("CXX", f"{build.compiler()[0]} -DDSTBENCH_OTHER_KEY")
    other, _ = build.library_path()
    assert default.parent == other.parent == tmp_path / "kernels" and default != other


def _fake_compiler(tmp_path: Path, compile_exit: int) -> str:
    script = tmp_path / "fake-c++"
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo fake 1.0; exit 0; fi\n'
                      f'echo "fatal error: simulated breakage" >&2\nexit {compile_exit}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize("cxx, expected", [("false", "does not run"), (None, "simulated breakage")])
def test_failing_compiler_gives_reason_and_ops_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          cxx: str | None, expected: str) -> None:
    monkeypatch.setenv("DSTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", cxx or _fake_compiler(tmp_path, 1))
    monkeypatch.setattr(cpu, "_library", cpu._Library())  # a fresh, unloaded library
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.setattr(ops, "_selected", {})
    reason = cpu.unavailable_reason(torch.device("cpu"), torch.float32)
    assert reason is not None and expected in reason
    assert not list(tmp_path.rglob("*.so"))
    x, offsets, values = torch.randn(3, 4), torch.tensor([0, 2]), torch.randn(2, 4)
    with pytest.warns(UserWarning, match=expected):
        y = ops.diag_mm(x, offsets, values, 6)
    torch.testing.assert_close(y, reference.diag_mm(x, offsets, values, 6))
    with pytest.raises(UserError, match=expected):
        ops.diag_mm(x, offsets, values, 6, impl="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.diag_mm(x, offsets, values, 6)  # warned once only


def test_no_compiler_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", os.devnull)
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler"):
        build.compiler()
