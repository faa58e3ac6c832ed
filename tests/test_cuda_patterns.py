"""Per-pattern caching and pattern checks of the CUDA path, on CPU tensors (no GPU needed)."""

from __future__ import annotations

import gc

import pytest
import torch

from dstbench.errors import UserError
from dstbench.kernels import cuda as cuda_backend
from dstbench.kernels.cuda.pattern_cache import PatternCache


def counted(cache: PatternCache, pattern: tuple[torch.Tensor, ...], extra: object, calls: list[int]) -> int:
    return cache.get(pattern, extra, lambda: calls.append(1) or len(calls))


def test_cache_hits_until_the_pattern_changes() -> None:
    cache: PatternCache[int] = PatternCache()
    calls: list[int] = []
    a, b = torch.arange(6), torch.arange(3)
    assert counted(cache, (a, b), 1, calls) == 1
    assert counted(cache, (a, b), 1, calls) == 1
    assert counted(cache, (a, b), 2, calls) == 2  # another extra key
    a.add_(1)  # in place: the version counter moves
    assert counted(cache, (a, b), 1, calls) == 3
    assert counted(cache, (a.clone(), b), 1, calls) == 4  # equal values, another tensor
    assert counted(cache, (a.view(2, 3), b), 1, calls) == 5  # another shape of the same storage


def test_entries_go_with_their_tensors() -> None:
    cache: PatternCache[int] = PatternCache()
    a, b = torch.arange(4), torch.arange(2)
    cache.get((a, b), None, lambda: 0)
    assert len(cache) == 1
    del b
    gc.collect()
    assert len(cache) == 0


def test_inference_tensors_are_never_cached() -> None:
    cache: PatternCache[int] = PatternCache()
    calls: list[int] = []
    with torch.inference_mode():
        a = torch.arange(4)
    counted(cache, (a,), None, calls)
    counted(cache, (a,), None, calls)
    assert len(calls) == 2 and len(cache) == 0


def test_wrong_offset_is_one_line_user_error() -> None:
    with pytest.raises(UserError, match=r"diagonal offsets must lie in \[0, 8\), found 9") as info:
        cuda_backend._check_offsets(torch.tensor([0, 9]), 8)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="found -1"):
        cuda_backend._check_offsets(torch.tensor([-1]), 8)
    cuda_backend._check_offsets(torch.tensor([0, 7]), 8)


def test_bad_condensed_pattern_is_one_line_user_error() -> None:
    indices = torch.tensor([[0, 2], [1, 3]], dtype=torch.int16)
    with pytest.raises(UserError, match="row 4 appears twice") as info:
        cuda_backend._check_condensed_pattern(indices, torch.tensor([4, 4]), 4, 6)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"active_rows must lie in \[0, 6\), found 6"):
        cuda_backend._check_condensed_pattern(indices, torch.tensor([1, 6]), 4, 6)
    with pytest.raises(UserError, match=r"indices must lie in \[0, 3\), found 3"):
        cuda_backend._check_condensed_pattern(indices, torch.tensor([1, 2]), 3, 6)
    cuda_backend._check_condensed_pattern(indices, torch.tensor([5, 0]), 4, 6)  # distinct, any order


def test_pattern_is_checked_once_and_again_after_a_change() -> None:
    offsets = torch.tensor([0, 3])
    cuda_backend._check_offsets(offsets, 8)
    offsets[1] = 8  # in place: the cached check no longer applies
    with pytest.raises(UserError, match="found 8"):
        cuda_backend._check_offsets(offsets, 8)
