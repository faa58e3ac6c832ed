"""The CUDA sources, their compile-time constants and the CUDA header folders.

One place for everything that decides what the ``.cu`` files compile to, so
that the runtime loader, the NVRTC check and the host emulator used by the
tests all build the same code:

* ``TILES``: the tile sizes, passed to every compilation as ``-DNAME=value``
  and used by ``launches`` to size grids and blocks;
* ``SCALAR_TYPES`` / ``INDEX_TYPES``: the C types a torch dtype compiles to
  (``-DDST_SCALAR=...``, ``-DDST_INDEX=...``);
* ``source_text``: the source with the local ``#include "common.cuh"``
  expanded, so that CuPy's on-disk cache (keyed by the source text) never
  serves a stale header;
* ``cuda_include_dir``: where ``cuda_fp16.h`` and ``cuda_bf16.h`` live.
"""

from __future__ import annotations

import glob
import os
import re
import site
import sys
from functools import lru_cache
from pathlib import Path

import torch

from dstbench.errors import UserError

_KERNELS_DIR = Path(__file__).resolve().parent.parent
SOURCES = {
    "diagonal": _KERNELS_DIR / "diagonal" / "diagonal.cu",
    "condensed": _KERNELS_DIR / "condensed" / "condensed.cu",
}
_INCLUDE_DIR = Path(__file__).resolve().parent

# Tile sizes shared by the .cu sources (as -D macros) and the launch code.
TILES = {
    # diag_fwd_small: DIAG_SMALL_THREADS threads per block (columns per block chosen at launch),
    # DIAG_SMALL_BATCH batch rows per thread
    "DIAG_SMALL_THREADS": 256,
    "DIAG_SMALL_BATCH": 4,
    # diag_fwd_tiled: block (DIAG_TILE_ROWS, DIAG_TILE_GROUPS), DIAG_TILE_RB batch rows per thread,
    # x staged in windows covering DIAG_SPAN consecutive offsets
    "DIAG_TILE_ROWS": 64,
    "DIAG_TILE_GROUPS": 4,
    "DIAG_TILE_RB": 4,
    "DIAG_SPAN": 64,
    # diag_fwd_staged*: threads (output columns) per block
    "DIAG_STAGED_THREADS": 128,
    # diag_values_grad: block (DIAG_GRAD_COLS, DIAG_GRAD_SPLIT_B), DIAG_GRAD_DIAGS diagonals per block
    "DIAG_GRAD_COLS": 32,
    "DIAG_GRAD_SPLIT_B": 8,
    "DIAG_GRAD_DIAGS": 4,
    # condensed kernels: warps per block, and the batch split of condensed_values_grad
    "COND_WARPS": 8,
    "COND_GRAD_SPLIT_B": 8,
}

SCALAR_TYPES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "__half",
    torch.bfloat16: "__nv_bfloat16",
}
INDEX_TYPES = {torch.int16: "short", torch.int32: "int", torch.int64: "long long"}

_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"\s*$', re.MULTILINE)


def kernel_names(source: str) -> list[str]:
    """The ``extern "C" __global__`` kernels defined in one source."""
    return re.findall(r'extern "C" __global__ void (\w+)\(', source_text(source))


def source_text(source: str) -> str:
    """The text of ``SOURCES[source]`` with local ``#include "x.cuh"`` lines expanded.

    Raises:
        UserError: for an unknown source name.
    """
    if source not in SOURCES:
        raise UserError(f"unknown CUDA source {source!r}; expected one of {', '.join(SOURCES)}")
    return expand_includes(SOURCES[source].read_text())


def expand_includes(text: str) -> str:
    """Replace each ``#include "name"`` with the text of kernels/cuda/name (one level deep)."""
    return _LOCAL_INCLUDE.sub(lambda m: (_INCLUDE_DIR / m.group(1)).read_text(), text)


def defines(dtype: torch.dtype, index_dtype: torch.dtype | None = None) -> list[str]:
    """The ``-D`` options of one compilation: scalar type, index type (condensed only), tiles.

    Raises:
        UserError: for a dtype the kernels do not support.
    """
    if dtype not in SCALAR_TYPES:
        raise UserError(f"dtype {dtype} unsupported by the CUDA kernels; use one of {', '.join(map(str, SCALAR_TYPES))}")
    opts = [f"-DDST_SCALAR={SCALAR_TYPES[dtype]}"]
    if index_dtype is not None:
        if index_dtype not in INDEX_TYPES:
            raise UserError(f"index dtype {index_dtype} unsupported; use one of {', '.join(map(str, INDEX_TYPES))}")
        opts.append(f"-DDST_INDEX={INDEX_TYPES[index_dtype]}")
    opts += [f"-D{name}={value}" for name, value in TILES.items()]
    return opts


@lru_cache(maxsize=1)
def cuda_include_dir() -> str | None:
    """The folder holding ``cuda_fp16.h`` and ``cuda_bf16.h``, or None if none is found.

    Looks in this order: ``cuda.pathfinder`` (the NVIDIA wheels, conda,
    CUDA_PATH/CUDA_HOME), then ``site-packages/nvidia/*/include`` and
    ``site-packages/nvidia/cu*/include`` (the wheels torch depends on), then
    ``$CUDA_PATH/include`` and ``$CUDA_HOME/include``. One folder only, so
    that the two headers always come from the same CUDA release.
    """
    candidates: list[str] = []
    try:
        from cuda import pathfinder

        located = pathfinder.find_nvidia_header_directory("cudart")
        if located:
            candidates.append(located)
    except (ImportError, RuntimeError):
        pass
    for root in [*site.getsitepackages(), site.getusersitepackages(), *sys.path]:
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
    candidates += [os.path.join(os.environ[v], "include") for v in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(v)]
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, h)) for h in ("cuda_fp16.h", "cuda_bf16.h")):
            return os.path.realpath(folder)
    return None
