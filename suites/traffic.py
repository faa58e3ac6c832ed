"""The bytes one call of an inference layer moves: its stored tensors, its input and its output.

``call_bytes`` is the lower bound of the memory traffic of ``layer(x)``:
every tensor the layer holds (parameters and buffers of it and its
submodules: dense weight and bias; CSR row pointers, column indices and
values; condensed values, column indices and active rows; diagonal offsets
and values; oneDNN's reordered weight), each counted once in its stored
dtype, plus x (batch, in) read and y (batch, out) written in the run's dtype.
The condensed layer counts its lane-packed copy instead of its values and
indices, and the diagonal layer its tile-packed copy instead of its offsets
and values, at the batch sizes the copy runs (``call_tensors``). A module that
runs a sequence of layers (``layers``, the token stack) moves the sum over
its layers, each with its own input and output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _identity(tensor: Tensor) -> tuple:
    """Two views of one stored tensor (OpenBLAS's weight is the source linear's) count once."""
    if tensor.layout == torch.strided:
        return ("strided", tensor.data_ptr(), tensor.numel(), tensor.dtype)
    return ("opaque", id(tensor))


def _bytes(tensors: list[Tensor]) -> int:
    """Bytes of the distinct tensors in ``tensors``."""
    distinct = {_identity(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in distinct.values())


def stored_bytes(module: nn.Module) -> int:
    """Bytes of the distinct tensors ``module`` holds: parameters and buffers, its submodules' included."""
    return _bytes([*module.parameters(), *module.buffers()])


def activation_bytes(module: nn.Module, batch: int, itemsize: int) -> int:
    """Bytes of x read and y written by one call at ``batch`` rows: over every layer of a ``layers`` sequence."""
    layers = getattr(module, "layers", None)
    if layers is not None:
        return sum(activation_bytes(layer, batch, itemsize) for layer in layers)
    return batch * (module.in_features + module.out_features) * itemsize


def call_bytes(module: nn.Module, batch: int, itemsize: int) -> int:
    """``stored_bytes`` + ``activation_bytes``: what one call of ``module`` on (batch, in) moves at least.

    A layer that reads a copy of its weights at some batch sizes (``call_tensors(batch)``: the condensed
    layer's lane-packed copy and the diagonal layer's tile-packed one at batch <= 2) counts the tensors that call
    reads instead of those it stores.
    """
    layers = getattr(module, "layers", None)
    if layers is not None:
        return sum(call_bytes(layer, batch, itemsize) for layer in layers)
    call_tensors = getattr(module, "call_tensors", None)
    stored = stored_bytes(module) if call_tensors is None else _bytes(call_tensors(batch))
    return stored + activation_bytes(module, batch, itemsize)
