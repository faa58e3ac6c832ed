"""Sparsity methods under one interface: dense, rigl, srigl, dynadiag."""

from dstbench.methods.base import SparsityMethod
from dstbench.methods import dense, rigl, srigl, dynadiag  # noqa: F401  (registers the methods)

__all__ = ["SparsityMethod"]
