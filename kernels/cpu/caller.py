"""The bound products' call path as a torch C++ extension (``caller.cpp``), built once per source and torch.

``native()`` returns the extension module, building it on first use with
``torch.utils.cpp_extension.load`` (about 30 s, into the kernel cache next to
the compiled library, keyed by a hash of the source and torch's version), or
None when it cannot be built; then ``BoundProduct`` keeps its Python path,
which gives the same results, and a warning says why once. Set
``DSTBENCH_NATIVE_CALLER=0`` to use the Python path on purpose.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

from dstbench.kernels.cpu import build

SOURCE = Path(__file__).with_name("caller.cpp")
_lock = threading.Lock()
_state: dict[str, ModuleType | None] = {}


def native() -> ModuleType | None:
    """The extension module (``diag_mm``, ``condensed_mm``, ``lanes_mm``, ``diag_pack_mm``), or None where it
    cannot be built or is switched off."""
    if "module" in _state:
        return _state["module"]
    with _lock:
        if "module" not in _state:
            _state["module"] = _build()
    return _state["module"]


def _build() -> ModuleType | None:
    if os.environ.get("DSTBENCH_NATIVE_CALLER", "1") == "0":
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    folder = build.cache_dir() / f"caller-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    # cpp_extension logs "No CUDA runtime is found" on every CPU-only machine; that says nothing about this build.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        return cpp_extension.load(name=f"dstbench_caller_{key}", sources=[str(SOURCE)], build_directory=str(folder),
                                  extra_cflags=["-O2"], verbose=False)
    except Exception as exc:  # a missing compiler, ninja or torch headers: the Python path still works
        warnings.warn(f"the native call path of the CPU kernels could not be built ({str(exc).splitlines()[0]}); "
                      "calls go through Python, ~5 us slower per call", stacklevel=3)
        return None
