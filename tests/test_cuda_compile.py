"""Every CUDA source compiles to PTX with NVRTC for sm_80 and sm_90, for every dtype; no GPU needed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed (pip install dstbench[test])")

from dstbench.kernels import nvrtc_check  # noqa: E402
from dstbench.kernels.cuda.sources import (  # noqa: E402
    TILES,
    cuda_include_dir,
    expand_includes,
    kernel_names,
    source_text,
)

pytestmark = pytest.mark.skipif(cuda_include_dir() is None, reason="no CUDA headers (cuda_fp16.h) found")


@pytest.mark.parametrize("variant", nvrtc_check.variants(), ids=str)
def test_source_compiles(variant: nvrtc_check.Variant) -> None:
    ptx = nvrtc_check.check_variant(variant)
    for name in kernel_names(variant.source):
        assert f".entry {name}(" in ptx
    assert f".target sm_{variant.arch.removeprefix('compute_')}" in ptx


@pytest.mark.parametrize("source", ["diagonal", "condensed"])
def test_compiles_without_default_device(source: str) -> None:
    """CuPy compiles without -default-device: every function must carry its own __device__."""
    opts = [o for o in nvrtc_check.nvrtc_options("compute_90", torch.bfloat16, torch.int16) if o != "-default-device"]
    if source == "diagonal":
        opts = [o for o in opts if not o.startswith("-DDST_INDEX=")]
    ptx = nvrtc_check.compile_to_ptx(source_text(source), f"{source}.cu", opts)
    assert all(f".entry {name}(" in ptx for name in kernel_names(source))


def test_variants_cover_every_dtype_and_arch() -> None:
    seen = {(v.source, v.arch, v.dtype) for v in nvrtc_check.variants()}
    assert len(seen) == 2 * 2 * 4
    assert {v.index_dtype for v in nvrtc_check.variants() if v.source == "condensed"} == {
        torch.int16, torch.int32, torch.int64
    }


def test_broken_source_fails_with_the_log() -> None:
    broken = '#include "common.cuh"\nextern "C" __global__ void k(scalar_t* y) { y[0] = undeclared_name; }\n'
    opts = nvrtc_check.nvrtc_options("compute_80", torch.float32)
    with pytest.raises(nvrtc_check.CompileError, match="undeclared_name"):
        nvrtc_check.compile_to_ptx(expand_includes(broken), "broken.cu", opts)


def test_missing_tile_constant_fails() -> None:
    opts = [o for o in nvrtc_check.nvrtc_options("compute_90", torch.float16) if not o.startswith("-DDIAG_SPAN=")]
    assert "DIAG_SPAN" in TILES
    with pytest.raises(nvrtc_check.CompileError, match="DIAG_SPAN"):
        nvrtc_check.compile_to_ptx(source_text("diagonal"), "diagonal.cu", opts)
