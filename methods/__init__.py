"""Sparsity methods under one interface; every module here is imported, so a method module registers itself.

Adding a method is adding one module (``@register_method("name")`` on a
``SparsityMethod`` subclass); no list names the methods.
"""

import importlib
import pkgutil

from dstbench.methods.base import SparsityMethod

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SparsityMethod"]
