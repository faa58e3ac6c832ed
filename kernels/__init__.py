"""Sparse weight formats and the kernels that multiply by them.

Each operation has a pure-torch reference (``reference``), a compiled CPU
kernel (``cpu``) and a CUDA kernel (``cuda``); ``ops`` registers the products
as PyTorch operators (``torch.ops.dstbench.*``, with fake implementations and
autograd) that pick one per call.
"""

from dstbench.kernels.formats import CondensedWeight, DiagonalWeight, diagonal_coords, num_diagonals

__all__ = ["CondensedWeight", "DiagonalWeight", "diagonal_coords", "num_diagonals"]
