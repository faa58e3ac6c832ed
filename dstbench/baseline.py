"""``dstbench baseline update | check``: the committed CPU baseline of the speedup regression check.

``update`` runs a suite that records speedups (``--suite``, default the
inference suite) in-process, ``--quick`` unless other suite options are
given, into a fresh folder and puts it in place of the baseline folder, with
a ``baseline.json`` that records the suite and its options. ``check`` reruns
that suite with those same options into a new run folder and compares it
with the baseline (``dstbench compare``): exit 1 on a regression, 0
otherwise. A flagged case must regress again in a second run (``confirm``)
and against the baseline's own commit measured now, in the same window of
the machine (``same_window``, asv's ``continuous``), before it counts.

Speedups from another CPU say nothing about a regression, so there is one
baseline per machine class (CPU model and generation, ``dstbench.env.machine_class``): by default ``update`` writes
``results/baselines/cpu-quick-<machine class>`` for this machine, and ``check``
takes the baseline under ``results/baselines`` that was measured on this
machine's class. Where there is none, ``check`` measures the commit of
another class's baseline on this machine, then this checkout, and compares
the two (``against_its_commit``); an explicit ``--baseline`` from another
class runs nothing, says so, and exits 0 (``--allow-machine-mismatch``
compares anyway).

The suite's own progress and table go to stderr, so that stdout carries
only the comparison (Markdown for a CI comment, text or JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from dstbench import env as envinfo
from dstbench import commit_runs, records, registry
from dstbench.compare import FORMATS, Result, add_options, check_options, compare_with_options
from dstbench.errors import OneLineParser, UserError
from dstbench.runs import Run, load_run, machine_class

DEFAULT_SUITE = "inference"
#: where the committed baselines live, one folder each
ROOT = Path("results/baselines")
#: the default baseline folder's name, before the machine class
DEFAULT_PREFIX = "cpu-quick"
DEFAULT_SUITE_ARGS = ("--quick",)
INFO_FILE = "baseline.json"


def run_suite(suite: str, suite_args: Sequence[str], out: Path) -> None:
    """Run ``suite`` in this process into ``out``, its stdout sent to stderr."""
    from dstbench.cli import cmd_run  # noqa: PLC0415  (cli routes to this module)

    with contextlib.redirect_stdout(sys.stderr):
        code = cmd_run(["--suite", suite, *suite_args, "--out", str(out)])
    if code != 0:
        raise UserError(f"the {suite} suite failed (exit {code}); see the messages above")


def check_suite(suite: str) -> str:
    """``suite`` if it records speedups that compare can check; UserError otherwise."""
    if suite not in registry.list_suites():
        raise UserError(f"unknown suite {suite!r}; choose one of: {', '.join(registry.list_suites())}")
    if registry.get_suite(suite).compare is None:
        tracked = [name for name in registry.list_suites() if registry.get_suite(name).compare is not None]
        raise UserError(f"a baseline tracks speedups and the {suite} suite records none; use --suite "
                        f"{' or '.join(tracked)}")
    return suite


def _check_suite_args(suite_args: Sequence[str]) -> list[str]:
    if any(arg == "--out" or arg.startswith("--out=") for arg in suite_args):
        raise UserError(f"the suite options {' '.join(suite_args)} hold --out; the baseline command chooses the run folder")
    return list(suite_args) or list(DEFAULT_SUITE_ARGS)


def _check_target(out: Path, suite: str) -> None:
    """UserError unless ``out`` is absent, empty, or an earlier baseline (a run folder of ``suite``)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / records.RUN_FILE).exists():
        raise UserError(f"--out {out} holds files that are not a dstbench baseline; choose an empty or new folder")
    if (out / records.RUN_FILE).exists():
        records.check_folder(out, suite)


def recorded_suite_args(run: Run) -> list[str]:
    """The suite options a finished run was started with (its argv after ``run``, less --suite and --out).

    Raises:
        UserError: for a run that did not finish or has no recorded command line.
    """
    if not run.meta.get("finished_at"):
        raise UserError(f"{run.path} did not finish; resume it to the end before it can be a baseline")
    argv = list(run.env.get("argv") or [])
    if "run" not in argv:
        raise UserError(f"{run.path} does not record the command that made it; make the baseline with "
                        "'dstbench baseline update' instead")
    args, rest = [], argv[argv.index("run") + 1:]
    while rest:
        arg = rest.pop(0)
        if arg in ("--suite", "--out"):
            rest = rest[1:]
        elif not arg.startswith(("--suite=", "--out=")):
            args.append(arg)
    return args


def update(out: Path, suite_args: Sequence[str], suite: str | None = None, source: Path | None = None) -> Run:
    """Regenerate the baseline at ``out``: run ``suite`` (default ``DEFAULT_SUITE``) into a sibling folder (or copy
    the finished run folder ``source`` there, recording the suite and options it was run with), then swap it in."""
    out = Path(out)
    if source is not None:
        if suite_args:
            raise UserError(f"--from {source} takes the suite options that run recorded; drop {' '.join(suite_args)}")
        adopted = load_run(source)
        if suite is not None and suite != adopted.suite:
            raise UserError(f"--from {source} holds a run of the {adopted.suite} suite, not {suite}; "
                            f"drop --suite or adopt a run of {suite}")
        suite, suite_args = check_suite(adopted.suite), recorded_suite_args(adopted)
    else:
        suite = check_suite(suite or DEFAULT_SUITE)
        suite_args = _check_suite_args(suite_args)
    _check_target(out, suite)
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = out.with_name(f".{out.name}.new-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        if source is not None:
            shutil.copytree(source, fresh, ignore=shutil.ignore_patterns(records.LOCK_FILE))
        else:
            run_suite(suite, suite_args, fresh)
        info = {"suite": suite, "suite_args": suite_args}
        records.atomic_write_text(fresh / INFO_FILE, json.dumps(info, indent=2) + "\n")
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(fresh, out)
        except OSError:
            os.replace(old, out)
            raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return load_run(out)


def read_info(baseline: Path) -> dict[str, Any]:
    """The baseline.json of a baseline folder; UserError if there is none or it is corrupt."""
    path = Path(baseline) / INFO_FILE
    if not path.is_file():
        raise UserError(f"{baseline} is not a dstbench baseline (no {INFO_FILE}); create it with 'dstbench baseline update'")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is corrupt ({exc.msg}); regenerate it with 'dstbench baseline update'") from None
    if not isinstance(info, dict) or not isinstance(info.get("suite_args"), list) or not isinstance(info.get("suite"), str):
        raise UserError(f"{path} lacks its 'suite' or its 'suite_args' list; regenerate it with 'dstbench baseline update'")
    check_suite(info["suite"])
    return info


def slug(machine: str) -> str:
    """A folder-name form of a machine class: 'Intel(R) Xeon(R) Processor' -> 'intel-xeon-processor'."""
    text = re.sub(r"\((r|tm)\)", "", machine.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def this_cpu_class() -> str:
    """This machine's class as a CPU-only run would have it (its CPU model and generation)."""
    return envinfo.machine_class({"cpu_model": envinfo.cpu_model(), "cpu_id": envinfo.cpu_id()})


def default_dir() -> Path:
    """This machine's default baseline folder: ``ROOT/cpu-quick-<slug of its class>``, such as
    ``cpu-quick-amd-epyc-family-25-model-17``."""
    return ROOT / f"{DEFAULT_PREFIX}-{slug(this_cpu_class())}"


def folders(root: Path | None = None) -> list[Path]:
    """The baseline folders under ``root`` (default ``ROOT``), by name."""
    return sorted(p for p in Path(ROOT if root is None else root).glob("*") if (p / INFO_FILE).is_file())


def find(root: Path | None = None) -> tuple[Path | None, str]:
    """The baseline under ``root`` (default ``ROOT``) measured on this machine's class (the first by name if
    several), or None, with a note saying which classes the baselines there were measured on."""
    root = ROOT if root is None else root
    seen = []
    for folder in folders(root):
        base = load_run(folder)
        if this_machine_class(base) == machine_class(base):
            return folder, ""
        seen.append(f"{folder.name} ({machine_class(base)!r})")
    return None, (f"no baseline under {root} was measured on this machine class ({this_cpu_class()!r}); there: "
                  f"{', '.join(seen) or 'none'}. Make one with 'dstbench baseline update' (it writes {default_dir()}) "
                  "or name one with --baseline and --allow-machine-mismatch")


def this_machine_class(base: Run) -> str:
    """This machine's class as ``base`` would be classed here (CPU model and generation for CPU-only runs)."""
    gpu = None if base.devices == {"cpu"} else envinfo.gpu_name()
    return gpu or this_cpu_class()


def check(args: argparse.Namespace) -> int:
    """Rerun the baseline's suite options into ``args.out`` and compare; exit code of ``compare``."""
    check_options(args)
    if args.baseline is None:
        args.baseline, note = find()
        if args.baseline is None:
            return against_its_commit(note, args)
    base = load_run(args.baseline)
    info = read_info(args.baseline)
    here, there = this_machine_class(base), machine_class(base)
    if here != there and not args.allow_machine_mismatch:
        return _skipped(f"skipped: the baseline {args.baseline} was measured on {there!r} and this machine is {here!r}; "
                        "speedups of different machine classes are not comparable. Make a baseline on this machine "
                        "class (dstbench baseline update) or pass --allow-machine-mismatch", args.format)
    suite, suite_args, out = _plan(info, args)
    result = _measure_and_compare(base, suite, suite_args, out, args)
    if result.exit_code:
        result = same_window(base, result, suite, suite_args, _confirming(out), _base_commit(out), args)
    print(FORMATS[args.format](result), end="")
    return result.exit_code


def _plan(info: dict[str, Any], args: argparse.Namespace) -> tuple[str, list[str], Path]:
    """The suite and options a check reruns (a baseline's ``info``), and the run folder of its new run."""
    suite = info["suite"]
    return suite, _check_suite_args(info["suite_args"]), Path(args.out or records.default_out(f"{suite}-check"))


def _confirming(out: Path) -> Path:
    return out.with_name(out.name + "-confirm")


def _base_commit(out: Path) -> Path:
    return out.with_name(out.name + "-base-commit")


def _measure_and_compare(base: Run, suite: str, suite_args: Sequence[str], out: Path,
                         args: argparse.Namespace) -> Result:
    """Run the suite into ``out`` and compare with ``base``; a flagged case must regress in a confirming run too."""
    run_suite(suite, suite_args, out)
    result = compare_with_options(base, load_run(out), args)
    if result.exit_code:
        result = confirm(base, result, suite, suite_args, _confirming(out), args)
    return result


def against_its_commit(note: str, args: argparse.Namespace) -> int:
    """No baseline of this machine's class under ``ROOT``: measure here, in the same window, the
    commit of the first baseline there (another class's), then this checkout, with that baseline's suite options,
    and compare the two, as asv's ``continuous`` compares two commits on a machine with no stored results. Only
    the commit and the options are taken from that baseline, never its numbers. Runs nothing, exit 0, where
    there is no baseline at all or its commit cannot be measured (uncommitted edits, a shallow clone)."""
    others = folders()
    if not others:
        return _skipped(f"skipped: {note}", args.format)
    other = others[0]
    suite, suite_args, out = _plan(read_info(other), args)
    committed = _base_commit(out)
    try:
        sha = commit_runs.commit_of(load_run(other))
        print(f"dstbench baseline check: no baseline of this machine class ({this_cpu_class()!r}); measuring the "
              f"commit {sha[:10]} of {other.name} here, then this checkout", file=sys.stderr)
        base = load_run(commit_runs.run_at_commit(sha, suite, suite_args, committed))
    except UserError as exc:
        return _skipped(f"skipped: {note}; nor could the commit of {other.name} be measured here ({exc})",
                        args.format)
    result = _measure_and_compare(base, suite, suite_args, out, args)
    result.notes.append(f"no baseline of this machine class: the base is commit {sha[:10]} (that of {other.name}) "
                        f"measured on this machine just before ({committed}), not a stored run")
    print(FORMATS[args.format](result), end="")
    return result.exit_code


def _skipped(note: str, fmt: str) -> int:
    """Print why the check ran nothing (a JSON object with --format json); exit code 0."""
    print(json.dumps({"skipped": True, "note": note}) if fmt == "json" else f"dstbench baseline check: {note}")
    return 0


def confirm(base: Run, first: Result, suite: str, suite_args: Sequence[str], out: Path,
            args: argparse.Namespace) -> Result:
    """Measure again into ``out``; a case stays regressed only if it regressed in both runs.

    One run's rounds share whatever that run drew (buffer alignment, thread
    placement, a neighbour's burst), which the within-run test cannot see; asv
    runs benchmarks in several processes for the same reason. A real slowdown
    regresses both runs; a run-level accident rarely hits the same case twice.
    """
    flagged = {c.key for c in first.comparisons if c.status == "regressed"}
    print(f"dstbench baseline check: {len(flagged)} case(s) regressed; measuring again to confirm", file=sys.stderr)
    run_suite(suite, suite_args, out)
    second = compare_with_options(base, load_run(out), args)
    for comp in second.comparisons:
        if comp.status == "regressed" and comp.key not in flagged:
            comp.status, comp.note = "unchanged", "regressed in the confirming run only"
        elif comp.status != "regressed" and comp.key in flagged:
            comp.note = "regressed in the first run only"
    second.notes.append(f"regressions are confirmed by a second run ({out}); only cases regressed in both count")
    return second


def same_window(base: Run, result: Result, suite: str, suite_args: Sequence[str], newest: Path, out: Path,
                args: argparse.Namespace) -> Result:
    """Measure the baseline's own commit now into ``out``; a case stays regressed only if the newest run
    (``newest``) regressed against that measurement too.

    A slow window of a shared host (a neighbour's load, a throttled core) can slow
    one kernel for minutes, so both runs of ``confirm`` fall in it while the
    committed baseline was measured outside it; asv's ``continuous`` measures both
    commits in the same window for this reason. Where that comparison finds the case noisy (the
    rounds of either measurement too dispersed to judge), the case is noisy, as ``compare`` leaves
    any such case unjudged. When the baseline's commit cannot
    be measured (a shallow clone, a baseline made from uncommitted edits), the two
    runs' verdict stands, with a note saying why.
    """
    flagged = [c for c in result.comparisons if c.status == "regressed"]
    try:
        sha = commit_runs.commit_of(base)
        print(f"dstbench baseline check: {len(flagged)} case(s) regressed in both runs; measuring the baseline's "
              f"commit {sha[:10]} now, in the same window", file=sys.stderr)
        again = compare_with_options(load_run(commit_runs.run_at_commit(sha, suite, suite_args, out)),
                                     load_run(newest), args)
    except UserError as exc:
        result.notes.append(f"the baseline's commit was not measured again ({exc}), so the two runs' verdict stands")
        return result
    status = {c.key: c.status for c in again.comparisons}
    for comp in flagged:
        if status.get(comp.key) in ("unchanged", "improved"):
            comp.status = "unchanged"
            comp.note = "the baseline's commit, measured now, is as slow: the machine's window, not the code"
        elif status.get(comp.key) == "noisy":  # compare's rule: a case too dispersed to judge is not judged
            comp.status = "noisy"
            comp.note = ("the baseline's commit, measured now, varies too much to tell the code from the window; "
                         "rerun on a quiet machine")
        else:
            comp.note = "regressed against the baseline's commit measured now too"
    result.notes.append(f"regressions are checked against the baseline's commit {sha[:10]} measured in the same "
                        f"window ({out}); only cases regressed against it too count")
    return result


def main(argv: Sequence[str]) -> int:
    """``dstbench baseline update|check``."""
    parser = OneLineParser(prog="dstbench baseline",
                                     description="The committed speedup baseline that CI compares against.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("update", help="rerun a suite (default: the quick inference suite) and replace the baseline "
                                       "with it",
                        description="Run a suite that records speedups (default --quick; other suite options are "
                                    "passed on) and replace the baseline folder with the new run.")
    up.add_argument("--out", type=Path, help=f"the baseline folder (default {ROOT}/{DEFAULT_PREFIX}-<this CPU class>, "
                                             f"here {default_dir()})")
    up.add_argument("--suite", help=f"the suite whose speedups the baseline tracks (default {DEFAULT_SUITE}; with "
                                     "--from, the adopted run's)")
    up.add_argument("--from", dest="source", type=Path,
                    help="make a finished run folder the baseline instead of running the suite (its recorded options "
                         "are the ones check reruns): for runs made where this command cannot rerun them, a GPU "
                         "check's suite folders say")
    chk = sub.add_parser("check", help="rerun the baseline's suite options and compare with it (CI)",
                         description="Run the baseline's suite with its options and compare the speedups; "
                                     "exit 1 on a regression.")
    chk.add_argument("--baseline", type=Path, help=f"the baseline folder (default: the one under {ROOT} measured on "
                                                   "this machine class)")
    chk.add_argument("--out", type=Path, help="run folder of the new run (default results/SUITE-check-<timestamp>)")
    add_options(chk)
    args, rest = parser.parse_known_args(argv)
    if args.command == "check":
        if rest:
            raise UserError(f"dstbench baseline check takes no suite options (it reuses the baseline's): {' '.join(rest)}")
        return check(args)
    out = args.out or default_dir()
    run = update(out, rest, args.suite, args.source)
    print(f"baseline {out} updated: {len(run.rows)} rows measured on {machine_class(run)!r}")
    return 0
