"""Sparse weight formats and the kernels that multiply by them.

Each operation has a pure-torch reference (``reference``), a compiled CPU
kernel (``cpu``) and a CUDA kernel (``cuda``); ``ops`` picks one per call and
wraps it in autograd.
"""

from dstbench.kernels.formats import CondensedWeight, DiagonalWeight, diagonal_coords, num_diagonals

__all__ = ["CondensedWeight", "DiagonalWeight", "diagonal_coords", "num_diagonals"]
