"""Geometry of the sparse formats (kernels/formats.py) and the pure-torch reference products (kernels/reference.py)."""

from __future__ import annotations

import math

import pytest
import torch

from dstbench.errors import UserError
from dstbench.kernels import reference
from dstbench.kernels.formats import (
    CondensedWeight,
    DiagonalWeight,
    diagonal_coords,
    index_dtype,
    num_diagonals,
)

SHAPES = [(5, 3), (3, 5), (4, 4), (1, 6), (6, 1), (1, 1), (12, 8)]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("out_f, in_f", SHAPES)
def test_diagonals_tile_the_weight_exactly(out_f: int, in_f: int) -> None:
    p, d = max(out_f, in_f), min(out_f, in_f)
    rows, cols = diagonal_coords(torch.arange(p), out_f, in_f)
    assert rows.shape == cols.shape == (p, d)
    flat = rows * in_f + cols
    assert sorted(flat.flatten().tolist()) == list(range(out_f * in_f))


@pytest.mark.parametrize("out_f, in_f", SHAPES)
def test_diagonal_geometry_follows_the_authors_convention(out_f: int, in_f: int) -> None:
    p, d = max(out_f, in_f), min(out_f, in_f)
    rows, cols = diagonal_coords(torch.arange(p), out_f, in_f)
    for s in range(p):
        for j in range(d):
            want = ((j + s) % out_f, j) if out_f >= in_f else (j, (j + s) % in_f)
            assert (rows[s, j].item(), cols[s, j].item()) == want


@pytest.mark.parametrize("out_f, in_f", [(5, 3), (3, 5), (12, 8)])
def test_non_square_transpose_keeps_diagonal_entries_in_order(out_f: int, in_f: int) -> None:
    offsets = torch.arange(max(out_f, in_f))
    rows, cols = diagonal_coords(offsets, out_f, in_f)
    rows_t, cols_t = diagonal_coords(offsets, in_f, out_f)
    assert torch.equal(rows, cols_t) and torch.equal(cols, rows_t)


def test_square_transpose_maps_diagonal_s_to_diagonal_p_minus_s() -> None:
    n, s = 5, 2
    rows, cols = diagonal_coords(torch.tensor([s]), n, n)
    entries_of_wt = set(zip(cols.flatten().tolist(), rows.flatten().tolist()))  # diagonal s of W, transposed
    rows_s, cols_s = diagonal_coords(torch.tensor([s]), n, n)
    rows_m, cols_m = diagonal_coords(torch.tensor([n - s]), n, n)
    assert entries_of_wt != set(zip(rows_s.flatten().tolist(), cols_s.flatten().tolist()))
    assert entries_of_wt == set(zip(rows_m.flatten().tolist(), cols_m.flatten().tolist()))


@pytest.mark.parametrize(
    "out_f, in_f, sparsity, k", [(3072, 768, 0.9, 308), (768, 3072, 0.9, 308), (10, 10, 0.0, 10), (10, 4, 0.99, 1), (8, 8, 0.5, 4)]
)
def test_num_diagonals(out_f: int, in_f: int, sparsity: float, k: int) -> None:
    assert num_diagonals(out_f, in_f, sparsity) == k
    # the authors' rule (TempSoftmaxDiagLinear): K = max(1, ceil(int((1 - s) * out * in) / min(out, in)))
    assert k == max(1, math.ceil(int((1 - sparsity) * out_f * in_f) / min(out_f, in_f)))


@pytest.mark.parametrize("out_f, in_f", SHAPES)
def test_diagonal_weight_round_trip(out_f: int, in_f: int) -> None:
    w = rand(out_f, in_f)
    p = max(out_f, in_f)
    offsets = torch.randperm(p, generator=torch.Generator().manual_seed(1))[: max(1, p // 2)]
    dw = DiagonalWeight.from_dense(w, offsets)
    assert torch.equal(dw.offsets, torch.sort(offsets).values)
    dense = dw.to_dense()
    rows, cols = diagonal_coords(dw.offsets, out_f, in_f)
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[rows, cols] = True
    assert torch.equal(dense, w * mask)
    assert dw.k == dw.offsets.numel() and dw.nnz == int(mask.sum())


def test_diagonal_top_k_keeps_the_largest_diagonals() -> None:
    w = torch.full((6, 4), 0.1, dtype=torch.float64)
    rows, cols = diagonal_coords(torch.tensor([2, 5]), 6, 4)
    w[rows, cols] = 5.0
    dw = DiagonalWeight.top_k(w, sparsity=0.7)  # K = ceil(0.3 * 6) = 2
    assert dw.offsets.tolist() == [2, 5]


@pytest.mark.parametrize(
    "offsets, values, match",
    [
        (torch.tensor([0, 1]), torch.zeros(2, 4), "shape"),
        (torch.tensor([0, 6]), torch.zeros(2, 3), "offsets"),
        (torch.tensor([-1]), torch.zeros(1, 3), "offsets"),
        (torch.tensor([[0]]), torch.zeros(1, 3), "offsets"),
    ],
)
def test_diagonal_weight_rejects_bad_input(offsets: torch.Tensor, values: torch.Tensor, match: str) -> None:
    with pytest.raises(UserError, match=match):
        DiagonalWeight(offsets, values, 6, 3)


def test_condensed_weight_round_trip_and_ablation() -> None:
    w = rand(6, 5)
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[0, [1, 3]] = True
    mask[2, [0, 4]] = True
    mask[5, [2, 3]] = True  # rows 1, 3, 4 ablated
    cw = CondensedWeight.from_mask(w, mask)
    assert cw.active_rows.tolist() == [0, 2, 5] and cw.k == 2 and cw.nnz == 6
    assert cw.indices.tolist() == [[1, 3], [0, 4], [2, 3]] and cw.indices.dtype == torch.int16
    assert torch.equal(cw.to_dense(), w * mask)


def test_condensed_from_mask_rejects_unequal_fan_in() -> None:
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 0] = mask[1, 0] = mask[1, 1] = True
    with pytest.raises(UserError, match="fan-in"):
        CondensedWeight.from_mask(rand(3, 4), mask)


def test_condensed_top_k_keeps_the_largest_per_row() -> None:
    w = rand(7, 10)
    cw = CondensedWeight.top_k(w, 0.7)
    assert cw.k == 3 and cw.active_rows.tolist() == list(range(7))
    want = torch.topk(w.abs(), 3, dim=1).indices.sort(dim=1).values
    assert torch.equal(cw.indices.long(), want)


def test_condensed_weight_rejects_bad_input() -> None:
    with pytest.raises(UserError, match="exceeds"):
        CondensedWeight(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.int16), torch.arange(2), 3, 4)
    with pytest.raises(UserError, match="same shape"):
        CondensedWeight(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.int16), torch.arange(2), 3, 4)
    with pytest.raises(UserError, match="active row"):
        CondensedWeight(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int16), torch.arange(3), 3, 4)


def test_index_dtype() -> None:
    assert index_dtype(768) == torch.int16 and index_dtype(32767) == torch.int16
    assert index_dtype(32768) == torch.int32


@pytest.mark.parametrize("out_f, in_f", SHAPES)
def test_reference_diagonal_products_match_dense(out_f: int, in_f: int) -> None:
    p, d = max(out_f, in_f), min(out_f, in_f)
    offsets = torch.tensor(sorted({0, p - 1, p // 2}))
    dw = DiagonalWeight(offsets, rand(offsets.numel(), d), out_f, in_f)
    w = dw.to_dense()
    x, dy = rand(3, in_f, seed=1), rand(3, out_f, seed=2)
    torch.testing.assert_close(reference.diag_mm(x, dw.offsets, dw.values, out_f), x @ w.T)
    torch.testing.assert_close(reference.diag_mm(dy, dw.offsets, dw.values, in_f, transpose=True), dy @ w)
    rows, cols = diagonal_coords(offsets, out_f, in_f)
    torch.testing.assert_close(reference.diag_values_grad(dy, x, offsets), (dy.T @ x)[rows, cols])


def test_reference_condensed_products_match_dense() -> None:
    w = rand(6, 5)
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[[0, 0, 3, 3, 4, 4], [1, 4, 0, 2, 3, 4]] = True
    cw = CondensedWeight.from_mask(w, mask)
    dense = cw.to_dense()
    x, dy = rand(4, 5, seed=1), rand(4, 6, seed=2)
    torch.testing.assert_close(reference.condensed_mm(x, cw.values, cw.indices, cw.active_rows, 6), x @ dense.T)
    rows = cw.active_rows.unsqueeze(1).expand_as(cw.indices)
    torch.testing.assert_close(
        reference.condensed_values_grad(dy, x, cw.indices, cw.active_rows), (dy.T @ x)[rows, cw.indices.long()]
    )
    torch.testing.assert_close(reference.condensed_input_grad(dy, cw.values, cw.indices, cw.active_rows, 5), dy @ dense)
