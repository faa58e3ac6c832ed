"""The options a method declares: the keyword parameters of its constructors, checked by type before it is built.

A method's options are the parameters of the ``__init__`` of every class in
its MRO (``sparsity`` and the keyword-only ones), with their annotations as
the types. ``check`` refuses an option the method does not declare and a
value of the wrong type with one line (``ablation=maybe`` is not a bool), so
a typo or a bad value never runs silently.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

from dstbench.errors import UserError

_SKIP = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)


def declared(cls: type) -> dict[str, Any]:
    """Option name -> type annotation, over the constructors of ``cls`` and its bases."""
    options: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        hints = typing.get_type_hints(init)
        for param in inspect.signature(init).parameters.values():
            if param.name != "self" and param.kind not in _SKIP:
                options[param.name] = hints.get(param.name, Any)
    return options


def accepts(cls: type, option: str) -> bool:
    """True if the method class declares ``option``."""
    return option in declared(cls)


def accepted(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` the method class declares (suite-wide options reach the methods that have them)."""
    known = declared(cls)
    return {key: value for key, value in options.items() if key in known}


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is collections.abc.Callable:
        return callable(value)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}
    return names.get(hint, "a function" if typing.get_origin(hint) is collections.abc.Callable else str(hint))


def check(name: str, cls: type, options: dict[str, Any]) -> None:
    """UserError (one line) for an option ``cls`` does not declare or a value of the wrong type."""
    known = declared(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"method {name!r} has no option(s) {', '.join(unknown)}; its options are "
                        f"{', '.join(sorted(known))}")
    for key, value in options.items():
        if not _fits(value, known[key]):
            raise UserError(f"method {name!r}: option {key} takes {_describe(known[key])}, got {value!r}")
