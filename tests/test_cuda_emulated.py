"""The CUDA kernels' own source, run on the CPU by the host emulator, against the reference.

Drives ``kernels.cuda.launches`` (kernel choice, grids, blocks, arguments)
with ``cuda_emulator.runner``, so the index math, tiling, shared-memory
staging, reductions and edge-shape guards of the ``.cu`` files are checked
without a GPU. Inputs sit inside NaN-filled buffers, so a read past a
tensor's end poisons the result.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import cuda_emulator
from dstbench.errors import UserError
from dstbench.kernels import cuda as cuda_backend
from dstbench.kernels import reference
from dstbench.kernels.cuda import kernel_sweep, launches, loader
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight

pytestmark = pytest.mark.skipif(cuda_emulator.compiler() is None, reason="no g++ to build the host emulator")

EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
run = cuda_emulator.runner


def padded(t: torch.Tensor, pad: int = 64) -> torch.Tensor:
    """``t`` copied into the middle of a buffer whose other elements are NaN (float) or 0."""
    fill = float("nan") if t.is_floating_point() else 0
    buf = torch.full((t.numel() + 2 * pad,), fill, dtype=t.dtype)
    buf[pad : pad + t.numel()] = t.reshape(-1)
    return buf[pad : pad + t.numel()].view(t.shape)


def assert_close(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, dtype: torch.dtype) -> None:
    """|got - want| <= 4 * eps(dtype) * bound + tiny, where bound = the same sum over |terms|."""
    assert got.shape == want.shape and got.dtype == dtype
    err = (got.double() - want.double()).abs()
    limit = 4 * EPS[dtype] * bound.double() + 1e-300
    assert bool((err <= limit).all()), f"max error {err.max().item():.3g}, limit {limit.max().item():.3g}"


def diag_data(out_f: int, in_f: int, batch: int, k: int, dtype: torch.dtype, sort: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p, d = max(out_f, in_f), min(out_f, in_f)
    offsets = torch.randperm(p, generator=g)[:k]
    if sort:
        offsets = torch.sort(offsets).values
    x = torch.randn(batch, in_f, generator=g).to(dtype)
    values = torch.randn(k, d, generator=g).to(dtype)
    dy = torch.randn(batch, out_f, generator=g).to(dtype)
    return padded(x), offsets, padded(values), padded(dy)


DIAG_CASES = [  # out, in, batch, K: both kernels, tall/wide/square, K = 0, 1, P, P > DIAG_SPAN
    (1, 1, 1, 1),
    (5, 3, 1, 5),
    (3, 5, 2, 1),
    (150, 40, 20, 30),
    (40, 150, 17, 150),
    (70, 70, 33, 12),
    (130, 7, 5, 130),
    (7, 130, 16, 40),
    (9, 4, 3, 0),
    (8, 8, 1, 5),
    (100, 100, 24, 30),
]


@pytest.mark.parametrize("batch", [2, 18])
def test_square_transpose_differs_from_transposed_geometry(batch: int) -> None:
    """For a square W, dy @ W needs transpose=True: W.T's diagonal s is not W's diagonal s."""
    x, offsets, values, dy = diag_data(80, 80, batch, 9, torch.float64, seed=4)
    dense = DiagonalWeight(offsets, values.clone(), 80, 80).to_dense()
    plain = launches.diag_mm(dy, offsets, values, 80, run)
    assert_close(plain, dy @ dense.T, dy.abs() @ dense.abs().T, torch.float64)
    assert (plain - dy @ dense).abs().max() > 1e-3


@pytest.mark.parametrize("out_f, in_f, batch, k", DIAG_CASES)
def test_diagonal_kernels_match_reference(out_f: int, in_f: int, batch: int, k: int) -> None:
    dt = torch.float64
    x, offsets, values, dy = diag_data(out_f, in_f, batch, k, dt)
    absx, absv, absdy = x.abs(), values.abs(), dy.abs()
    assert_close(launches.diag_mm(x, offsets, values, out_f, run), reference.diag_mm(x, offsets, values, out_f),
                 reference.diag_mm(absx, offsets, absv, out_f), dt)
    dense = DiagonalWeight(offsets, values.clone(), out_f, in_f).to_dense()
    assert_close(launches.diag_mm(dy, offsets, values, in_f, run, transpose=True), dy @ dense, absdy @ dense.abs(), dt)
    assert_close(launches.diag_values_grad(dy, x, offsets, run), reference.diag_values_grad(dy, x, offsets),
                 reference.diag_values_grad(absdy, absx, offsets), dt)


@pytest.mark.parametrize("batch", [3, 40])
def test_diagonal_unsorted_offsets(batch: int) -> None:
    x, offsets, values, _ = diag_data(200, 90, batch, 60, torch.float64, sort=False, seed=1)
    assert not bool((offsets[1:] > offsets[:-1]).all())
    want = reference.diag_mm(x, offsets, values, 200)
    assert_close(launches.diag_mm(x, offsets, values, 200, run), want,
                 reference.diag_mm(x.abs(), offsets, values.abs(), 200), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [2, 19])
def test_diagonal_low_precision(dtype: torch.dtype, batch: int) -> None:
    x, offsets, values, dy = diag_data(100, 36, batch, 20, dtype, seed=2)
    x64, v64, dy64 = x.double(), values.double(), dy.double()
    assert_close(launches.diag_mm(x, offsets, values, 100, run), reference.diag_mm(x64, offsets, v64, 100),
                 reference.diag_mm(x64.abs(), offsets, v64.abs(), 100), dtype)
    assert_close(launches.diag_values_grad(dy, x, offsets, run), reference.diag_values_grad(dy64, x64, offsets),
                 reference.diag_values_grad(dy64.abs(), x64.abs(), offsets), dtype)


def condensed_data(out_f: int, in_f: int, batch: int, k: int, ablate: int, index_dtype: torch.dtype,
                   dtype: torch.dtype, seed: int = 0):
    """A CondensedWeight with fan-in k where every ``ablate``-th row (0: none) is ablated."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(out_f, in_f, generator=g).argsort(dim=1)[:, :k]
    mask = torch.zeros(out_f, in_f, dtype=torch.bool).scatter_(1, keep, True)
    if ablate:
        mask[::ablate] = False
    w = CondensedWeight.from_mask(torch.randn(out_f, in_f, generator=g).to(dtype), mask)
    x = torch.randn(batch, in_f, generator=g).to(dtype)
    dy = torch.randn(batch, out_f, generator=g).to(dtype)
    return padded(x), padded(w.values), w.indices.to(index_dtype), w.active_rows, padded(dy)


CONDENSED_CASES = [  # out, in, batch, k, ablate every n-th row, index dtype
    (1, 1, 1, 1, 0, torch.int16),
    (5, 3, 2, 1, 2, torch.int16),
    (50, 40, 20, 7, 3, torch.int32),
    (40, 150, 37, 13, 0, torch.int16),
    (20, 30, 5, 30, 4, torch.int64),
    (7, 7000, 3, 69, 2, torch.int32),  # float64 x tile exceeds 48 KiB: the unstaged xT path
    (6, 9, 4, 3, 1, torch.int32),  # every row ablated: n_active = 0
]


@pytest.mark.parametrize("out_f, in_f, batch, k, ablate, index_dtype", CONDENSED_CASES)
def test_condensed_kernels_match_reference(out_f, in_f, batch, k, ablate, index_dtype) -> None:
    dt = torch.float64
    x, values, indices, rows, dy = condensed_data(out_f, in_f, batch, k, ablate, index_dtype, dt)
    ax, av, ady = x.abs(), values.abs(), dy.abs()
    assert_close(launches.condensed_mm(x, values, indices, rows, out_f, run),
                 reference.condensed_mm(x, values, indices, rows, out_f),
                 reference.condensed_mm(ax, av, indices, rows, out_f), dt)
    assert_close(launches.condensed_values_grad(dy, x, indices, rows, run),
                 reference.condensed_values_grad(dy, x, indices, rows),
                 reference.condensed_values_grad(ady, ax, indices, rows), dt)
    assert_close(launches.condensed_input_grad(dy, values, indices, rows, in_f, run),
                 reference.condensed_input_grad(dy, values, indices, rows, in_f),
                 reference.condensed_input_grad(ady, av, indices, rows, in_f), dt)


def test_large_input_width_is_not_staged() -> None:
    assert launches.condensed_batch_tile(3, 7000, 8) == (1, False)
    assert launches.condensed_batch_tile(3, 7000, 4) == (1, True)
    assert launches.condensed_batch_tile(37, 150, 8) == (32, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 21])
def test_condensed_low_precision(dtype: torch.dtype, batch: int) -> None:
    x, values, indices, rows, dy = condensed_data(24, 64, batch, 16, 3, torch.int16, dtype, seed=3)
    x64, v64, dy64 = x.double(), values.double(), dy.double()
    assert_close(launches.condensed_mm(x, values, indices, rows, 24, run),
                 reference.condensed_mm(x64, v64, indices, rows, 24),
                 reference.condensed_mm(x64.abs(), v64.abs(), indices, rows, 24), dtype)
    assert_close(launches.condensed_input_grad(dy, values, indices, rows, 64, run),
                 reference.condensed_input_grad(dy64, v64, indices, rows, 64),
                 reference.condensed_input_grad(dy64.abs(), v64.abs(), indices, rows, 64), dtype)
    assert_close(launches.condensed_values_grad(dy, x, indices, rows, run),
                 reference.condensed_values_grad(dy64, x64, indices, rows),
                 reference.condensed_values_grad(dy64.abs(), x64.abs(), indices, rows), dtype)


def test_kernel_choice_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cases above reach the forward kernels: small below DIAG_TILED_MIN_BATCH, staged from it on, and tiled
    where even the smallest staged tile does not fit in shared memory."""
    chosen: list[str] = []
    x, offsets, values, _ = diag_data(8, 8, launches.DIAG_TILED_MIN_BATCH, 3, torch.float32)
    launches.diag_mm(x[:-1], offsets, values, 8, lambda launch: chosen.append(launch.kernel))
    launches.diag_mm(x, offsets, values, 8, lambda launch: chosen.append(launch.kernel))
    monkeypatch.setattr(launches, "staged_shared_limit", lambda device: 4 * 8 * 4 - 1)
    launches.diag_mm(x, offsets, values, 8, lambda launch: chosen.append(launch.kernel))
    assert chosen == ["diag_fwd_small", "diag_fwd_staged4", "diag_fwd_tiled"]
    assert min(c[2] for c in DIAG_CASES) < launches.DIAG_TILED_MIN_BATCH <= max(c[2] for c in DIAG_CASES)


def test_staged_tiles_for_vit_shapes() -> None:
    """On 132 SMs with 96 KiB: the largest batch tile that still gives two blocks per SM, else the smallest."""
    def diag_tile(n_out: int, n_in: int, batch: int) -> int | None:
        return launches.staged_batch_tile(launches.DIAG_STAGED_TILES, lambda t: -(-n_out // 128), batch, n_in, 4,
                                          132, 96 * 1024)

    assert diag_tile(3072, 768, 197) == 16  # 24 column blocks x 13 batch tiles
    assert diag_tile(2304, 768, 256) == 16  # 18 x 16
    assert diag_tile(768, 3072, 197) == 4  # only 4 and 8 fit; neither gives 264 blocks
    assert diag_tile(768, 30_000, 197) is None
    rows = launches.condensed_rows_per_pass
    tile = launches.staged_batch_tile(launches.CONDENSED_BATCHED_TILES, lambda t: -(-3072 // rows(t)), 256, 768, 4,
                                      132, 96 * 1024)
    assert (tile, rows(tile)) == (32, 64)  # 48 row blocks x 8 batch tiles


def recorder(kernels: list[str]) -> launches.Runner:
    """A runner that runs each launch in the emulator and records its kernel."""
    def recording(launch: launches.Launch) -> None:
        kernels.append(launch.kernel)
        run(launch)

    return recording


def test_a_forced_batch_tile_is_used_or_refused() -> None:
    """tile= (the tile sweep's knob) launches that tile, and refuses one that does not exist, fit or apply."""
    x, offsets, values, _ = diag_data(150, 40, 20, 30, torch.float64, seed=17)
    kernels: list[str] = []
    assert_close(launches.diag_mm(x, offsets, values, 150, recorder(kernels), tile=32),
                 reference.diag_mm(x, offsets, values, 150), reference.diag_mm(x.abs(), offsets, values.abs(), 150),
                 torch.float64)
    cx, cvalues, indices, rows, _ = condensed_data(50, 40, 20, 7, 3, torch.int16, torch.float64, seed=17)
    launches.condensed_mm(cx, cvalues, indices, rows, 50, recorder(kernels), tile=16)
    assert kernels == ["diag_fwd_staged32", "condensed_fwd_batched16"]
    for bad, batch_rows in ((12, 20), (32, 3)):  # not a tile; a batch below the staged kernels'
        with pytest.raises(UserError, match=f"batch tile {bad} is not available here"):
            launches.diag_mm(x[:batch_rows], offsets, values, 150, run, tile=bad)
    with pytest.raises(UserError, match="batch tile 4 is not available here"):  # the condensed tiles start at 8
        launches.condensed_mm(cx, cvalues, indices, rows, 50, run, tile=4)


@pytest.mark.parametrize("tile", launches.DIAG_STAGED_TILES)
def test_staged_diagonal_every_tile(monkeypatch: pytest.MonkeyPatch, tile: int) -> None:
    """diag_fwd_staged{tile}: tall, wide and square, unsorted offsets, a ragged last batch tile, bias, transpose."""
    monkeypatch.setattr(launches, "DIAG_STAGED_TILES", (tile,))
    dt = torch.float64
    for out_f, in_f, batch, k, sort in [(150, 40, 37, 30, True), (40, 150, 20, 150, False), (70, 70, 33, 70, False)]:
        x, offsets, values, dy = diag_data(out_f, in_f, batch, k, dt, sort=sort, seed=11)
        bias = padded(torch.randn(out_f, dtype=dt))
        kernels: list[str] = []
        assert_close(launches.diag_mm(x, offsets, values, out_f, recorder(kernels), bias=bias),
                     reference.diag_mm(x, offsets, values, out_f) + bias,
                     reference.diag_mm(x.abs(), offsets, values.abs(), out_f) + bias.abs(), dt)
        dense = DiagonalWeight(offsets, values.clone(), out_f, in_f).to_dense()
        assert_close(launches.diag_mm(dy, offsets, values, in_f, recorder(kernels), transpose=True), dy @ dense,
                     dy.abs() @ dense.abs(), dt)
        assert kernels == [f"diag_fwd_staged{tile}"] * 2


@pytest.mark.parametrize("tile", launches.CONDENSED_BATCHED_TILES)
def test_batched_condensed_every_tile(monkeypatch: pytest.MonkeyPatch, tile: int) -> None:
    """condensed_fwd_batched{tile}: ablated rows, each index dtype, widths not a multiple of 4, a ragged last
    batch tile, bias, and more active rows than one block's pass."""
    monkeypatch.setattr(launches, "CONDENSED_BATCHED_TILES", (tile,))
    dt = torch.float64
    for out_f, in_f, batch, k, ablate, index_dtype in [(50, 41, 37, 7, 3, torch.int16), (300, 150, 20, 13, 0,
                                                        torch.int32), (20, 30, 16, 30, 4, torch.int64)]:
        x, values, indices, rows, _ = condensed_data(out_f, in_f, batch, k, ablate, index_dtype, dt, seed=12)
        bias = padded(torch.randn(out_f, dtype=dt))
        kernels: list[str] = []
        assert_close(launches.condensed_mm(x, values, indices, rows, out_f, recorder(kernels), bias=bias),
                     reference.condensed_mm(x, values, indices, rows, out_f) + bias,
                     reference.condensed_mm(x.abs(), values.abs(), indices, rows, out_f) + bias.abs(), dt)
        assert kernels == [f"condensed_fwd_batched{tile}"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_batched_kernels_low_precision(dtype: torch.dtype) -> None:
    """The staged diagonal and batched condensed kernels keep half-precision x in shared memory as is."""
    x, offsets, values, _ = diag_data(90, 60, 40, 20, dtype, seed=13)
    kernels: list[str] = []
    assert_close(launches.diag_mm(x, offsets, values, 90, recorder(kernels)),
                 reference.diag_mm(x.double(), offsets, values.double(), 90),
                 reference.diag_mm(x.double().abs(), offsets, values.double().abs(), 90), dtype)
    x, values, indices, rows, _ = condensed_data(24, 64, 40, 16, 3, torch.int16, dtype, seed=13)
    assert_close(launches.condensed_mm(x, values, indices, rows, 24, recorder(kernels)),
                 reference.condensed_mm(x.double(), values.double(), indices, rows, 24),
                 reference.condensed_mm(x.double().abs(), values.double().abs(), indices, rows, 24), dtype)
    assert kernels[0].startswith("diag_fwd_staged") and kernels[1].startswith("condensed_fwd_batched")


def test_public_functions_refuse_cpu_tensors() -> None:
    x = torch.randn(2, 3)
    assert "not a CUDA tensor" in cuda_backend.unavailable_reason(x.device, x.dtype)
    with pytest.raises(UserError, match="not a CUDA tensor"):
        cuda_backend.diag_mm(x, torch.tensor([0]), torch.randn(1, 3), 3)
    assert "unsupported" in cuda_backend.unavailable_reason(torch.device("cuda"), torch.int8)


@pytest.mark.parametrize("sms, cols", [(1, 32), (8, 16), (132, 8)])
def test_diag_small_column_split(monkeypatch: pytest.MonkeyPatch, sms: int, cols: int) -> None:
    """diag_fwd_small's columns per block (more blocks for small layers) give the same product at every width."""
    monkeypatch.setattr(launches, "sm_count", lambda device: sms)
    assert launches.diag_small_cols(150, 5, sms) == cols
    x, offsets, values, _ = diag_data(150, 40, 5, 30, torch.float64, seed=5)
    kernels: list[str] = []

    def recording(launch: launches.Launch) -> None:
        kernels.append((launch.kernel, launch.grid[0]))
        run(launch)

    got = launches.diag_mm(x, offsets, values, 150, recording)
    assert kernels == [("diag_fwd_small", -(-150 // cols))]
    assert_close(got, reference.diag_mm(x, offsets, values, 150),
                 reference.diag_mm(x.abs(), offsets, values.abs(), 150), torch.float64)


def test_vit_layer_at_batch_1_fills_the_gpu() -> None:
    """ViT-B/16's 768-wide layers at batch 1 launch four times as many blocks as one warp per 32 columns would."""
    assert launches.diag_small_cols(768, 1, 132) == 8
    assert launches.diag_small_cols(3072, 1, 132) == 8
    assert launches.diag_small_cols(3072, 5, 132) == 16
    assert launches.diag_small_cols(3072, 12, 132) == 32


def test_sparse_offsets_skip_empty_windows() -> None:
    """Offsets far apart (most DIAG_SPAN windows empty) and unsorted ones across windows, in the tiled kernel."""
    x, _, values, _ = diag_data(700, 300, 20, 5, torch.float64, seed=6)
    for offsets in (torch.tensor([3, 250, 251, 640, 699]), torch.tensor([640, 3, 699, 250, 70])):
        assert_close(launches.diag_mm(x, offsets, values, 700, run), reference.diag_mm(x, offsets, values, 700),
                     reference.diag_mm(x.abs(), offsets, values.abs(), 700), torch.float64)


@pytest.mark.parametrize("out_f, in_f, batch", [(40, 150, 20), (150, 40, 3), (70, 70, 33)])
def test_fused_bias(out_f: int, in_f: int, batch: int) -> None:
    x, offsets, values, _ = diag_data(out_f, in_f, batch, 12, torch.float64, seed=7)
    bias = padded(torch.randn(out_f, dtype=torch.float64))
    assert_close(launches.diag_mm(x, offsets, values, out_f, run, bias=bias),
                 reference.diag_mm(x, offsets, values, out_f) + bias,
                 reference.diag_mm(x.abs(), offsets, values.abs(), out_f) + bias.abs(), torch.float64)
    x, values, indices, rows, _ = condensed_data(out_f, in_f, batch, 9, 3, torch.int16, torch.float64, seed=7)
    assert_close(launches.condensed_mm(x, values, indices, rows, out_f, run, bias=bias),
                 reference.condensed_mm(x, values, indices, rows, out_f) + bias,
                 reference.condensed_mm(x.abs(), values.abs(), indices, rows, out_f) + bias.abs(), torch.float64)


@pytest.mark.parametrize("in_f", [40, 7000])  # x staged in shared memory / read transposed
def test_batch_tiles_beyond_grid_y(monkeypatch: pytest.MonkeyPatch, in_f: int) -> None:
    """With grid y capped at 2 blocks, every kernel that tiles over grid y loops over the remaining tiles."""
    monkeypatch.setattr(launches, "MAX_GRID_Y", 2)
    dt = torch.float64
    x, values, indices, rows, dy = condensed_data(30, in_f, 75, 7, 4, torch.int32, dt, seed=8)
    grids: list[tuple[str, int]] = []

    def recording(launch: launches.Launch) -> None:
        grids.append((launch.kernel, launch.grid[1]))
        run(launch)

    assert_close(launches.condensed_mm(x, values, indices, rows, 30, recording),
                 reference.condensed_mm(x, values, indices, rows, 30),
                 reference.condensed_mm(x.abs(), values.abs(), indices, rows, 30), dt)
    assert_close(launches.condensed_input_grad(dy, values, indices, rows, in_f, recording),
                 reference.condensed_input_grad(dy, values, indices, rows, in_f),
                 reference.condensed_input_grad(dy.abs(), values.abs(), indices, rows, in_f), dt)
    if in_f == 40:
        x, offsets, dvals, dy = diag_data(150, 40, 70, 30, dt, seed=8)
        assert_close(launches.diag_mm(x, offsets, dvals, 150, recording), reference.diag_mm(x, offsets, dvals, 150),
                     reference.diag_mm(x.abs(), offsets, dvals.abs(), 150), dt)
        assert_close(launches.diag_values_grad(dy, x, offsets, recording), reference.diag_values_grad(dy, x, offsets),
                     reference.diag_values_grad(dy.abs(), x.abs(), offsets), dt)
    assert grids and all(y == 2 for _, y in grids)


def test_many_rows_stay_inside_the_grid_limit() -> None:
    """300K batch rows of a wide layer (one row per tile) launch within CUDA's grid-y limit; shapes only (meta)."""
    x = torch.empty(300_000, 12_288, device="meta")
    w = CondensedWeight.top_k(torch.randn(8, 12_288), 0.99)
    launched: list[launches.Launch] = []
    y = launches.condensed_mm(x, w.values.to("meta"), w.indices.to("meta"), w.active_rows.to("meta"), 8,
                              launched.append)
    assert y.shape == (300_000, 8)
    assert launched[0].grid[1] == launches.MAX_GRID_Y == 65535


def test_transposed_pattern_is_cached_per_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    """The input gradient builds the transposed pattern once per pattern, and rebuilds it after any change."""
    builds: list[int] = []
    build = launches.transposed_pattern
    monkeypatch.setattr(launches, "transposed_pattern", lambda *a: builds.append(1) or build(*a))
    dt = torch.float64
    _, values, indices, rows, dy = condensed_data(50, 40, 6, 7, 3, torch.int16, dt, seed=9)
    _, _, other, _, _ = condensed_data(50, 40, 6, 7, 3, torch.int16, dt, seed=10)

    def check() -> None:
        assert_close(launches.condensed_input_grad(dy, values, indices, rows, 40, run),
                     reference.condensed_input_grad(dy, values, indices, rows, 40),
                     reference.condensed_input_grad(dy.abs(), values.abs(), indices, rows, 40), dt)

    check()
    check()
    assert len(builds) == 1
    indices.copy_(other)  # the same tensor, a new pattern: its version counter moves
    check()
    assert len(builds) == 2
    rows = rows.flip(0).contiguous()  # a new tensor for the active rows
    check()
    assert len(builds) == 3


def test_sizes_beyond_32_bits_raise() -> None:
    """A size that overflows the kernels' 32-bit arguments raises a clear UserError."""
    with pytest.raises(UserError, match="32-bit"):
        launches._i32(2**31)


class EmulatedPrepared:
    """loader.Prepared for the emulator: replays the recorded launch with x's and y's positions refilled."""

    replays = 0

    def __init__(self, launch: launches.Launch, x: torch.Tensor, y: torch.Tensor) -> None:
        self.launch, self.x, self.y = launch, [a is x for a in launch.args], [a is y for a in launch.args]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        EmulatedPrepared.replays += 1
        args = tuple(x if is_x else y if is_y else a for a, is_x, is_y in zip(self.launch.args, self.x, self.y))
        run(dataclasses.replace(self.launch, args=args))


@pytest.fixture
def emulated_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """kernels.cuda's bound products on CPU tensors, launching through the emulator."""
    monkeypatch.setattr(cuda_backend, "_unavailable_reason", lambda device, dtype: None)
    monkeypatch.setattr(loader, "run", run)
    monkeypatch.setattr(loader, "Prepared", EmulatedPrepared)
    EmulatedPrepared.replays = 0


def test_bound_products_plan_once_and_replay(emulated_loader: None) -> None:
    """A bound product records each batch size's launch on the first call and replays it with new x and y after;
    the replay matches the reference, and an in-place change of a buffer is checked and bound again."""
    dt = torch.float64
    x, offsets, values, _ = diag_data(150, 40, 20, 30, dt, seed=14)
    bias = torch.randn(150, dtype=dt)
    bound = cuda_backend.bind_diag_mm(offsets, values, 40, 150, bias=bias)
    for _ in range(2):
        x = torch.randn(20, 40, dtype=dt)
        assert_close(bound(x), reference.diag_mm(x, offsets, values, 150) + bias,
                     reference.diag_mm(x.abs(), offsets, values.abs(), 150) + bias.abs(), dt)
    assert EmulatedPrepared.replays == 1
    values.mul_(-2.0)  # in place: the version moves, the next call rebinds (and plans again)
    assert_close(bound(x), reference.diag_mm(x, offsets, values, 150) + bias,
                 reference.diag_mm(x.abs(), offsets, values.abs(), 150) + bias.abs(), dt)
    offsets[0] = 150  # now out of range: checked again, refused in one line
    with pytest.raises(UserError, match=r"diagonal offsets must lie in \[0, 150\), found 150"):
        bound(x)

    x, values, indices, rows, _ = condensed_data(50, 41, 37, 7, 3, torch.int16, dt, seed=14)
    bound = cuda_backend.bind_condensed_mm(values, indices, rows, 41, 50, bias=bias[:50])
    for _ in range(2):
        x = torch.randn(37, 41, dtype=dt)
        assert_close(bound(x), reference.condensed_mm(x, values, indices, rows, 50) + bias[:50],
                     reference.condensed_mm(x.abs(), values.abs(), indices, rows, 50) + bias[:50].abs(), dt)
    assert EmulatedPrepared.replays == 2


def test_bound_product_without_a_replayable_launch(emulated_loader: None) -> None:
    """Inputs too wide to stage read a transposed copy of x: launched through launches on every call, unchecked."""
    dt = torch.float64
    x, values, indices, rows, _ = condensed_data(7, 7000, 3, 69, 2, torch.int32, dt, seed=15)
    bound = cuda_backend.bind_condensed_mm(values, indices, rows, 7000, 7)
    for _ in range(2):
        x = torch.randn(3, 7000, dtype=dt)
        assert_close(bound(x), reference.condensed_mm(x, values, indices, rows, 7),
                     reference.condensed_mm(x.abs(), values.abs(), indices, rows, 7), dt)
    assert EmulatedPrepared.replays == 0


def test_bound_product_sends_other_inputs_to_the_checked_path(emulated_loader: None) -> None:
    dt = torch.float64
    _, offsets, values, _ = diag_data(30, 20, 4, 5, dt, seed=16)
    bound = cuda_backend.bind_diag_mm(offsets, values, 20, 30)
    with pytest.raises(UserError, match="mixed inputs"):
        bound(torch.randn(4, 20, dtype=torch.float32))
    with pytest.raises(UserError, match="2-D tensors"):
        bound(torch.randn(20, dtype=dt))
    x = torch.randn(20, 4, dtype=dt).t()  # not contiguous: the checked path makes it so
    assert_close(bound(x), reference.diag_mm(x, offsets, values, 30),
                 reference.diag_mm(x.abs(), offsets, values.abs(), 30), dt)
    assert EmulatedPrepared.replays == 0


def test_kernel_sweep_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's table logic on CPU tensors, its timer and launches stubbed (the GPU test runs it for real): the
    rule's kernel and every fitting tile; both values gradients and their dense alternative, which must agree."""
    timed: list[str] = []

    def fake_time(fn, device) -> float:
        fn()  # each timed call runs once, so the products are built as on the GPU
        timed.append("t")
        return 7.0

    monkeypatch.setattr(kernel_sweep, "time_us", fake_time)
    monkeypatch.setattr(loader, "run", run)
    monkeypatch.setattr(kernel_sweep, "SHAPES", {"fc2": (3072, 768)})
    lines = kernel_sweep.tile_sweep([197], torch.device("cpu"))
    assert lines[2] == "| fc2 | 197 | cuBLAS F.linear | – | 7.0 | – |"
    assert lines[3] == "| fc2 | 197 | diagonal | diag_fwd_staged4 | 7.0 | 4: 7.0, 8: 7.0 |"  # 16 x 3072 floats > 96 KiB
    assert lines[4] == "| fc2 | 197 | condensed | condensed_fwd_batched8 | 7.0 | 8: 7.0 |"
    assert len(timed) == 1 + 3 + 2
    monkeypatch.setattr(kernel_sweep, "SHAPES", {"proj": (40, 24)})
    grads = kernel_sweep.grad_sweep([3], torch.device("cpu"))
    assert grads[2:] == ["| proj | 3 | diagonal | 7.0 | 7.0 |", "| proj | 3 | condensed | 7.0 | 7.0 |"]
    assert kernel_sweep.main(["--out", "unused.md"]) == 2  # no GPU here
