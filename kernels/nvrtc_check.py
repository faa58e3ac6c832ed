"""Compile every CUDA source to PTX with NVRTC, without a GPU.

Uses ``cuda.bindings.nvrtc`` (the ``cuda-bindings`` package) with
``-default-device`` and ``-I`` to the CUDA headers found by
``kernels.cuda.sources.cuda_include_dir``. Each source is compiled once per
architecture, scalar dtype and (for the condensed kernels) index dtype, with
exactly the ``-D`` options the runtime loader uses.

Run as ``python -m dstbench.kernels.nvrtc_check``; exits non-zero and prints
the NVRTC log on the first failure.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

import torch

from dstbench.errors import UserError
from dstbench.kernels.cuda.sources import INDEX_TYPES, SCALAR_TYPES, SOURCES, cuda_include_dir, defines, source_text

ARCHS = ("compute_80", "compute_90")


class CompileError(RuntimeError):
    """NVRTC rejected a source; the message carries the compile log."""


@dataclass(frozen=True)
class Variant:
    """One compilation of one source."""

    source: str
    arch: str
    dtype: torch.dtype
    index_dtype: torch.dtype | None

    def __str__(self) -> str:
        index = f"/{self.index_dtype}" if self.index_dtype is not None else ""
        return f"{self.source} {self.arch} {self.dtype}{index}"


def variants() -> list[Variant]:
    """Every (source, arch, dtype, index dtype) the runtime can compile."""
    out = []
    for source, arch, dtype in itertools.product(SOURCES, ARCHS, SCALAR_TYPES):
        index_dtypes = list(INDEX_TYPES) if source == "condensed" else [None]
        out += [Variant(source, arch, dtype, index) for index in index_dtypes]
    return out


def _check(result: tuple, what: str) -> tuple:
    from cuda.bindings import nvrtc

    if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"{what} failed: {result[0]}")
    return result[1:]


def compile_to_ptx(code: str, name: str, options: list[str]) -> str:
    """Compile CUDA C++ ``code`` to PTX with NVRTC.

    Args:
        code: the source text; name: its file name in diagnostics;
        options: NVRTC options, e.g. ``["--gpu-architecture=compute_80", "-default-device"]``.
    Returns:
        The PTX text.
    Raises:
        CompileError: with the NVRTC log when the source does not compile.
    """
    from cuda.bindings import nvrtc

    (prog,) = _check(nvrtc.nvrtcCreateProgram(code.encode(), name.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        encoded = [o.encode() for o in options]
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)
        (log_size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * log_size
        _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"{name}: {status.name}\n{log.decode(errors='replace').rstrip(chr(0)).strip()}")
        (ptx_size,) = _check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        ptx = b" " * ptx_size
        _check(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return ptx.decode().rstrip("\x00")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def nvrtc_options(arch: str, dtype: torch.dtype, index_dtype: torch.dtype | None = None) -> list[str]:
    """The options of one check compilation: arch, -default-device, -I headers, the runtime's -D set.

    Raises:
        UserError: when no folder with cuda_fp16.h and cuda_bf16.h is found.
    """
    include = cuda_include_dir()
    if include is None:
        raise UserError(
            "cuda_fp16.h / cuda_bf16.h not found: pip install nvidia-cuda-runtime (CUDA 13) or "
            "nvidia-cuda-runtime-cu12 (CUDA 12), or set CUDA_PATH to a CUDA toolkit"
        )
    return [f"--gpu-architecture={arch}", "-default-device", f"-I{include}", *defines(dtype, index_dtype)]


def check_variant(variant: Variant) -> str:
    """Compile one variant; returns its PTX (raises CompileError with the log)."""
    opts = nvrtc_options(variant.arch, variant.dtype, variant.index_dtype)
    return compile_to_ptx(source_text(variant.source), f"{variant.source}.cu", opts)


def main() -> int:
    """Compile all variants; print one line each. Returns the process exit code."""
    for variant in variants():
        try:
            ptx = check_variant(variant)
        except CompileError as exc:
            print(f"FAIL {variant}\n{exc}", file=sys.stderr)
            return 1
        print(f"ok   {variant}: {len(ptx)} bytes of PTX")
    return 0


if __name__ == "__main__":
    sys.exit(main())
