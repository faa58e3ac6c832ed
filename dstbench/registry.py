"""Name -> SparsityMethod class and name -> Suite, with ``make_*`` factories (timm style).

Methods are found, not listed: every module of ``dstbench.methods`` is
imported (a method module registers itself with ``@register_method``), then
every entry point of the group ``dstbench.methods`` of the installed
packages, so a package outside dstbench adds a method by declaring, in its
``pyproject.toml``::

    [project.entry-points."dstbench.methods"]
    mymethod = "mypackage.mymethod"

Methods list in their declared ``order``, then by name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from typing import Any, Callable, TypeVar

from dstbench.errors import UserError

T = TypeVar("T")

_METHODS: dict[str, type] = {}
_SUITES: dict[str, Any] = {}


def register_method(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a SparsityMethod subclass available as ``name``."""

    def add(cls: type[T]) -> type[T]:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def register_suite(name: str) -> Callable[[T], T]:
    """Decorator: make a suite (an object with ``run(args)``) available as ``name``."""

    def add(suite: T) -> T:
        _SUITES[name] = suite
        return suite

    return add


METHOD_ENTRY_POINTS = "dstbench.methods"
_plugins_loaded = False


def _load_builtins() -> None:
    global _plugins_loaded
    importlib.import_module("dstbench.methods")
    importlib.import_module("dstbench.suites")
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in importlib.metadata.entry_points(group=METHOD_ENTRY_POINTS):
        try:
            entry.load()
        except Exception as exc:  # a broken plugin must not take the built-in methods down
            warnings.warn(f"dstbench: method plugin {entry.name!r} ({entry.value}) failed to load: {exc}", stacklevel=2)


def list_methods() -> list[str]:
    """Registered method names, in their declared ``order``, then by name."""
    _load_builtins()
    return sorted(_METHODS, key=lambda name: (_METHODS[name].order, name))


def list_suites() -> list[str]:
    """Registered suite names, in registration order."""
    _load_builtins()
    return list(_SUITES)


def method_class(name: str) -> type:
    """The SparsityMethod class registered as ``name``; UserError if unknown."""
    _load_builtins()
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; choose from: {', '.join(list_methods())}")
    return _METHODS[name]


def make_method(name: str, **kwargs: Any):
    """Build the SparsityMethod registered as ``name`` with the given options, checked against the ones it declares.

    Raises:
        UserError: for an unknown method, an option it does not declare or a value of the wrong type.
    """
    from dstbench.methods import options  # noqa: PLC0415  (methods import the registry)

    cls = method_class(name)
    options.check(name, cls, kwargs)
    return cls(**kwargs)


def get_suite(name: str) -> Any:
    """The suite registered as ``name``; UserError if unknown."""
    _load_builtins()
    if name not in _SUITES:
        raise UserError(f"unknown suite {name!r}; choose from: {', '.join(_SUITES)}")
    return _SUITES[name]
