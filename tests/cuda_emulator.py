"""Run the real ``.cu`` kernels on the CPU, for tests on machines without a GPU.

Each source is compiled by g++ as C++20 with ``cuda_emulator_shim.h``
force-included and exactly the ``-D`` options the GPU build uses
(``sources.defines``). ``runner`` executes a ``launches.Launch`` on CPU
tensors, so the tests drive the same launch code (kernel choice, grid, block,
arguments) that runs on a GPU. What it cannot show: timing, memory
coalescing, races that need real concurrency between warps, NVRTC-only
compile errors (``test_cuda_compile`` covers those).
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from dstbench.kernels.cuda.launches import Launch
from dstbench.kernels.cuda.sources import defines, kernel_names, source_text

_SHIM = Path(__file__).with_name("cuda_emulator_shim.h")
_BUILD_DIR = Path(tempfile.mkdtemp(prefix="dstbench-cuda-emu-"))


def compiler() -> str | None:
    """The host C++ compiler, or None (tests then skip)."""
    return shutil.which("g++")


@lru_cache(maxsize=None)
def build(source: str, dtype: torch.dtype, index_dtype: torch.dtype | None) -> ctypes.CDLL:
    """Compile one source for one dtype (and index dtype) into a shared library."""
    text = source_text(source) + "".join(f"\nEMU_EXPORT({name})" for name in kernel_names(source)) + "\n"
    opts = defines(dtype, index_dtype)
    digest = hashlib.sha1((text + " ".join(opts)).encode()).hexdigest()[:16]
    cpp, lib = _BUILD_DIR / f"{source}-{digest}.cpp", _BUILD_DIR / f"{source}-{digest}.so"
    cpp.write_text(text)
    cmd = [compiler(), "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-include", str(_SHIM), *opts,
           str(cpp), "-o", str(lib)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"host build of {source} failed:\n{done.stderr}")
    return ctypes.CDLL(str(lib))


def _as_ctype(arg: object) -> ctypes._SimpleCData:
    if arg is None:
        return ctypes.c_void_p(None)
    if isinstance(arg, torch.Tensor):
        assert arg.device.type == "cpu" and arg.is_contiguous()
        return ctypes.c_void_p(arg.data_ptr())
    if isinstance(arg, np.int32):
        return ctypes.c_int32(int(arg))
    if isinstance(arg, np.int64):
        return ctypes.c_int64(int(arg))
    raise TypeError(f"unsupported kernel argument {type(arg)}")


def runner(launch: Launch) -> None:
    """Execute ``launch`` on CPU tensors with the host build of its source."""
    lib = build(launch.source, launch.dtype, launch.index_dtype)
    values = [_as_ctype(a) for a in launch.args]
    argv = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    grid = (ctypes.c_uint * 3)(*launch.grid)
    block = (ctypes.c_uint * 3)(*launch.block)
    getattr(lib, f"emu_{launch.kernel}")(grid, block, ctypes.c_size_t(launch.shared_bytes), argv)
