"""Compiled, multi-threaded, vectorized CPU kernels for the diagonal and condensed formats, and self-attention.

The backend contract of ``kernels.ops``: the five functions of
``kernels.reference`` with the same signatures (``diag_mm`` with its
``transpose`` flag), plus ``unavailable_reason``. Inputs are 2-D CPU tensors
of float32, float64, bfloat16 or float16 (bfloat16 and float16 accumulate
in float32, float64 in float64; float16 where the compiler has _Float16);
condensed indices are int16 or int32 (int64 is narrowed to int32).

``self_attention`` (float32 only) is the inference attention of the
end-to-end ViT (``attention.cpp``; ``attention_unavailable`` says where it
cannot run), and ``gelu`` and ``add_layer_norm`` (float32 only) its MLP
activation and its residual adds with the LayerNorms that read them
(``rowwise.cpp``; ``rowwise_unavailable``).

``pack_lanes`` builds the lane-packed copy of a float32 condensed weight
(``lanes.cpp``, AVX-512 only; ``lanes_unavailable`` says where it cannot
run), and ``lanes_mm`` runs batches of at most ``LANES_BATCH`` rows through
it: ``bind_condensed_mm`` binds it where it can, so an inference layer's
batch-1 product runs gather-free. Likewise ``bind_diag_mm`` binds a
tile-packed copy of a float32 diagonal weight (``diag_pack.cpp``, AVX-512
only) for batches of at most ``DIAG_PACK_BATCH`` rows: each thread streams
its outputs' values once, with no reduction between threads.

The C++ sources (``diagonal.cpp``, ``condensed.cpp``, ``attention.cpp``, ``rowwise.cpp``,
``lanes.cpp``, ``diag_pack.cpp``, ``common.cpp``; no torch headers) are compiled with OpenMP and
``-march=native`` on first use by ``build.py`` into a cache, then loaded with ctypes. Each call passes raw
data pointers and sizes, and ``torch.get_num_threads()`` as the thread
count; ctypes drops the GIL for the call. ``bind_diag_mm`` and
``bind_condensed_mm`` check an inference layer's weights once and return a
``BoundProduct`` whose calls check only x. The kernels write every output
element, so outputs come from ``torch.empty``; their scratch buffers are
kept per calling thread for reuse (a fresh multi-megabyte buffer costs a
page fault per 4 KiB page). Index, offset and row ranges are checked in C++
and reported as UserError. The algorithms are described at the top of each
``.cpp`` file.
"""

from __future__ import annotations

import ctypes
import threading
from typing import NamedTuple

import torch
from torch import Tensor

from dstbench.errors import UserError
from dstbench.kernels.arguments import check_bias
from dstbench.kernels.cpu import build, caller

__all__ = [
    "DIAG_PACK_BATCH",
    "LANES_BATCH",
    "BoundCopy",
    "BoundProduct",
    "LanePack",
    "add_layer_norm",
    "assembled_gathers",
    "attention_unavailable",
    "bind_condensed_mm",
    "bind_diag_mm",
    "condensed_input_grad",
    "condensed_mm",
    "condensed_values_grad",
    "diag_mm",
    "diag_pack_unavailable",
    "diag_values_grad",
    "gelu",
    "lanes_mm",
    "lanes_unavailable",
    "pack_lanes",
    "rowwise_unavailable",
    "self_attention",
    "unavailable_reason",
]

_SCALARS = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}
#: built only where the compiler has _Float16 (GCC 12+, Clang 15+)
_OPTIONAL = frozenset({torch.float16})
_DTYPE_NAMES = "float32, float64, bfloat16 or float16"
_INDICES = {torch.int16: "i16", torch.int32: "i32"}
#: head widths the attention kernel takes: multiples of the widest SIMD vector it may be built for (16 floats)
ATTENTION_HEAD_MULTIPLE = 16
_STATUS = {  # return codes of the C++ entry points (enum Status in common.cpp)
    1: "diagonal offsets must lie in [0, max(out, in)); rebuild the DiagonalWeight",
    2: "condensed indices must lie in [0, in_features); rebuild the CondensedWeight",
    3: "condensed active_rows must lie in [0, out_features); rebuild the CondensedWeight",
    5: f"the attention kernel takes head widths that are multiples of {ATTENTION_HEAD_MULTIPLE}; use torch's "
       "scaled_dot_product_attention",
    6: "condensed active_rows must be distinct (a row appears twice); rebuild the CondensedWeight",
}
_NO_MEMORY = 4
#: the largest batch the lane-packed copy runs (LANES_BATCH in lanes.cpp; a test holds the two equal)
LANES_BATCH = 2
#: the most inputs it takes (16-bit window starts: LANES_MAX_IN in lanes.cpp, likewise)
LANES_MAX_IN = 65535
#: the largest batch the tile-packed diagonal copy runs (DIAG_PACK_BATCH in diag_pack.cpp; a test holds them equal)
DIAG_PACK_BATCH = 2
#: the longest long side, max(in, out), it takes (16-bit input starts: DIAG_PACK_MAX_LONG there, likewise)
DIAG_PACK_MAX_LONG = 32768

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
#: the buffer callback of the lane-packed copy: bytes -> pointer (null when it cannot be had)
_ALLOC = ctypes.CFUNCTYPE(_P, _I64)
_SIGNATURES = {
    "dst_diag_mm": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT, _INT],
    "dst_diag_values_grad": [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT],
    "dst_condensed_mm": [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT],
    "dst_condensed_values_grad": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT],
    "dst_condensed_input_grad": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT],
}


class _Library:
    """The compiled library, loaded on first use; ``error`` holds why it could not be."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self.functions: dict[tuple, ctypes._CFuncPtr] = {}
        self.gathers: ctypes._CFuncPtr | None = None
        self.attention: ctypes._CFuncPtr | None = None
        self.rowwise: dict[str, ctypes._CFuncPtr] = {}
        self.round_trip: ctypes._CFuncPtr | None = None
        self.lanes: dict[tuple, ctypes._CFuncPtr] = {}
        self.diag_pack: dict[str, ctypes._CFuncPtr] = {}
        self.error: str | None = None

    def load(self) -> str | None:
        """Build (or find in the cache) and load the library once; returns the failure reason or None."""
        if self._loaded:
            return self.error
        with self._lock:
            if not self._loaded:
                try:
                    path, _ = build.ensure_built()
                    lib = ctypes.CDLL(str(path))
                    self.functions = _bind(lib)
                    self.gathers = lib.dst_assembled_gathers
                    self.gathers.argtypes, self.gathers.restype = [_INT], _INT
                    self.attention = lib.dst_attention_f32
                    self.attention.argtypes, self.attention.restype = [_P, _P, _I64, _I64, _I64, _I64, _INT], _INT
                    self.rowwise = _entry_points(lib, {
                        "gelu": ("dst_gelu_f32", [_P, _P, _I64, _INT], None),
                        "add_layer_norm": ("dst_add_layer_norm_f32",
                                           [_P, _P, _P, _P, _P, _P, _I64, _I64, ctypes.c_float, _INT], None)})
                    self.lanes = _bind_lanes(lib)
                    self.diag_pack = _bind_diag_pack(lib)
                    self.round_trip = lib.dst_core_round_trip_ns
                    self.round_trip.argtypes, self.round_trip.restype = [_I64], ctypes.c_double
                except build.BuildError as exc:
                    self.error = str(exc)
                except (OSError, AttributeError) as exc:
                    self.error = f"the compiled CPU kernels failed to load: {exc}"
                self._loaded = True
        return self.error


def _bind(lib: ctypes.CDLL) -> dict[tuple, ctypes._CFuncPtr]:
    """The entry points keyed by (name, dtype) or, for the condensed ones, (name, dtype, index dtype)."""
    functions = {}
    for name, argtypes in _SIGNATURES.items():
        for dtype, suffix in _SCALARS.items():
            keys = {(name, dtype): f"{name}_{suffix}"}
            if name.startswith("dst_condensed"):
                keys = {(name, dtype, i): f"{name}_{suffix}_{isuffix}" for i, isuffix in _INDICES.items()}
            for key, symbol in keys.items():
                fn = getattr(lib, symbol, None) if dtype in _OPTIONAL else getattr(lib, symbol)
                if fn is None:
                    continue
                fn.argtypes = argtypes
                fn.restype = ctypes.c_int
                functions[key] = fn
    return functions


def _bind_lanes(lib: ctypes.CDLL) -> dict[tuple, ctypes._CFuncPtr]:
    """The lane-packed copy's entry points: "available", "mm", "limits", and ("pack", index dtype)."""
    signatures = {"available": ("dst_lanes_available", [], _INT),
                  "mm": ("dst_lanes_mm_f32", [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT], _INT)}
    for dtype, isuffix in _INDICES.items():
        signatures["pack", dtype] = (f"dst_lanes_pack_f32_{isuffix}",
                                     [_P, _P, _P, _I64, _I64, _I64, _I64, _ALLOC, _P], _INT)
    signatures["limits"] = ("dst_lanes_limits", [_P, _P], None)
    return _entry_points(lib, signatures)


def _bind_diag_pack(lib: ctypes.CDLL) -> dict[str, ctypes._CFuncPtr]:
    """The tile-packed diagonal copy's entry points: "limits", "pack" and "mm" (whether the build has AVX-512, which
    it needs: ``lanes["available"]``, the same flags)."""
    signatures = {"limits": ("dst_diag_pack_limits", [_P, _P], None),
                  "pack": ("dst_diag_pack_f32", [_P, _P, _I64, _I64, _I64, _ALLOC, _P], _INT),
                  "mm": ("dst_diag_pack_mm_f32", [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT], _INT)}
    return _entry_points(lib, signatures)


def _entry_points(lib: ctypes.CDLL, signatures: dict) -> dict:
    """key -> the library's function, for signatures key -> (symbol, argument types, result type)."""
    functions = {}
    for key, (symbol, argtypes, restype) in signatures.items():
        fn = getattr(lib, symbol)
        fn.argtypes, fn.restype = argtypes, restype
        functions[key] = fn
    return functions


_library = _Library()


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why these kernels cannot run on ``device`` for ``dtype``, or None if they can (builds on first call)."""
    device = torch.device(device)
    if device.type != "cpu":
        return f"not a CPU tensor (device {device})"
    if dtype not in _SCALARS:
        return f"dtype {dtype} unsupported ({_DTYPE_NAMES})"
    reason = _library.load()
    if reason is None and ("dst_diag_mm", dtype) not in _library.functions:
        return f"dtype {dtype} needs a C++ compiler with _Float16 (GCC 12+ or Clang 15+); this one has none"
    return reason


def assembled_gathers(on: bool | None = None) -> bool:
    """Whether the float32 and bfloat16 condensed products at batch <= 2 build their gathered x from scalar loads.

    The alternative is AVX-512 hardware gathers. The default, chosen when the library loads, is True on AMD
    CPUs, whose gathers load about one element per cycle, else False. ``on`` switches it for this process;
    the setting before the call is returned.

    Raises:
        UserError: the compiled kernels are unavailable (the message says why).
    """
    reason = _library.load()
    if reason:
        raise UserError(f"the CPU kernels cannot run: {reason}")
    return bool(_library.gathers(-1 if on is None else int(on)))


def core_round_trip_ns(trips: int) -> float | None:
    """Mean nanoseconds per round trip of a cache line between two threads of the kernels' OpenMP pool, over
    ``trips`` trips (``core_probe.cpp``); None when the compiled kernels are unavailable or the pool gives fewer
    than two threads.
    """
    if _library.load():
        return None
    ns = _library.round_trip(trips)
    return ns if ns > 0 else None


def attention_unavailable(qkv: Tensor, num_heads: int) -> str | None:
    """Why ``self_attention(qkv, num_heads)`` cannot run, or None if it can (builds the kernels on first call)."""
    if not qkv.is_cpu or qkv.dtype != torch.float32:
        return f"it takes float32 CPU tensors, got {qkv.dtype} on {qkv.device}"
    if qkv.dim() != 3 or num_heads < 1 or qkv.shape[2] % (3 * num_heads):
        return f"qkv must be (B, T, 3 D) with D divisible by num_heads {num_heads}, got {tuple(qkv.shape)}"
    if (qkv.shape[2] // (3 * num_heads)) % ATTENTION_HEAD_MULTIPLE:
        return f"its head width must be a multiple of {ATTENTION_HEAD_MULTIPLE}, got {qkv.shape[2] // (3 * num_heads)}"
    return _library.load()


def self_attention(qkv: Tensor, num_heads: int) -> Tensor:
    """softmax(q k^T / sqrt(dh)) v for every head, from a packed qkv projection; float32, for inference.

    Args:
        qkv: (B, T, 3 D), each token's q, k and v side by side, each as ``num_heads`` heads of dh = D / heads
            (the output of ``nn.Linear(D, 3 D)``); dh a multiple of ``ATTENTION_HEAD_MULTIPLE``.
    Returns:
        (B, T, D), the heads of each token side by side (what the output projection reads).

    Raises:
        UserError: where ``attention_unavailable`` gives a reason.
    """
    reason = attention_unavailable(qkv, num_heads)
    if reason:
        raise UserError(f"the CPU attention kernel cannot run: {reason}")
    qkv = qkv.contiguous()
    batch, tokens, width = qkv.shape
    if batch == 0 or tokens == 0:
        return qkv.new_empty(batch, tokens, width // 3)
    y = torch.empty(batch, tokens, width // 3)
    status = _library.attention(qkv.data_ptr(), y.data_ptr(), batch, tokens, num_heads, width // (3 * num_heads),
                                torch.get_num_threads())
    if status:
        _raise(status)
    return y


def rowwise_unavailable(*tensors: Tensor) -> str | None:
    """Why ``gelu`` or ``add_layer_norm`` cannot take ``tensors``, or None if they can (builds on first call)."""
    for t in tensors:
        if not t.is_cpu or t.dtype != torch.float32:
            return f"it takes float32 CPU tensors, got {t.dtype} on {t.device}"
    return _library.load()


def _check_rowwise(*tensors: Tensor) -> None:
    reason = rowwise_unavailable(*tensors)
    if reason:
        raise UserError(f"the CPU row-wise kernels cannot run: {reason}")


def gelu(x: Tensor) -> Tensor:
    """The exact GELU, x/2 (1 + erf(x / sqrt 2)), of a float32 tensor of any shape (within 1e-6 of torch's).

    Raises:
        UserError: where ``rowwise_unavailable`` gives a reason.
    """
    _check_rowwise(x)
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel():
        _library.rowwise["gelu"](x.data_ptr(), y.data_ptr(), x.numel(), torch.get_num_threads())
    return y


def add_layer_norm(a: Tensor, b: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """s = a + b and LayerNorm(s) over the last dimension, in one pass; float32.

    Args:
        a, b: (..., D) of one shape; weight, bias: (D,), the LayerNorm's affine parameters; eps: its epsilon.
    Returns:
        (s, y), both shaped like a.

    Raises:
        UserError: where ``rowwise_unavailable`` gives a reason, or the shapes do not match.
    """
    _check_rowwise(a, b, weight, bias)
    width = a.shape[-1] if a.dim() else 0
    if a.shape != b.shape or a.dim() == 0 or weight.shape != (width,) or bias.shape != (width,):
        raise UserError(f"add_layer_norm takes a and b of one shape (..., D) and weight and bias of (D,), got "
                        f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(weight.shape)} and {tuple(bias.shape)}")
    a, b, weight, bias = (t.contiguous() for t in (a, b, weight, bias))
    s, y = torch.empty_like(a), torch.empty_like(a)
    if a.numel():
        _library.rowwise["add_layer_norm"](a.data_ptr(), b.data_ptr(), weight.data_ptr(), bias.data_ptr(),
                                           s.data_ptr(), y.data_ptr(), a.numel() // width, width, eps,
                                           torch.get_num_threads())
    return s, y


class LanePack(NamedTuple):
    """A lane-packed copy of a float32 condensed weight (layout at the top of ``lanes.cpp``).

    ``blob`` is the copy, (bytes,) uint8: values (steps, 48) float32, each step's window start and lane offsets,
    each group's first step and its lanes' output columns, and the output columns of no active row; ``n`` active
    rows, ``steps`` steps in all.
    """

    blob: Tensor
    n: int
    steps: int


def lanes_unavailable(values: Tensor, in_features: int) -> str | None:
    """Why ``pack_lanes`` cannot copy these weights, or None if it can (builds the kernels on first call)."""
    if values.dtype == torch.float32 and values.is_cpu and in_features > LANES_MAX_IN:
        return f"it takes at most {LANES_MAX_IN} inputs, got {in_features}"
    return _copies_unavailable(values)


def diag_pack_unavailable(values: Tensor, in_features: int, out_features: int) -> str | None:
    """Why ``bind_diag_mm`` cannot make the tile-packed copy of these diagonal values, or None if it can (builds the
    kernels on first call)."""
    if values.dtype == torch.float32 and values.is_cpu and max(in_features, out_features) > DIAG_PACK_MAX_LONG:
        return (f"it takes at most {DIAG_PACK_MAX_LONG} features on the long side, got "
                f"{in_features} -> {out_features}")
    return _copies_unavailable(values)


def _copies_unavailable(values: Tensor) -> str | None:
    """Why neither packed copy can hold these values, or None: both take float32 CPU weights and need AVX-512."""
    if values.dtype != torch.float32 or not values.is_cpu:
        return f"it takes float32 CPU weights, got {values.dtype} on {values.device}"
    reason = _library.load()
    if reason is None and not _library.lanes["available"]():  # both copies are built with the same flags
        return "the kernels were compiled without AVX-512"
    return reason


def pack_lanes(values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int, out_features: int) -> LanePack:
    """The lane-packed copy of a condensed weight: values (n_active, k) float32, indices (n_active, k), active_rows.

    Raises:
        UserError: where ``lanes_unavailable`` gives a reason, or indices or rows out of range.
    """
    reason = lanes_unavailable(values, in_features)
    if reason:
        raise UserError(f"the lane-packed condensed product cannot run: {reason}")
    indices, rows = _condensed_ids(indices, active_rows, values.shape)
    return _pack_lanes(values.contiguous(), indices, rows, in_features, out_features)


def _pack_lanes(values: Tensor, indices: Tensor, rows: Tensor, in_features: int, out_features: int) -> LanePack:
    """``pack_lanes`` of contiguous float32 values and the ids ``_condensed_ids`` returned, where
    ``lanes_unavailable`` gave no reason (the C++ still range-checks the rows and indices)."""
    n, k = values.shape
    blob, steps = _copy(_library.lanes["pack", indices.dtype], values.data_ptr(), indices.data_ptr(), rows.data_ptr(),
                        n, k, in_features, out_features)
    return LanePack(blob, n, steps)


def _copy(pack: ctypes._CFuncPtr, *args) -> tuple[Tensor, int]:
    """The buffer that ``pack(*args, alloc, count)`` writes a packed copy into, and the count it sets: the C++ asks
    ``alloc`` for the buffer (a uint8 tensor) once its size is known, and gets null where it cannot be had."""
    blobs: list[Tensor] = []

    def alloc(nbytes: int) -> int | None:
        try:
            blobs.append(torch.empty(nbytes, dtype=torch.uint8))
        except RuntimeError:
            return None
        return blobs[-1].data_ptr()

    count = ctypes.c_int64()
    status = pack(*args, _ALLOC(alloc), ctypes.byref(count))
    if status:
        _raise(status)
    return blobs[0], count.value


def lanes_mm(x: Tensor, pack: LanePack, in_features: int, out_features: int, bias: Tensor | None = None) -> Tensor:
    """``condensed_mm`` of the weight ``pack`` copies: x (B, in) float32 -> (B, out), B <= ``LANES_BATCH``.

    Columns of ablated rows hold the bias (0 without one).

    Raises:
        UserError: x of another dtype, device or shape, or a batch above ``LANES_BATCH``.
    """
    if x.dtype != torch.float32 or not x.is_cpu or x.dim() != 2 or x.shape[1] != in_features:
        raise UserError(f"the lane-packed product takes float32 CPU x of shape (B, {in_features}), "
                        f"got {x.dtype} {tuple(x.shape)} on {x.device}")
    if x.shape[0] > LANES_BATCH:
        raise UserError(f"the lane-packed product takes batches of at most {LANES_BATCH} rows, got {x.shape[0]}; "
                        "use condensed_mm")
    bias = check_bias(bias, x, out_features)
    if pack.n == 0 or x.shape[0] == 0:
        y = x.new_zeros(x.shape[0], out_features)
        return y if bias is None else y.add_(bias)
    x = x.contiguous()
    y = torch.empty(x.shape[0], out_features)
    _run(_library.lanes["mm"], x.data_ptr(), pack.blob.data_ptr(), _ptr(bias), y.data_ptr(), x.shape[0], in_features,
         out_features, pack.n, pack.steps)
    return y


def _kernel(key: tuple, a: Tensor, b: Tensor) -> ctypes._CFuncPtr:
    """The entry point for ``key`` + (dtype, ...) after checking that a and b are 2-D CPU tensors of one float dtype."""
    dtype = a.dtype
    if b.dtype != dtype or dtype not in _SCALARS or not a.is_cpu or not b.is_cpu:
        for t in (a, b):
            if not t.is_cpu or t.dtype not in _SCALARS:
                raise UserError(f"the CPU kernels take CPU tensors of {_DTYPE_NAMES}, got {t.dtype} on {t.device}")
        raise UserError(f"mixed dtypes: {b.dtype} next to {dtype}; convert the layer or the input")
    if a.dim() != 2 or b.dim() != 2:
        raise UserError(f"the CPU kernels take 2-D tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    fn = None if _library.load() else _library.functions.get((key[0], dtype, *key[1:]))
    if fn is None:  # the build failed, or this dtype was not built: unavailable_reason says which
        raise UserError(f"the CPU kernels cannot run: {unavailable_reason(a.device, dtype)}")
    return fn


def _run(fn: ctypes._CFuncPtr, *args) -> None:
    status = fn(*args, torch.get_num_threads())
    if status:
        _raise(status)


def _raise(status: int) -> None:
    """The error of a nonzero return code of an entry point."""
    if status == _NO_MEMORY:
        raise MemoryError("the CPU kernels ran out of memory for their scratch buffers")
    raise UserError(_STATUS[status])


def _ptr(t: Tensor | None) -> int | None:
    """The data pointer of ``t``, or None (a null pointer) for no tensor."""
    return None if t is None else t.data_ptr()


def _ids(t: Tensor, n: int, what: str) -> Tensor:
    """``t`` as a contiguous int64 CPU tensor of shape (n,)."""
    if t.dtype is not torch.int64:
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise UserError(f"{what} must be an integer tensor, got {t.dtype}")
        t = t.to(torch.int64)
    if t.shape != (n,):
        raise UserError(f"{what} must have shape ({n},), got {tuple(t.shape)}")
    if not t.is_cpu:
        raise UserError(f"{what} is on {t.device}; the CPU kernels need it on the CPU")
    return t if t.is_contiguous() else t.contiguous()


def _check_diag(offsets: Tensor, values: Tensor, w_out: int, w_in: int) -> Tensor:
    if w_out < 1 or w_in < 1:
        raise UserError(f"a diagonal weight needs out, in >= 1, got ({w_out}, {w_in})")
    k = offsets.shape[0] if offsets.dim() == 1 else -1
    if values.shape != (k, min(w_out, w_in)):
        raise UserError(
            f"diagonal values must have shape (K, D) = ({offsets.numel()}, {min(w_out, w_in)}) for a "
            f"({w_out}, {w_in}) weight, got {tuple(values.shape)} (offsets {tuple(offsets.shape)})"
        )
    return _ids(offsets, k, "diagonal offsets")


def diag_mm(x: Tensor, offsets: Tensor, values: Tensor, out_features: int, transpose: bool = False,
            bias: Tensor | None = None) -> Tensor:
    """y = x @ W.T (+ bias) for the diagonal weight (offsets (K,), values (K, D)); x (B, in) -> (B, out_features).

    With ``transpose=True``, W has shape (x.shape[1], out_features) and y = x @ W (the input gradient).
    The bias (out_features,) is added inside the kernel.
    """
    fn = _kernel(("dst_diag_mm",), x, values)
    batch, n_src = x.shape
    w_out, w_in = (n_src, out_features) if transpose else (out_features, n_src)
    offsets = _check_diag(offsets, values, w_out, w_in)
    bias = check_bias(bias, x, out_features)
    if offsets.shape[0] == 0 or batch == 0:
        y = x.new_zeros(batch, out_features)
        return y if bias is None else y.add_(bias)
    x, values = x.contiguous(), values.contiguous()
    y = torch.empty(batch, out_features, dtype=x.dtype)
    dst_long = (w_out >= w_in) != transpose
    _run(fn, x.data_ptr(), offsets.data_ptr(), values.data_ptr(), _ptr(bias), y.data_ptr(), batch, n_src,
         out_features, offsets.shape[0], int(dst_long))
    return y


def diag_values_grad(dy: Tensor, x: Tensor, offsets: Tensor) -> Tensor:
    """dV[k, j] = sum_b dy[b, row(k, j)] * x[b, col(k, j)]; dy (B, out), x (B, in) -> (K, min(out, in))."""
    fn = _kernel(("dst_diag_values_grad",), dy, x)
    if dy.shape[0] != x.shape[0]:
        raise UserError(f"dy and x need the same batch size, got {dy.shape[0]} and {x.shape[0]}")
    (batch, n_out), n_in = dy.shape, x.shape[1]
    if offsets.dim() != 1:
        raise UserError(f"diagonal offsets must have shape (K,), got {tuple(offsets.shape)}")
    offsets = _ids(offsets, offsets.shape[0], "diagonal offsets")
    k, d = offsets.shape[0], min(n_out, n_in)
    if k == 0 or batch == 0 or d == 0:
        return x.new_zeros(k, d)
    dv = torch.empty(k, d, dtype=x.dtype)
    dy, x = dy.contiguous(), x.contiguous()  # held by a name: a temporary's memory is freed before the call
    _run(fn, dy.data_ptr(), x.data_ptr(), offsets.data_ptr(), dv.data_ptr(), batch, n_out, n_in, k)
    return dv


def _condensed_ids(indices: Tensor, active_rows: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
    if indices.shape != shape:
        raise UserError(f"condensed indices must have the values' shape {tuple(shape)}, got {tuple(indices.shape)}")
    if indices.dtype is torch.int64:
        indices = indices.to(torch.int32)
    if indices.dtype not in _INDICES:
        raise UserError(f"condensed indices must be int16 or int32, got {indices.dtype}")
    if not indices.is_cpu:
        raise UserError(f"condensed indices are on {indices.device}; the CPU kernels need them on the CPU")
    return indices.contiguous(), _ids(active_rows, shape[0], "active_rows")


def _index_dtype(indices: Tensor) -> torch.dtype:
    """The index type the kernel is built for: int16/int32 as given, anything else narrowed to int32."""
    return indices.dtype if indices.dtype in _INDICES else torch.int32


def condensed_mm(x: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, out_features: int,
                 bias: Tensor | None = None) -> Tensor:
    """y[b, active_rows[i]] = sum_j values[i, j] * x[b, indices[i, j]] (+ bias, inside the kernel); x (B, in) -> (B, out).

    Columns of ablated rows hold the bias (0 without one).
    """
    fn = _kernel(("dst_condensed_mm", _index_dtype(indices)), x, values)
    indices, rows = _condensed_ids(indices, active_rows, values.shape)
    (batch, n_in), (n_active, k) = x.shape, values.shape
    if out_features < 1:
        raise UserError(f"out_features must be >= 1, got {out_features}")
    bias = check_bias(bias, x, out_features)
    if n_active == 0 or k == 0 or batch == 0:
        y = x.new_zeros(batch, out_features)
        return y if bias is None else y.add_(bias)
    x, values = x.contiguous(), values.contiguous()
    y = torch.empty(batch, out_features, dtype=x.dtype)
    _run(fn, x.data_ptr(), values.data_ptr(), indices.data_ptr(), rows.data_ptr(), _ptr(bias), y.data_ptr(), batch,
         n_in, out_features, n_active, k)
    return y


def condensed_values_grad(dy: Tensor, x: Tensor, indices: Tensor, active_rows: Tensor) -> Tensor:
    """dValues[i, j] = sum_b dy[b, active_rows[i]] * x[b, indices[i, j]] -> (n_active, k)."""
    fn = _kernel(("dst_condensed_values_grad", _index_dtype(indices)), dy, x)
    if dy.shape[0] != x.shape[0]:
        raise UserError(f"dy and x need the same batch size, got {dy.shape[0]} and {x.shape[0]}")
    if indices.dim() != 2:
        raise UserError(f"condensed indices must have shape (n_active, k), got {tuple(indices.shape)}")
    indices, rows = _condensed_ids(indices, active_rows, indices.shape)
    (batch, n_out), n_in = dy.shape, x.shape[1]
    n_active, k = indices.shape
    if n_active == 0 or k == 0 or batch == 0:
        return x.new_zeros(n_active, k)
    dv = torch.empty(n_active, k, dtype=x.dtype)
    dy, x = dy.contiguous(), x.contiguous()
    _run(fn, dy.data_ptr(), x.data_ptr(), indices.data_ptr(), rows.data_ptr(), dv.data_ptr(), batch, n_in, n_out,
         n_active, k)
    return dv


def condensed_input_grad(dy: Tensor, values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int) -> Tensor:
    """dx[b, c] = sum over entries (i, j) with indices[i, j] == c of values[i, j] * dy[b, active_rows[i]] -> (B, in)."""
    fn = _kernel(("dst_condensed_input_grad", _index_dtype(indices)), dy, values)
    indices, rows = _condensed_ids(indices, active_rows, values.shape)
    (batch, n_out), (n_active, k) = dy.shape, values.shape
    if in_features < 1:
        raise UserError(f"in_features must be >= 1, got {in_features}")
    if n_active == 0 or k == 0 or batch == 0:
        return dy.new_zeros(batch, in_features)
    dx = torch.empty(batch, in_features, dtype=dy.dtype)
    dy, values = dy.contiguous(), values.contiguous()
    _run(fn, dy.data_ptr(), values.data_ptr(), indices.data_ptr(), rows.data_ptr(), dx.data_ptr(), batch,
         in_features, n_out, n_active, k)
    return dx


class BoundProduct:
    """A forward product whose weights were checked once: called on x (B, in) it returns y (B, out) (+ bias).

    For inference-only layers, whose weights do not change shape: a call
    checks only x, allocates y and makes the one native call, with the
    weights' pointers read at binding time (the bound tensors are kept alive
    here, and in-place updates of their values are seen). Where the C++ call
    path is built (``caller.native()``), the check, the allocation and the
    call are one call of its function ``native`` ("diag_mm" or
    "condensed_mm"; a kernel error there sends x to ``fallback``, which
    raises it); elsewhere they run in Python. Any x the fast
    check does not accept (another dtype or device, not 2-D and contiguous,
    an empty batch), and every x when ``fn`` is None (empty weights), goes
    to ``fallback``, the general entry point, which handles it or raises
    its UserError.
    """

    __slots__ = ("_fn", "_weights", "_fallback", "_pointers", "_sizes", "in_features", "out_features", "_dtype",
                 "_native", "_native_args", "_guarded")

    def __init__(self, fn: ctypes._CFuncPtr | None, weights: tuple[Tensor | None, ...], sizes: tuple[int, ...],
                 in_features: int, out_features: int, dtype: torch.dtype, fallback, native: str) -> None:
        self._fn, self._weights, self._fallback = fn, weights, fallback
        self._pointers = tuple(_ptr(t) for t in weights)
        self._sizes, self.in_features, self.out_features, self._dtype = sizes, in_features, out_features, dtype
        module = caller.native() if fn is not None else None
        self._native = getattr(module, native) if module is not None else None
        self._guarded = getattr(module, f"guarded_{native}") if module is not None else None
        self._native_args = () if fn is None else (ctypes.cast(fn, ctypes.c_void_p).value, dtype,
                                                   *(p or 0 for p in self._pointers), *sizes)

    def guarded(self, buffers: dict[str, Tensor | None], watched: tuple[Tensor, ...]):
        """This product's C++ call behind a layer's checks (``caller.cpp``'s ``Guarded``), for a layer whose
        ``_buffers`` are ``buffers`` and whose copied buffers are ``watched``: a callable (x, buffers) -> y (x of
        shape (..., in)), or None from it when x, the dispatch state or the buffers (replaced, or ``watched``
        changed in place since this binding) need the layer's Python path. None where the C++ call path is not
        built."""
        if self._guarded is None:
            return None
        return self._guarded(self, tuple(buffers.values()), list(watched), self.in_features, self.out_features,
                             *self._native_args)  # self: kept alive with it, as the copy its addresses point into

    def __call__(self, x: Tensor) -> Tensor:
        if self._native is not None:  # the C++ call path (kernels/cpu/caller.cpp): None for an x it does not take
            y = self._native(x, *self._native_args)  # or for a kernel error, which the fallback raises
            return self._fallback(x) if y is None else y
        shape = x.shape  # read once: each query of x is a call into torch
        if (x.dtype is not self._dtype or len(shape) != 2 or shape[1] != self.in_features or not shape[0]
                or self._fn is None or not x.is_cpu or not x.is_contiguous()):
            return self._fallback(x)
        y = torch.empty(shape[0], self.out_features, dtype=self._dtype)
        status = self._fn(x.data_ptr(), *self._pointers, y.data_ptr(), shape[0], *self._sizes, torch.get_num_threads())
        if status:
            _raise(status)
        return y


def bind_diag_mm(offsets: Tensor, values: Tensor, in_features: int, out_features: int,
                 bias: Tensor | None = None) -> BoundProduct:
    """``diag_mm(x, offsets, values, out_features, bias=bias)`` bound to these weights: a ``BoundCopy`` with the
    tile-packed copy where ``diag_pack_unavailable`` gives no reason and there are weights, else a
    ``BoundProduct``."""
    fn = _kernel(("dst_diag_mm",), values, values)
    offsets = _check_diag(offsets, values, out_features, in_features)
    values, bias = values.contiguous(), check_bias(bias, values, out_features)

    def fallback(x: Tensor) -> Tensor:
        return diag_mm(x, offsets, values, out_features, bias=bias)

    weights, k = (offsets, values, bias), offsets.shape[0]
    sizes = (in_features, out_features, k, int(out_features >= in_features))
    if not k:
        return BoundProduct(None, weights, sizes, in_features, out_features, values.dtype, fallback, "diag_mm")
    if diag_pack_unavailable(values, in_features, out_features) is None:
        blob, entries = _copy(_library.diag_pack["pack"], offsets.data_ptr(), values.data_ptr(), k, in_features,
                              out_features)
        return BoundCopy(blob, k, entries, DIAG_PACK_BATCH, _library.diag_pack["mm"], "diag_pack_mm", fn, weights,
                         sizes, in_features, out_features, fallback)
    return BoundProduct(fn, weights, sizes, in_features, out_features, values.dtype, fallback, "diag_mm")


class BoundCopy(BoundProduct):
    """A bound product whose batches of at most ``batch`` rows run through ``blob``, a packed copy of the weights
    made once at binding, and larger ones through the format's kernel: the lane-packed condensed copy
    (``lanes_mm``, ``lanes.cpp``) or the tile-packed diagonal one (``diag_pack.cpp``).

    ``copy_fn`` is the copy's entry point, (x, blob, bias, y, B, in, out, n, steps, threads), with ``n`` and
    ``steps`` from its packing; ``native`` names its function in the C++ call path. An in-place change of the bound
    weights is not seen by the copy (``layers`` rebinds when their version counters move). The bias is read at
    each call.
    """

    __slots__ = ("blob", "batch", "_copy_fn", "_copy_args")

    def __init__(self, blob: Tensor, n: int, steps: int, batch: int, copy_fn: ctypes._CFuncPtr, native: str,
                 fn: ctypes._CFuncPtr, weights: tuple[Tensor | None, ...], sizes: tuple[int, ...], in_features: int,
                 out_features: int, fallback) -> None:
        super().__init__(fn, weights, sizes, in_features, out_features, torch.float32, fallback, native)
        self.blob, self.batch, self._copy_fn = blob, batch, copy_fn
        self._copy_args = (blob.data_ptr(), _ptr(weights[-1]), n, steps)
        if self._native is not None:
            self._native_args = (ctypes.cast(copy_fn, ctypes.c_void_p).value, blob.data_ptr(), n, steps, batch,
                                 *self._native_args)

    def copies(self, batch: int) -> bool:
        """Whether a call on ``batch`` rows reads the copy (else the format's own weights)."""
        return 0 < batch <= self.batch

    def __call__(self, x: Tensor) -> Tensor:
        if self._native is not None or not (x.dtype is torch.float32 and x.dim() == 2 and self.copies(x.shape[0])
                                            and x.shape[1] == self.in_features and x.is_cpu and x.is_contiguous()):
            return super().__call__(x)
        blob, bias, n, steps = self._copy_args
        y = torch.empty(x.shape[0], self.out_features)
        status = self._copy_fn(x.data_ptr(), blob, bias, y.data_ptr(), x.shape[0], self.in_features,
                               self.out_features, n, steps, torch.get_num_threads())
        if status:
            _raise(status)
        return y


def bind_condensed_mm(values: Tensor, indices: Tensor, active_rows: Tensor, in_features: int, out_features: int,
                      bias: Tensor | None = None) -> BoundProduct:
    """``condensed_mm(x, values, indices, active_rows, out_features, bias=bias)`` bound to these weights:
    a ``BoundCopy`` of the lane-packed copy where ``lanes_unavailable`` gives no reason and there are weights,
    else a ``BoundProduct``."""
    fn = _kernel(("dst_condensed_mm", _index_dtype(indices)), values, values)
    indices, rows = _condensed_ids(indices, active_rows, values.shape)
    values, bias = values.contiguous(), check_bias(bias, values, out_features)

    def fallback(x: Tensor) -> Tensor:
        return condensed_mm(x, values, indices, rows, out_features, bias=bias)

    weights, sizes = (values, indices, rows, bias), (in_features, out_features, *values.shape)
    if not values.numel():
        return BoundProduct(None, weights, sizes, in_features, out_features, values.dtype, fallback, "condensed_mm")
    if lanes_unavailable(values, in_features) is None:
        pack = _pack_lanes(values, indices, rows, in_features, out_features)
        return BoundCopy(pack.blob, pack.n, pack.steps, LANES_BATCH, _library.lanes["mm"], "lanes_mm", fn, weights,
                         sizes, in_features, out_features, fallback)
    return BoundProduct(fn, weights, sizes, in_features, out_features, values.dtype, fallback, "condensed_mm")
