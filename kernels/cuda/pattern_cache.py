"""Values derived from a sparsity pattern, computed once per pattern and never served stale.

A *pattern* is one or more index tensors (diagonal offsets; condensed
indices and active rows). What the CUDA path derives from them (range and
duplicate checks, which sync the host; the transposed structure of the
condensed input gradient) costs host syncs or extra kernels, so it is
computed on the first call and reused while the pattern is unchanged.

An entry is keyed by the identity of each pattern tensor (held through a weak
reference, so a new tensor at a recycled address or id never matches an old
entry, and an entry goes when its tensor does) and stamped with each tensor's
version counter, data pointer, shape, stride, dtype and device: an in-place
change (``indices.copy_(...)``, ``set_``) bumps the version and rebuilds the
entry. Inference tensors (made under ``torch.inference_mode``) have no version
counter, so their values are rebuilt on every call instead of cached.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from torch import Tensor

T = TypeVar("T")


def _stamp(t: Tensor) -> tuple:
    return (t._version, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device)


class PatternCache(Generic[T]):
    """A map (pattern tensors, extra key) -> value, valid while every pattern tensor is unchanged."""

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[tuple[weakref.ref, ...], tuple, T]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, pattern: tuple[Tensor, ...], extra: Hashable, build: Callable[[], T]) -> T:
        """The cached value for ``pattern`` and ``extra``, or ``build()``'s (then cached).

        Args:
            pattern: the tensors the value is derived from.
            extra: whatever else the value depends on (sizes, bounds).
            build: computes the value; called at most once per pattern version.
        """
        if any(t.is_inference() for t in pattern):
            return build()
        key = (tuple(id(t) for t in pattern), extra)
        stamps = tuple(_stamp(t) for t in pattern)
        hit = self._entries.get(key)
        if hit is not None and hit[1] == stamps and all(ref() is t for ref, t in zip(hit[0], pattern)):
            return hit[2]
        value = build()

        def forget(ref: weakref.ref) -> None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and any(r is ref for r in entry[0]):
                    del self._entries[key]

        with self._lock:
            self._entries[key] = (tuple(weakref.ref(t, forget) for t in pattern), stamps, value)
        return value
