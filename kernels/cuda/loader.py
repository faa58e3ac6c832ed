"""Compile the CUDA sources with CuPy and launch them on torch's current stream.

* Compilation: ``cupy.RawModule`` over the text of ``sources.source_text``
  with the ``-D`` set of ``sources.defines`` and ``-I`` to the CUDA headers
  (``sources.cuda_include_dir``, when found; CuPy adds its own paths too).
  CuPy picks ``-arch`` from the current device. Modules are compiled once per
  (source, dtype, index dtype, device); CuPy also keeps the binaries on disk
  (~/.cupy/kernel_cache), so a new process skips NVRTC.
* Per call, everything is a dictionary hit: the kernel function is cached per
  (source, kernel, dtype, index dtype, device), the ``cupy.cuda.ExternalStream``
  wrapping torch's current stream per raw stream handle.
* Streams: every launch runs on torch's current stream of the tensors' device
  (read as a raw handle, ``torch._C._cuda_getCurrentRawStream``, as Triton
  does), so it orders with torch's work and is recorded by CUDA-graph capture.
* Memory: tensors pass as raw device pointers (``data_ptr()``, zero-copy; no
  DLPack capsule per call), None as a null pointer. float16/bfloat16 need no
  CuPy dtype: the kernel reads the bits as ``__half``/``__nv_bfloat16``.
  Outputs are allocated by torch.
* Shared memory: a launch asking for more than 48 KiB of dynamic shared
  memory first raises the kernel's limit
  (``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES``, once per kernel).
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

import torch

from dstbench.kernels.cuda.launches import SHARED_BYTES, Launch
from dstbench.kernels.cuda.sources import cuda_include_dir, defines, source_text

_functions: dict[tuple, object] = {}
_streams: dict[tuple[int, int], object] = {}
_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CUfunction_attribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_allowed: dict[int, int] = {}  # id of a kernel function -> dynamic shared bytes it may take (above SHARED_BYTES)


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


def _function(launch: Launch, index: int):
    """The compiled kernel of ``launch`` on device ``index`` (compiled on first use; call inside that device)."""
    key = (launch.source, launch.kernel, launch.dtype, launch.index_dtype, index)
    fn = _functions.get(key)
    if fn is None:
        cupy = _import_cupy()[0]
        options = defines(launch.dtype, launch.index_dtype)
        include = cuda_include_dir()
        if include is not None:
            options.append(f"-I{include}")
        module = cupy.RawModule(code=source_text(launch.source), options=tuple(options))
        fn = _functions[key] = module.get_function(launch.kernel)
    return fn


def _stream(index: int):
    """torch's current stream on device ``index``, as a CuPy stream object."""
    ptr = torch._C._cuda_getCurrentRawStream(index)
    stream = _streams.get((index, ptr))
    if stream is None:
        stream = _streams[(index, ptr)] = _import_cupy()[0].cuda.ExternalStream(ptr, index)
    return stream


def _allow_shared(fn, nbytes: int) -> None:
    """Let ``fn`` take ``nbytes`` of dynamic shared memory (beyond the 48 KiB every block gets), once per size."""
    if nbytes <= _allowed.get(id(fn), SHARED_BYTES):
        return
    _import_cupy()[0].cuda.driver.funcSetAttribute(fn.ptr, _MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes)
    _allowed[id(fn)] = nbytes


def _arg(a: object) -> object:
    """A launch argument as the kernel takes it: a tensor's device pointer, a null pointer for None, else as is."""
    return a.data_ptr() if isinstance(a, torch.Tensor) else (0 if a is None else a)


def _launch(launch: Launch, index: int) -> None:
    args = tuple(map(_arg, launch.args))
    fn = _function(launch, index)
    _allow_shared(fn, launch.shared_bytes)
    fn(launch.grid, launch.block, args, shared_mem=launch.shared_bytes, stream=_stream(index))


class Prepared:
    """``launch`` ready to replay on new x and y tensors of its shapes: its kernel function, shared-memory limit
    and every other argument resolved once; a call fills in x's and y's pointers and launches on torch's current
    stream (as ``run``).

    Args:
        launch: a launch made for ``x`` and ``y``; its other tensor arguments must outlive this object (only
            their pointers are kept, not the tensors, nor x and y).
        x, y: the tensors whose positions in ``launch.args`` later calls fill.
    """

    __slots__ = ("_fn", "_index", "_grid", "_block", "_shared", "_args", "_x", "_y")

    def __init__(self, launch: Launch, x: torch.Tensor, y: torch.Tensor) -> None:
        self._index = launch.args[0].device.index
        self._grid, self._block, self._shared = launch.grid, launch.block, launch.shared_bytes
        self._x = tuple(i for i, a in enumerate(launch.args) if a is x)
        self._y = tuple(i for i, a in enumerate(launch.args) if a is y)
        self._args = list(map(_arg, launch.args))
        cupy = _import_cupy()[0]
        with cupy.cuda.Device(self._index):
            self._fn = _function(launch, self._index)
            _allow_shared(self._fn, launch.shared_bytes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        args = self._args
        for i in self._x:
            args[i] = x.data_ptr()
        for i in self._y:
            args[i] = y.data_ptr()
        index, cupy = self._index, _import_cupy()[0]
        if cupy.cuda.runtime.getDevice() == index:
            self._fn(self._grid, self._block, tuple(args), shared_mem=self._shared, stream=_stream(index))
        else:
            with cupy.cuda.Device(index):
                self._fn(self._grid, self._block, tuple(args), shared_mem=self._shared, stream=_stream(index))


def run(launch: Launch) -> None:
    """Launch on the GPU that holds the launch's tensors, on torch's current stream there."""
    cupy = _import_cupy()[0]
    index = launch.args[0].device.index
    if cupy.cuda.runtime.getDevice() == index:
        _launch(launch, index)
    else:
        with cupy.cuda.Device(index):
            _launch(launch, index)
