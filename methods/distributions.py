"""Layer densities: uniform or Erdos-Renyi-Kernel (ERK), as in the RigL code (``sparse_utils.get_sparsities``).

ERK gives layer l the density ``eps * sum(shape_l) / prod(shape_l)`` (for a
linear (out, in): ``eps * (in + out) / (in * out)``; for a conv
(out, in, kh, kw): ``eps * (out + in + kh + kw) / (out * in * kh * kw)``),
with eps solved so that the number of kept weights equals
``density * sum(numel)``. A layer whose density would exceed 1 is made dense
and eps is solved again for the rest, until no layer exceeds 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dstbench.errors import UserError


def uniform_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """Every layer at ``density``."""
    return [float(density)] * len(shapes)


def erk_densities(shapes: Sequence[Sequence[int]], density: float, power_scale: float = 1.0) -> list[float]:
    """ERK densities of layers with weight ``shapes``; sum(d_l * numel_l) == density * sum(numel_l).

    Args:
        shapes: weight shape of every layer, (out, in) or (out, in, kh, kw).
        density: overall fraction of kept weights, in (0, 1].
        power_scale: exponent on the raw ERK score (1.0 in the paper).
    """
    numels = [math.prod(s) for s in shapes]
    raw = [(sum(s) / math.prod(s)) ** power_scale for s in shapes]
    dense: set[int] = set()
    while True:
        rhs = sum(n * density for i, n in enumerate(numels) if i not in dense)
        rhs -= sum(n * (1.0 - density) for i, n in enumerate(numels) if i in dense)
        divisor = sum(raw[i] * numels[i] for i in range(len(shapes)) if i not in dense)
        if divisor == 0:
            return [1.0] * len(shapes)
        eps = rhs / divisor
        sparse_raw = [raw[i] for i in range(len(shapes)) if i not in dense]
        if max(sparse_raw) * eps <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        top = max(sparse_raw)
        dense.update(i for i in range(len(shapes)) if i not in dense and raw[i] == top)


def layer_densities(shapes: Sequence[Sequence[int]], sparsity: float, distribution: str) -> list[float]:
    """Per-layer densities for an overall ``sparsity`` under ``distribution`` ("erk" or "uniform")."""
    if distribution == "uniform":
        return uniform_densities(shapes, 1.0 - sparsity)
    if distribution == "erk":
        return erk_densities(shapes, 1.0 - sparsity)
    raise UserError(f"unknown distribution {distribution!r}; choose erk or uniform")


def kept_weights(numel: int, density: float) -> int:
    """Number of kept weights of a layer: round(density * numel), at least 1 and at most numel."""
    return max(1, min(numel, round(density * numel)))
