"""Compile the CUDA sources with CuPy and launch them on torch's current stream.

* Compilation: ``cupy.RawModule`` over the text of ``sources.source_text``
  with the ``-D`` set of ``sources.defines`` and ``-I`` to the CUDA headers
  (``sources.cuda_include_dir``, when found; CuPy adds its own paths too).
  CuPy picks ``-arch`` from the current device. Modules are cached per
  (source, dtype, index dtype, device, compute capability); CuPy also keeps
  the binaries on disk (~/.cupy/kernel_cache), so a new process skips NVRTC.
* Streams: every launch runs on ``torch.cuda.current_stream(device)``,
  wrapped as a ``cupy.cuda.ExternalStream``, so it orders with torch's work.
* Memory: tensors pass zero-copy through DLPack (``cupy.from_dlpack``);
  float16/bfloat16 tensors are viewed as int16 first (the kernel reads the
  bits as ``__half``/``__nv_bfloat16``), which also covers CuPy releases
  without a bfloat16 dtype. Outputs are allocated by torch.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

import torch

from dstbench.kernels.cuda.launches import Launch
from dstbench.kernels.cuda.sources import cuda_include_dir, defines, source_text

_modules: dict[tuple, object] = {}
_streams: dict[tuple[int, int], object] = {}
_HALF_TYPES = (torch.float16, torch.bfloat16)


@lru_cache(maxsize=1)
def _import_cupy() -> tuple[ModuleType | None, str | None]:
    try:
        import cupy
    except ImportError:
        major = (torch.version.cuda or "13").split(".")[0]
        extra = "cuda12" if major == "12" else "cuda13"
        return None, f"CuPy is not installed: pip install dstbench[{extra}]"
    except Exception as exc:  # a broken CUDA install raises more than ImportError
        return None, f"CuPy failed to import ({type(exc).__name__}: {exc})"
    return cupy, None


def cupy_missing_reason() -> str | None:
    """Why CuPy cannot be used, or None when it imports."""
    return _import_cupy()[1]


def _module(launch: Launch, device: torch.device):
    cupy = _import_cupy()[0]
    capability = torch.cuda.get_device_capability(device)
    key = (launch.source, launch.dtype, launch.index_dtype, device.index, capability)
    if key not in _modules:
        options = defines(launch.dtype, launch.index_dtype)
        include = cuda_include_dir()
        if include is not None:
            options.append(f"-I{include}")
        _modules[key] = cupy.RawModule(code=source_text(launch.source), options=tuple(options))
    return _modules[key]


def _stream(device: torch.device):
    cupy = _import_cupy()[0]
    ptr = torch.cuda.current_stream(device).cuda_stream
    key = (device.index, ptr)
    if key not in _streams:
        _streams[key] = cupy.cuda.ExternalStream(ptr)
    return _streams[key]


def _as_cupy(tensor: torch.Tensor):
    cupy = _import_cupy()[0]
    tensor = tensor.detach()  # __dlpack__ refuses tensors that require grad
    if tensor.dtype in _HALF_TYPES:
        tensor = tensor.view(torch.int16)
    return cupy.from_dlpack(tensor)


def run(launch: Launch) -> None:
    """Launch on the GPU that holds the launch's tensors, on torch's current stream there."""
    cupy = _import_cupy()[0]
    device = next(a.device for a in launch.args if isinstance(a, torch.Tensor))
    with cupy.cuda.Device(device.index):
        kernel = _module(launch, device).get_function(launch.kernel)
        with _stream(device):
            args = tuple(_as_cupy(a) if isinstance(a, torch.Tensor) else a for a in launch.args)
            kernel(launch.grid, launch.block, args, shared_mem=launch.shared_bytes)
