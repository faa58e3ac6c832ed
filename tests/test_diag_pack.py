"""The tile-packed copy of a diagonal weight (kernels/cpu/diag_pack.cpp): its product against the dense one in
float64, its size, its errors, and the bytes per call of the diagonal layer that binds it (its rebinding and a
failed allocation are tested with the condensed layer's copy, in test_lanes.py)."""

from __future__ import annotations

import ctypes

import pytest
import torch

from dstbench.errors import UserError
from dstbench.kernels import cpu
from dstbench.kernels.formats import DiagonalWeight
from dstbench.kernels.layers import DiagonalLinear
from dstbench.suites import traffic

_REASON = cpu.diag_pack_unavailable(torch.zeros(1, 1), 1, 1)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"tile-packed product unavailable: {_REASON}")


def weight(out_f: int, in_f: int, k: int, seed: int = 0) -> DiagonalWeight:
    """k random diagonals of a random (out_f, in_f) weight, with a bias."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randperm(max(out_f, in_f), generator=gen)[:k]
    return DiagonalWeight.from_dense(torch.randn(out_f, in_f, generator=gen), offsets,
                                     torch.randn(out_f, generator=gen))


def dense(d: DiagonalWeight) -> torch.Tensor:
    """The (out, in) float64 weight, entry by entry from the diagonals' geometry (formats.diagonal_coords)."""
    return d.to_dense().double()


def bind(d: DiagonalWeight, bias: torch.Tensor | None) -> cpu.BoundProduct:
    return cpu.bind_diag_mm(d.offsets, d.values, d.in_features, d.out_features, bias=bias)


# out, in, k (diagonals), batch: one entry; square (the inputs wrap around inside a tile, every entry valid); the
# long side less than a tile longer than the short one, both ways (a diagonal's two ends meet in one tile); every
# diagonal of a small weight; a single input or output; outputs not a multiple of the tile; ViT-B/16's fc1
# (outputs on the long side) and fc2 at 90% sparsity
CASES = [(1, 1, 1, 1), (33, 33, 7, 2), (40, 30, 12, 1), (30, 40, 12, 2), (20, 36, 36, 1), (17, 1, 5, 2),
         (1, 17, 5, 1), (50, 45, 9, 2), (3072, 768, 307, 1), (768, 3072, 307, 2)]


@pytest.mark.parametrize("out_f, in_f, k, batch", CASES)
def test_copy_matches_dense(out_f: int, in_f: int, k: int, batch: int) -> None:
    d = weight(out_f, in_f, k)
    w = dense(d)
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(7))
    for bias in (None, d.bias):
        bound = bind(d, bias)
        assert isinstance(bound, cpu.BoundCopy) and bound.copies(batch)
        want = x.double() @ w.T + (0 if bias is None else bias.double())
        limit = x.double().abs() @ w.abs().T + (0 if bias is None else bias.double().abs())
        got = bound(x)
        assert got.shape == (batch, out_f) and got.dtype == torch.float32
        err = (got.double() - want).abs()
        assert bool((err <= 8 * 2.0**-23 * limit + 1e-30).all()), f"max error {err.max().item():.3g}"


@pytest.mark.parametrize("out_f, in_f, k, batch", CASES)
def test_copy_reads_no_input_outside_its_runs(out_f: int, in_f: int, k: int, batch: int) -> None:
    """x sits between NaNs: an entry's lanes are those whose input lies in [0, in) (the mask the call computes
    from the entry's start), so a lane read before or past x would turn its output NaN."""
    d = weight(out_f, in_f, k)
    padded = torch.full((in_f + 32,), float("nan"))
    padded[16:-16] = torch.randn(in_f, generator=torch.Generator().manual_seed(7))
    x = padded[16:-16].view(1, in_f)
    got = bind(d, d.bias)(x)
    assert not got.isnan().any()
    torch.testing.assert_close(got, (x.double() @ dense(d).T + d.bias.double()).float(), rtol=1e-5, atol=1e-5)


def test_larger_batches_run_the_diagonal_kernel() -> None:
    d = weight(40, 30, 12)
    bound = bind(d, d.bias)
    assert not bound.copies(cpu.DIAG_PACK_BATCH + 1)
    x = torch.randn(cpu.DIAG_PACK_BATCH + 1, 30, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(bound(x), cpu.diag_mm(x, d.offsets, d.values, 40, bias=d.bias), rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_the_thread_count(threads: int) -> None:
    d = weight(3072, 768, 100)
    bound = bind(d, d.bias)
    x = torch.randn(2, 768, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bound(x)
        torch.set_num_threads(threads)
        assert torch.equal(bound(x), one)  # each tile is summed by one thread, in one order
    finally:
        torch.set_num_threads(before)


def test_python_limits_mirror_the_compiled_ones() -> None:
    """The batch that picks the copy (``BoundCopy.copies``, the C++ call path's ``small``) and the long side it
    takes are Python constants; diag_pack.cpp holds its own, which refuses larger batches and longer sides."""
    batch, max_long = ctypes.c_int64(), ctypes.c_int64()
    cpu._library.diag_pack["limits"](ctypes.byref(batch), ctypes.byref(max_long))
    assert (batch.value, max_long.value) == (cpu.DIAG_PACK_BATCH, cpu.DIAG_PACK_MAX_LONG)


def test_copy_holds_the_values_and_a_few_bytes_per_vector() -> None:
    """b16-fc1 at 90%: 16 values and a 2-byte input start per entry, about one entry per 16 values (a diagonal
    that starts inside a tile fills two partial ones), and each tile's first entry and first partial run."""
    d = weight(3072, 768, 307)
    bound = bind(d, None)
    tiles = 3072 // 16
    entries = (bound.blob.numel() - (2 * tiles + 1) * 8) // 66
    assert bound.blob.numel() == entries * 66 + (2 * tiles + 1) * 8
    assert 307 * 768 / 16 <= entries <= 307 * (768 / 16 + 1)


def test_bad_input_is_refused() -> None:
    d = weight(8, 10, 3)
    bad = d.offsets.clone()
    bad[0] = 10
    with pytest.raises(UserError, match=r"diagonal offsets must lie in \[0, max\(out, in\)\)"):
        cpu._copy(cpu._library.diag_pack["pack"], bad.data_ptr(), d.values.data_ptr(), 3, 10, 8)
    assert "float32 CPU weights" in cpu.diag_pack_unavailable(d.values.double(), 10, 8)
    assert not isinstance(cpu.bind_diag_mm(d.offsets, d.values.double(), 10, 8), cpu.BoundCopy)


def test_a_long_side_beyond_the_16_bit_starts_runs_the_diagonal_kernel() -> None:
    """One output of 32769 inputs: the starts would overflow int16, so the binding keeps the diagonal kernel and
    the packing itself refuses the shape."""
    n = cpu.DIAG_PACK_MAX_LONG + 1
    assert f"at most {cpu.DIAG_PACK_MAX_LONG} features on the long side" in cpu.diag_pack_unavailable(
        torch.zeros(1, 1), n, 1)
    offsets, values = torch.tensor([n - 1]), torch.ones(1, 1)
    bound = cpu.bind_diag_mm(offsets, values, n, 1)
    assert not isinstance(bound, cpu.BoundCopy)
    x = torch.zeros(1, n)
    x[0, n - 1] = 2.0
    assert bound(x).item() == 2.0  # the one weight joins output 0 to input (0 + n - 1) mod n
    with pytest.raises(UserError):
        cpu._copy(cpu._library.diag_pack["pack"], offsets.data_ptr(), values.data_ptr(), 1, n, 1)


def test_bytes_per_call_count_the_tensors_the_call_reads() -> None:
    layer = DiagonalLinear(weight(48, 40, 10))
    blob = layer.bound_product().blob
    act = 40 + 48
    assert traffic.call_bytes(layer, 1, 4) == blob.numel() + 48 * 4 + act * 4
    assert traffic.call_bytes(layer, 2, 4) == blob.numel() + 48 * 4 + 2 * act * 4
    stored = 10 * 8 + 10 * 40 * 4 + 48 * 4  # offsets, values, bias
    assert traffic.call_bytes(layer, 3, 4) == stored + 3 * act * 4
