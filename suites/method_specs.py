"""``--methods`` and ``--option`` for every suite: a method spec is ``NAME[:KEY=VALUE...]``.

A spec names a registered method and, inline, options of it, so variants of
one method run side by side (``--methods srigl,srigl:ablation=false``); the
spec as written is the row's ``method`` label. Values are parsed as true/false,
none, integers and numbers where they read as such, else kept as strings, and
checked at once against the options the method declares (``methods/options.py``),
so ``srigl:ablation=maybe`` is a one-line error before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dstbench import registry
from dstbench.errors import UserError
from dstbench.methods import options as method_options

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def parse_value(text: str) -> Any:
    """'true' -> True, 'none' -> None, '3' -> 3, '0.5' -> 0.5, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _key_value(item: str, where: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{where} takes KEY=VALUE, got {item!r} (e.g. ablation=false)")
    return key.strip(), parse_value(value)


@dataclass(frozen=True)
class MethodSpec:
    """One entry of --methods: ``label`` as written, the registered ``method`` and its inline options."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_methods(text: str) -> list[MethodSpec]:
    """'rigl,srigl:ablation=false' -> MethodSpecs; UserError for an unknown method, option or value type."""
    specs = []
    for label in (item.strip() for item in text.split(",")):
        if not label:
            continue
        name, *items = label.split(":")
        if not _NAME.match(name):
            raise UserError(f"--methods entry {label!r} is not NAME[:KEY=VALUE...]")
        options = dict(_key_value(item, f"--methods {label}") for item in items)
        method_options.check(name, registry.method_class(name), options)
        specs.append(MethodSpec(label, name, options))
    if not specs:
        raise UserError("--methods is empty; give for example --methods dense,rigl")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"--methods lists {labels} with repeats; list each variant once")
    return specs


def with_baselines(baselines: list[str], text: str | None) -> list[MethodSpec]:
    """The specs a suite times: its ``baselines`` (registered names) first, then --methods or every registered method."""
    named = parse_methods(text) if text is not None else [MethodSpec(n, n) for n in registry.list_methods()]
    return [MethodSpec(b, b) for b in baselines] + [spec for spec in named if spec.label not in baselines]


def parse_options(items: list[str] | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """--option values -> (options for every method, {method: options for that method})."""
    common: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, value = _key_value(item, "--option")
        method, dot, option = key.rpartition(".")
        if dot:
            registry.method_class(method)
            scoped.setdefault(method, {})[option] = value
        else:
            common[key] = value
    return common, scoped
