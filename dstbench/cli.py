"""The ``dstbench`` command: run | compare | report | baseline | list.

Every bad input ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from dstbench import env as envinfo
from dstbench import registry
from dstbench.errors import OneLineParser, UserError


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"dstbench: warning: {message}", file=sys.stderr)


def _run_parser(suite_name: str | None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dstbench run", description="Run one benchmark suite into a run folder.")
    parser.add_argument("--suite", required=True, help=f"one of: {', '.join(registry.list_suites())}")
    if suite_name is not None:
        registry.get_suite(suite_name).add_arguments(parser)
    return parser


def cmd_run(argv: Sequence[str]) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--suite")
    known, _ = pre.parse_known_args(argv)
    if known.suite is None and not any(a in ("-h", "--help") for a in argv):
        raise UserError(f"dstbench run needs --suite NAME, one of: {', '.join(registry.list_suites())}")
    parser = _run_parser(known.suite)
    args = parser.parse_args(argv)
    with envinfo.running(["run", *argv]):
        return registry.get_suite(args.suite).run(args)


def cmd_list(argv: Sequence[str]) -> int:
    OneLineParser(prog="dstbench list", description="List methods and suites.").parse_args(argv)
    from dstbench.methods.options import declared  # noqa: PLC0415

    print("methods:", ", ".join(registry.list_methods()))
    for name in registry.list_methods():
        cls = registry.method_class(name)
        print(f"  {name:<10} {cls.display_name} [{cls.inference_format}]; options: {', '.join(sorted(declared(cls)))}")
    print("suites: ", ", ".join(registry.list_suites()))
    return 0


def _lazy(module: str) -> "callable":
    def call(argv: Sequence[str]) -> int:
        import importlib  # noqa: PLC0415

        return importlib.import_module(module).main(argv)

    return call


COMMANDS = {
    "run": (cmd_run, "run a suite: dstbench run --suite inference --quick"),
    "compare": (_lazy("dstbench.compare"), "compare speedups of two runs: dstbench compare BASE NEW"),
    "report": (_lazy("dstbench.report"), "figures and tables: dstbench report RUN... --out reports/NAME"),
    "baseline": (_lazy("dstbench.baseline"), "the CI speedup baseline: dstbench baseline update | check"),
    "list": (cmd_list, "list methods and suites"),
}


def _usage() -> str:
    lines = ["usage: dstbench COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dstbench`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"dstbench: error: unknown command {command!r}\n{_usage()}", file=sys.stderr)
        return 2
    warnings.showwarning = _warning_line
    try:
        return COMMANDS[command][0](rest)
    except UserError as exc:
        print(f"dstbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dstbench: interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
