"""The lane-packed copy of a condensed weight (kernels/cpu/lanes.cpp): its product against the dense one in
float64, its errors, and the condensed layer that binds it (rebinding, bytes per call); the rebinding test covers
the diagonal layer's tile-packed copy too (its own tests: test_diag_pack.py)."""

from __future__ import annotations

import ctypes

import pytest
import torch

from dstbench.errors import UserError
from dstbench.kernels import cpu
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight
from dstbench.kernels.layers import CondensedLinear, DiagonalLinear
from dstbench.suites import traffic

_REASON = cpu.lanes_unavailable(torch.zeros(1, 1), 1)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"lane-packed product unavailable: {_REASON}")


def weight(out_f: int, in_f: int, n_active: int, k: int, index: torch.dtype, seed: int = 0,
           repeats: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random condensed values (n_active, k), indices (distinct per row unless ``repeats``) and unsorted rows."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(out_f, generator=gen)[:n_active]
    if repeats:
        idx = torch.randint(0, in_f, (n_active, k), generator=gen)
    else:
        idx = torch.stack([torch.randperm(in_f, generator=gen)[:k] for _ in range(n_active)]).reshape(n_active, k)
    return torch.randn(n_active, k, generator=gen), idx.to(index), rows


def dense(values: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, out_f: int, in_f: int) -> torch.Tensor:
    """The (out, in) float64 weight; repeated indices of a row add up."""
    w = torch.zeros(out_f, in_f, dtype=torch.float64)
    w.index_put_((rows[:, None].expand_as(idx).long(), idx.long()), values.double(), accumulate=True)
    return w


def check(out_f: int, in_f: int, batch: int, n_active: int, k: int, index: torch.dtype = torch.int16,
          repeats: bool = False) -> None:
    values, idx, rows = weight(out_f, in_f, n_active, k, index, repeats=repeats)
    w = dense(values, idx, rows, out_f, in_f)
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(7))
    bias = torch.randn(out_f, generator=torch.Generator().manual_seed(8))
    pack = cpu.pack_lanes(values, idx, rows, in_f, out_f)
    x64 = x.double()
    for b in (None, bias):
        want = x64 @ w.T + (0 if b is None else b.double())
        bound = x64.abs() @ w.abs().T + (0 if b is None else b.double().abs())
        got = cpu.lanes_mm(x, pack, in_f, out_f, bias=b)
        assert got.shape == (batch, out_f) and got.dtype == torch.float32
        err = (got.double() - want).abs()
        assert bool((err <= 8 * 2.0**-23 * bound + 1e-30).all()), f"max error {err.max().item():.3g}"


# out, in, batch, n_active, k: one entry; one whole group (48 rows) at full density (every offset of one window);
# a lone row in the last group and inputs past the first window; ablated rows (their columns hold the bias), a
# group of one and of two vectors; ViT-B/16's fc1 and fc2 at 90% sparsity, fc2 with ablated rows; inputs not a
# multiple of the window (x's zero tail)
CASES = [(1, 1, 1, 1, 1), (48, 32, 1, 48, 32), (49, 33, 2, 49, 5), (40, 100, 2, 30, 100), (40, 100, 1, 17, 60),
         (3072, 768, 1, 3072, 77), (768, 3072, 2, 700, 307), (50, 45, 1, 50, 9)]


@pytest.mark.parametrize("index", [torch.int16, torch.int32], ids=str)
@pytest.mark.parametrize("out_f, in_f, batch, n_active, k", CASES)
def test_lanes_match_dense(out_f: int, in_f: int, batch: int, n_active: int, k: int, index: torch.dtype) -> None:
    check(out_f, in_f, batch, n_active, k, index)


def test_repeated_indices_of_a_row_add_up() -> None:
    check(20, 40, 2, 20, 30, repeats=True)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_the_thread_count(threads: int) -> None:
    values, idx, rows = weight(300, 200, 290, 20, torch.int16)
    pack = cpu.pack_lanes(values, idx, rows, 200, 300)
    x = torch.randn(2, 200, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.lanes_mm(x, pack, 200, 300)
        torch.set_num_threads(threads)
        assert torch.equal(cpu.lanes_mm(x, pack, 200, 300), one)  # each row is summed by one thread, in one order
    finally:
        torch.set_num_threads(before)


def test_copy_holds_about_one_and_a_half_slots_per_entry() -> None:
    """The earliest-deadline-first steps of a random 90% mask in groups of 48 rows: ~1.5 slots per entry, so the
    copy stays near the condensed bytes (values + int16 indices, 6 bytes per entry): 48 x (4 + 1) + 2 bytes per
    step, per group its first step and its lanes' output columns, and the 72 columns of no active row."""
    values, idx, rows = weight(3072, 768, 3000, 77, torch.int16)
    pack = cpu.pack_lanes(values, idx, rows, 768, 3072)
    slots = pack.steps * 48 / values.numel()
    assert 1.0 <= slots < 1.6
    groups = -(-3000 // 48)
    assert pack.blob.numel() == pack.steps * (48 * 5 + 2) + (groups + 1) * 8 + groups * 48 * 4 + 72 * 4


def test_python_limits_mirror_the_compiled_ones() -> None:
    """The batch that picks the copy (``BoundCopy.copies``, the C++ call path's ``small``) and the inputs it
    takes are Python constants; lanes.cpp holds its own, and a drift would send batches it refuses to it."""
    batch, max_in = ctypes.c_int64(), ctypes.c_int64()
    cpu._library.lanes["limits"](ctypes.byref(batch), ctypes.byref(max_in))
    assert (batch.value, max_in.value) == (cpu.LANES_BATCH, cpu.LANES_MAX_IN)


def test_bad_input_is_refused() -> None:
    values, idx, rows = weight(8, 10, 8, 3, torch.int16)
    with pytest.raises(UserError, match=r"condensed indices must lie in \[0, in_features\)"):
        cpu.pack_lanes(values, torch.full_like(idx, 10), rows, 10, 8)
    with pytest.raises(UserError, match=r"condensed indices must lie in \[0, in_features\)"):
        cpu.pack_lanes(values, torch.full_like(idx, -1), rows, 10, 8)
    with pytest.raises(UserError, match=r"active_rows must lie in \[0, out_features\)"):
        cpu.pack_lanes(values, idx, torch.full_like(rows, 8), 10, 8)
    with pytest.raises(UserError, match="active_rows must be distinct"):  # the copy lists out - n idle columns
        cpu.pack_lanes(values, idx, torch.tensor([0, 1, 2, 3, 4, 5, 6, 6]), 10, 8)
    with pytest.raises(UserError, match="float32 CPU weights"):
        cpu.pack_lanes(values.double(), idx, rows, 10, 8)
    assert "at most 65535 inputs" in cpu.lanes_unavailable(values, 70000)
    pack = cpu.pack_lanes(values, idx, rows, 10, 8)
    with pytest.raises(UserError, match="at most 2 rows, got 3; use condensed_mm"):
        cpu.lanes_mm(torch.randn(3, 10), pack, 10, 8)
    with pytest.raises(UserError, match=r"float32 CPU x of shape \(B, 10\)"):
        cpu.lanes_mm(torch.randn(1, 10).double(), pack, 10, 8)


def _pack_condensed() -> None:
    cpu.pack_lanes(*weight(8, 10, 8, 3, torch.int16), 10, 8)


def _pack_diagonal() -> None:  # the tile-packed copy of diag_pack.cpp, made when a diagonal weight is bound
    d = DiagonalWeight.top_k(torch.randn(8, 10), 0.5)
    cpu.bind_diag_mm(d.offsets, d.values, 10, 8)


@pytest.mark.parametrize("pack", [_pack_condensed, _pack_diagonal], ids=["condensed", "diagonal"])
def test_a_copy_that_cannot_be_allocated_is_a_memory_error(pack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C++ asks Python for the copy's buffer once its size is known; a failed allocation stops the packing."""
    empty = torch.empty

    def failing(*args, **kwargs):
        if kwargs.get("dtype") is torch.uint8:
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", failing)
    with pytest.raises(MemoryError, match="ran out of memory"):
        pack()


@pytest.mark.parametrize("make", [
    lambda w, b: CondensedLinear(CondensedWeight.top_k(w, 0.75, b)),
    lambda w, b: DiagonalLinear(DiagonalWeight.top_k(w, 0.75, b)),  # the tile-packed copy (diag_pack.cpp)
], ids=["condensed", "diagonal"])
def test_layer_runs_small_batches_through_the_copy_and_rebinds_on_in_place_changes(make) -> None:
    layer = make(torch.randn(48, 40, generator=torch.Generator().manual_seed(0)), torch.randn(48))
    ref = layer._product  # the operator path: the format's kernel
    with torch.no_grad():
        x1, x5 = torch.randn(1, 40), torch.randn(5, 40)
        bound = layer.bound_product()
        assert isinstance(bound, cpu.BoundCopy)
        torch.testing.assert_close(layer(x1), ref(x1))
        torch.testing.assert_close(layer(x5), ref(x5))
        assert layer.bound_product() is bound  # nothing changed: the same binding
        layer.load_state_dict({**layer.state_dict(), "values": 2 * layer.values})  # copies in place
        torch.testing.assert_close(layer(x1), ref(x1))  # the copy was rebuilt from the new values
        assert layer.bound_product() is not bound
        layer.bias.add_(1)  # the bias is read at each call, never copied
        torch.testing.assert_close(layer(x1), ref(x1))


def test_bytes_per_call_count_the_tensors_the_call_reads() -> None:
    w = torch.randn(48, 40, generator=torch.Generator().manual_seed(0))
    layer = CondensedLinear(CondensedWeight.top_k(w, 0.75, torch.randn(48)))
    pack = layer.bound_product()
    act = 40 + 48
    assert traffic.call_bytes(layer, 1, 4) == pack.blob.numel() + 48 * 4 + act * 4
    assert traffic.call_bytes(layer, 2, 4) == pack.blob.numel() + 48 * 4 + 2 * act * 4
    stored = 48 * 10 * 4 + 48 * 10 * 2 + 48 * 8 + 48 * 4  # values, int16 indices, active rows, bias
    assert traffic.call_bytes(layer, 3, 4) == stored + 3 * act * 4
