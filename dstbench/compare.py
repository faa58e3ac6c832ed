"""``dstbench compare BASE NEW``: a regression check on speedup ratios, never on absolute times.

For every sparse method of every case group, the speedups over the group's
baselines (dense, and CSR or RigL) of the two runs are compared. An
inference group times dense in several implementations (one row each, method
"dense"): ``speedup_vs_dense`` is paired with the row its ``dense_impl``
names (the fastest), ``speedup_vs_torch_dense`` with torch's default; when
the fastest differs between the runs, the former is not comparable. A case
*regresses* when both hold, as in asv:

* its speedup dropped by more than the threshold: ``new / base < 1 - threshold``;
* the drop is significant: a one-sided Mann-Whitney U test of the per-round
  speedups (``baseline_time[r] / method_time[r]`` for each round r, the
  methods of a group being timed interleaved) of NEW against BASE gives
  ``p < alpha``.

Improvements are the mirror image. A case whose rounds are too dispersed in
either run to judge (interquartile range / median of the method's rounds,
its reference's rounds or the per-round speedups above ``--max-dispersion``,
default 25%: the middle half of the rounds spans more than the drop being
looked for) is *noisy*: it is reported with a note to rerun, and never
counts as a regression. Quiet runs stay below ~17%, while a machine busy
during part of a run scatters the rounds it hits by 30% and more. A judged case whose two rows were timed with the
run's threads far nearer in one run than in the other (``core_rtt_ns``, ``dstbench.core_latency``: the
larger round trip of one at least twice the other's) says so in its note: on a virtual machine that moves its
vCPUs, a batch-1 row can lose 20-30% that way with no change to the code. Cases whose kernels, shapes or thread
counts differ, or that only one run has, are *not comparable*; two runs of
different machine classes (``dstbench.env.machine_class``) are not
comparable at all unless ``--allow-machine-mismatch``.

The defaults (25% and alpha 0.01) are chosen for a noisy shared 2-core
machine, where the same code run twice moves a speedup by up to ~15%
between runs while a kernel made 2x slower drops it by 50%. The per-round
test cannot detect anything with fewer than 5 rounds per run at alpha 0.01
(the smallest one-sided p of 4 against 4 samples is 1/70).

Exit codes: 1 if any case regressed, 0 otherwise (noisy cases included),
2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import mannwhitneyu

from dstbench import core_latency, registry, stats
from dstbench.errors import OneLineParser, UserError
from dstbench.runs import Run, load_run, machine_class, machine_label
from dstbench.table import Column, format_table

DEFAULT_THRESHOLD = 0.25
DEFAULT_ALPHA = 0.01
DEFAULT_MAX_DISPERSION = 0.25
STATUSES = ("regressed", "improved", "noisy", "not comparable", "unchanged")


@dataclass(frozen=True)
class Ratio:
    """One speedup column a suite records: its baseline method and how compare names it.

    Attributes:
        baseline: the method whose rows the speedup is relative to.
        impl_field: the field of a method's row naming the impl of that baseline's row where a group
            holds several rows of the baseline (e.g. ``dense_impl``), else None.
        label: how tables name the ratio ("vs dense").
    """

    baseline: str
    impl_field: str | None
    label: str


@dataclass(frozen=True)
class SuiteSpec:
    """How one suite's rows are matched and compared; a suite declares it when it registers (``Suite.compare``).

    Attributes:
        key: row fields naming a case group (besides the method).
        setup: row fields that must be equal in both runs for a case to be comparable.
        ratios: speedup column -> its ``Ratio``.
        defaults: the value of a key field in rows recorded before the suite wrote that field.

    The method every speedup is ultimately relative to, whose own rows are not compared, is the suite's baseline
    (its first ``Suite.references``).
    """

    key: tuple[str, ...]
    setup: tuple[str, ...]
    ratios: dict[str, Ratio]
    defaults: dict[str, Any] = field(default_factory=dict)


def suite_spec(suite: str, path: Path) -> SuiteSpec:
    """The compare declaration of the suite of a run at ``path``; UserError if that suite records no speedups."""
    spec = registry.get_suite(suite).compare
    if spec is None:
        compared = [name for name in registry.list_suites() if registry.get_suite(name).compare is not None]
        raise UserError(f"compare checks speedups of {' and '.join(compared)} runs; {path} is a {suite} run")
    return spec


@dataclass
class Comparison:
    """One (case group, method, speedup column) of the two runs.

    ``base``/``new`` are the recorded speedups (x), ``change`` is
    ``new / base - 1``, ``p_value`` the one-sided Mann-Whitney p in the
    direction of the change.
    """

    case: str
    method: str
    metric: str
    status: str
    base: float | None = None
    new: float | None = None
    change: float | None = None
    p_value: float | None = None
    note: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """(case, method, metric): what is compared, the same for that case in a comparison of any two runs."""
        return self.case, self.method, self.metric


@dataclass
class Result:
    """Everything ``compare`` found; ``exit_code`` is 1 when a case regressed."""

    base: dict[str, Any]
    new: dict[str, Any]
    threshold: float
    alpha: float
    max_dispersion: float
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.comparisons)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("regressed") else 0

    def summary(self) -> str:
        return ", ".join(f"{self.count(s)} {s}" for s in STATUSES)


def _fraction(text: str, option: str) -> float:
    """'10%' or '0.1' -> 0.1; UserError naming ``option`` if it is neither."""
    raw = text.strip()
    try:
        return float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UserError(f"{option} takes a percentage like 10% or a fraction like 0.1, got {text!r}") from None


def parse_threshold(text: str) -> float:
    """'10%' or '0.1' -> 0.1; UserError unless the result is in (0, 1)."""
    value = _fraction(text, "--threshold")
    if not 0.0 < value < 1.0:
        raise UserError(f"--threshold must be between 0% and 100% (a drop of the speedup), got {text!r}; write 10% or 0.1")
    return value


def parse_max_dispersion(text: str) -> float:
    """'25%' or '0.25' -> 0.25; UserError unless the result is positive."""
    value = _fraction(text, "--max-dispersion")
    if not value > 0.0:
        raise UserError(f"--max-dispersion must be positive (interquartile range / median of the rounds), got {text!r}")
    return value


def parse_alpha(text: str) -> float:
    """The significance level, in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise UserError(f"--alpha must be a probability in (0, 1) such as 0.01, got {text!r}")
    return value


def _key(spec: SuiteSpec, row: dict[str, Any]) -> tuple:
    return tuple(row.get(name, spec.defaults.get(name)) for name in spec.key)


Groups = dict[tuple, dict[str, list[dict[str, Any]]]]


def _index(run: Run, spec: SuiteSpec) -> Groups:
    """group key -> method -> its rows: one, or one per implementation of a ratio's baseline that names its
    impl (``Ratio.impl_field``, e.g. the dense libraries).

    Raises:
        UserError: a (group, method) is recorded twice (such a baseline: twice with the same impl).
    """
    several = {ratio.baseline for ratio in spec.ratios.values() if ratio.impl_field}
    groups: Groups = {}
    for row in run.rows:
        rows = groups.setdefault(_key(spec, row), {}).setdefault(row["method"], [])
        if rows and (row["method"] not in several or any(other.get("impl") == row.get("impl") for other in rows)):
            raise UserError(f"{run.path} records {row['method']} twice for the case {row['case_id']}; "
                            "it mixes two runs: compare single runs")
        rows.append(row)
    return groups


def _row(groups: Groups, key: tuple, method: str) -> dict[str, Any] | None:
    """The row of ``method`` in group ``key`` (the first one recorded for dense), or None."""
    rows = groups.get(key, {}).get(method)
    return rows[0] if rows else None


def _reference(groups: Groups, spec: SuiteSpec, key: tuple, method: str, impl: str | None) -> dict[str, Any] | None:
    """The baseline ``method``'s row of group ``key`` with ``impl`` (None: the first one), or that of the same
    group at sparsity 0 (dense recorded once)."""
    rows = groups.get(key, {}).get(method)
    if not rows and "sparsity" in spec.key:
        at_zero = tuple(0.0 if name == "sparsity" else value for name, value in zip(spec.key, key))
        rows = groups.get(at_zero, {}).get(method)
    if not rows:
        return None
    return rows[0] if impl is None else next((row for row in rows if row.get("impl") == impl), None)


def round_speedups(reference: dict[str, Any], own: dict[str, Any]) -> np.ndarray | None:
    """Per-round speedups reference_time[r] / own_time[r]; None if the samples cannot be paired."""
    ref, mine = reference.get("samples_s"), own.get("samples_s")
    if not ref or not mine or len(ref) != len(mine):
        return None
    ref_a, own_a = np.asarray(ref, dtype=float), np.asarray(mine, dtype=float)
    if np.any(own_a <= 0) or np.any(~np.isfinite(ref_a)):
        return None
    return ref_a / own_a


def _p_value(new: np.ndarray, base: np.ndarray, alternative: str) -> float:
    if len(new) < 2 or len(base) < 2:
        return 1.0
    return float(mannwhitneyu(new, base, alternative=alternative).pvalue)


def _label(spec: SuiteSpec, key: tuple, varying: set[str], row: dict[str, Any]) -> str:
    parts = []
    for name, value in zip(spec.key, key):
        if name in ("case", "model"):
            parts.append(str(value))
            shape = f"{row['in_features']}x{row['out_features']}" if row.get("in_features") is not None else None
            if shape and shape != value:
                parts.append(shape)
        elif name == "sparsity":
            parts.append(f"s={value:g}")
        elif name == "batch":
            parts.append(f"b={value}")
        elif name in varying:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def _setup_difference(spec: SuiteSpec, base: dict[str, Any], new: dict[str, Any], who: str) -> str | None:
    """Why ``who``'s rows of the two runs are not comparable (kernel, shape, threads), or None."""
    for name in ("impl", *spec.setup):
        if base.get(name) == new.get(name):
            continue
        if name in ("in_features", "out_features"):
            return (f"{who} shape {base.get('in_features')}x{base.get('out_features')} -> "
                    f"{new.get('in_features')}x{new.get('out_features')}")
        return f"{who} {name} {base.get(name)} -> {new.get(name)}"
    return None


def _spread(reference: dict[str, Any], own: dict[str, Any], speedups: np.ndarray) -> float:
    """The largest dispersion (IQR / median) among the rounds of ``own``, of ``reference`` and of the per-round speedups."""
    return max(stats.dispersion(reference["samples_s"]), stats.dispersion(own["samples_s"]), stats.dispersion(speedups))


def _judge(comp: Comparison, base_r: np.ndarray, new_r: np.ndarray, threshold: float, alpha: float,
           spreads: dict[str, float], max_dispersion: float) -> None:
    comp.change = comp.new / comp.base - 1.0
    if comp.change < 0:
        comp.p_value = _p_value(new_r, base_r, "less")
    else:
        comp.p_value = _p_value(new_r, base_r, "greater")
    noisy = [f"{run} {value:.0%}" for run, value in spreads.items() if value > max_dispersion]
    if noisy:
        comp.status = "noisy"
        comp.note = (f"rounds too dispersed to judge (IQR/median {', '.join(noisy)} > {max_dispersion:.0%}); "
                     "rerun on a quiet machine")
    elif comp.change < -threshold and comp.p_value < alpha:
        comp.status = "regressed"
    elif comp.change > threshold and comp.p_value < alpha:
        comp.status = "improved"
    elif abs(comp.change) > threshold:
        comp.note = f"not significant (p >= {alpha:g}, {len(base_r)} and {len(new_r)} rounds)"


def _compare_case(spec: SuiteSpec, metric: str, key: tuple, method: str, label: str, base_groups: Groups,
                  new_groups: Groups, threshold: float, alpha: float, max_dispersion: float) -> Comparison | None:
    ratio = spec.ratios[metric]
    ref_method, impl_field, metric_label = ratio.baseline, ratio.impl_field, ratio.label
    comp = Comparison(label, method, metric_label, "not comparable")
    base_row = _row(base_groups, key, method)
    new_row = _row(new_groups, key, method)
    if base_row is not None:
        comp.base = base_row.get(metric)
    if new_row is not None:
        comp.new = new_row.get(metric)
    if comp.base is None and comp.new is None:
        return None
    if base_row is None or comp.base is None:
        comp.note = "new case (not in the base run)"
        return comp
    if new_row is None or comp.new is None:
        comp.note = "missing in the new run"
        return comp
    base_ref = _reference(base_groups, spec, key, ref_method, base_row.get(impl_field) if impl_field else None)
    new_ref = _reference(new_groups, spec, key, ref_method, new_row.get(impl_field) if impl_field else None)
    if base_ref is None or new_ref is None:
        comp.note = f"no {ref_method} row to pair with"
        return comp
    difference = _setup_difference(spec, base_row, new_row, method) or _setup_difference(spec, base_ref, new_ref, ref_method)
    if difference:
        comp.note = difference
        return comp
    base_r, new_r = round_speedups(base_ref, base_row), round_speedups(new_ref, new_row)
    if base_r is None or new_r is None:
        comp.note = "no paired per-round samples"
        return comp
    comp.status = "unchanged"
    spreads = {"base": _spread(base_ref, base_row, base_r), "new": _spread(new_ref, new_row, new_r)}
    _judge(comp, base_r, new_r, threshold, alpha, spreads, max_dispersion)
    if comp.status in ("regressed", "improved"):
        moved = _placement_change(base_row, new_row)
        comp.note = "; ".join(part for part in (comp.note, moved) if part)
    return comp


def _placement_change(base: dict[str, Any], new: dict[str, Any]) -> str | None:
    """A note when the two rows' threads were at least twice as far apart in one run as in the other (the larger
    of each row's ``core_rtt_ns`` probes), else None."""
    if not base.get("core_rtt_ns") or not new.get("core_rtt_ns"):
        return None
    far_base, far_new = max(base["core_rtt_ns"]), max(new["core_rtt_ns"])
    if max(far_base, far_new) < 2 * min(far_base, far_new):
        return None
    return (f"the threads' cores were {far_base:.0f} ns apart (round trip) in base, {far_new:.0f} ns in new: the "
            "host placed them differently; rerun to tell that from the code")


def _varying(spec: SuiteSpec, runs: Sequence[Run]) -> set[str]:
    keys = [_key(spec, row) for run in runs for row in run.rows]
    return {name for i, name in enumerate(spec.key) if len({key[i] for key in keys}) > 1}


def _describe(run: Run) -> dict[str, Any]:
    env = run.env
    return {
        "path": str(run.path),
        "suite": run.suite,
        "machine": machine_label(run),
        "machine_class": machine_class(run),
        "git_sha": env.get("git_sha"),
        "git_dirty": env.get("git_dirty"),
        "torch": env.get("torch"),
        "threads": env.get("threads"),
        "started_at": run.meta.get("started_at"),
        "core_rtt_ns": core_latency.probed_range(run.rows),
    }


def compare_runs(base: Run, new: Run, threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA,
                 allow_machine_mismatch: bool = False, max_dispersion: float = DEFAULT_MAX_DISPERSION) -> Result:
    """Compare the speedups of two runs of the same suite (inference or training)."""
    if base.suite != new.suite:
        raise UserError(f"cannot compare runs of different suites: {base.path} is {base.suite}, {new.path} is "
                        f"{new.suite}; compare two runs of the same suite")
    spec = suite_spec(base.suite, base.path)
    baseline = registry.get_suite(base.suite).references[0].method
    result = Result(_describe(base), _describe(new), threshold, alpha, max_dispersion)
    mismatch = result.base["machine_class"] != result.new["machine_class"]
    if mismatch:
        result.notes.append(
            f"the runs come from different machine classes ({result.base['machine_class']!r} vs "
            f"{result.new['machine_class']!r}): "
            + ("compared anyway (--allow-machine-mismatch)." if allow_machine_mismatch else
               "their speedups are not comparable, so nothing was compared; rerun the base on this machine class "
               "(dstbench baseline update) or pass --allow-machine-mismatch"))
    base_groups, new_groups = _index(base, spec), _index(new, spec)
    varying = _varying(spec, (base, new))
    keys = list(dict.fromkeys([*base_groups, *new_groups]))
    for key in keys:
        methods = list(dict.fromkeys([*base_groups.get(key, {}), *new_groups.get(key, {})]))
        for method in methods:
            row = _row(base_groups, key, method) or _row(new_groups, key, method)
            label = _label(spec, key, varying, row)
            for metric, ref_method in ((m, r.baseline) for m, r in spec.ratios.items()):
                if method in (ref_method, baseline):
                    continue
                comp = _compare_case(spec, metric, key, method, label, base_groups, new_groups, threshold, alpha,
                                     max_dispersion)
                if comp is None:
                    continue
                if mismatch and not allow_machine_mismatch:
                    comp.status, comp.change, comp.p_value = "not comparable", None, None
                    comp.note = "different machine class"
                result.comparisons.append(comp)
    result.comparisons.sort(key=lambda c: STATUSES.index(c.status))
    if result.count("noisy"):
        result.notes.append(
            f"{result.count('noisy')} case(s) are noisy: their rounds vary too much to tell a regression from the "
            "machine's noise, so they were not judged; rerun both runs on a quiet machine (or 'dstbench baseline "
            "check', which measures again)")
    return result


def _fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _fmt_change(value: float | None) -> str:
    return "-" if value is None else f"{round(value * 100):+d}%"


def _fmt_p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _columns() -> list[Column]:
    return [
        Column("status", "status"),
        Column("case", "case"),
        Column("method", "method"),
        Column("speedup", "metric"),
        Column("base", lambda c: _fmt_x(c["base"]), ">"),
        Column("new", lambda c: _fmt_x(c["new"]), ">"),
        Column("change", lambda c: _fmt_change(c["change"]), ">"),
        Column("p", lambda c: _fmt_p(c["p_value"]), ">"),
        Column("note", "note"),
    ]


def _run_line(info: dict[str, Any]) -> str:
    sha = (info["git_sha"] or "unknown")[:10] + ("+dirty" if info["git_dirty"] else "")
    rtt = info.get("core_rtt_ns")
    apart = f", cores {rtt[0]:.0f}-{rtt[1]:.0f} ns apart" if rtt else ""
    return f"{info['path']} ({sha}, {info['machine']}, torch {info['torch']}{apart})"


def _rule(result: Result) -> str:
    return (f"A case regresses when its speedup drops by more than {result.threshold:.0%} and a one-sided "
            f"Mann-Whitney U test on its per-round speedups gives p < {result.alpha:g}; a case whose rounds vary by "
            f"more than {result.max_dispersion:.0%} (IQR/median) in either run is noisy, not judged.")


def format_markdown(result: Result) -> str:
    """A CI comment: a summary heading, the runs, the rule, notes and one table row per comparison."""
    lines = [f"### dstbench compare ({result.base['suite']}): {result.summary()}", "",
             f"- base: `{_run_line(result.base)}`", f"- new: `{_run_line(result.new)}`", "", _rule(result), ""]
    lines += [f"> **Note:** {note}\n" for note in result.notes]
    if not result.comparisons:
        lines.append("No speedups to compare.")
        return "\n".join(lines) + "\n"
    columns = _columns()
    lines.append("| " + " | ".join(col.header for col in columns) + " |")
    lines.append("|" + "|".join("---:" if col.align == ">" else "---" for col in columns) + "|")
    for comp in result.comparisons:
        cells = [col.cell(asdict(comp)).replace("|", "\\|") for col in columns]
        if comp.status in ("regressed", "improved"):
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_text(result: Result) -> str:
    """An aligned plain-text table for a terminal."""
    lines = [f"dstbench compare ({result.base['suite']}): {result.summary()}",
             f"base: {_run_line(result.base)}", f"new:  {_run_line(result.new)}", _rule(result)]
    lines += [f"note: {note}" for note in result.notes]
    if result.comparisons:
        lines += ["", format_table([asdict(c) for c in result.comparisons], _columns())]
    return "\n".join(lines) + "\n"


def format_json(result: Result) -> str:
    """The whole result as JSON (counts, runs, rule, notes, comparisons)."""
    data = {
        "summary": {status: result.count(status) for status in STATUSES},
        "exit_code": result.exit_code,
        "threshold": result.threshold,
        "alpha": result.alpha,
        "max_dispersion": result.max_dispersion,
        "base": result.base,
        "new": result.new,
        "notes": result.notes,
        "comparisons": [asdict(c) for c in result.comparisons],
    }
    return json.dumps(data, indent=2) + "\n"


FORMATS = {"md": format_markdown, "text": format_text, "json": format_json}


def add_options(parser: argparse.ArgumentParser) -> None:
    """The comparison options, shared with ``dstbench baseline check``."""
    default_threshold = f"{DEFAULT_THRESHOLD:.0%}"
    parser.add_argument("--threshold", default=default_threshold,
                        help="smallest drop of a speedup that counts, as 10%% or 0.1 "
                             f"(default {default_threshold.replace('%', '%%')})")
    parser.add_argument("--alpha", default=str(DEFAULT_ALPHA),
                        help=f"significance level of the Mann-Whitney U test (default {DEFAULT_ALPHA})")
    default_dispersion = f"{DEFAULT_MAX_DISPERSION:.0%}"
    parser.add_argument("--max-dispersion", default=default_dispersion,
                        help="a case whose rounds (or per-round speedups) vary more than this (interquartile range / "
                             f"median) in either run is noisy, not judged (default {default_dispersion.replace('%', '%%')})")
    parser.add_argument("--format", choices=sorted(FORMATS), default="md",
                        help="md (a CI comment, the default), text or json")
    parser.add_argument("--allow-machine-mismatch", action="store_true",
                        help="compare runs from different CPU/GPU models anyway")


def check_options(args: argparse.Namespace) -> tuple[float, float, float]:
    """(threshold, alpha, max_dispersion) parsed from the options of ``add_options``; UserError if one is bad."""
    return parse_threshold(args.threshold), parse_alpha(args.alpha), parse_max_dispersion(args.max_dispersion)


def compare_with_options(base: Run, new: Run, args: argparse.Namespace) -> Result:
    """``compare_runs`` under the options of ``add_options``."""
    threshold, alpha, max_dispersion = check_options(args)
    return compare_runs(base, new, threshold, alpha, args.allow_machine_mismatch, max_dispersion)


def main(argv: Sequence[str]) -> int:
    """``dstbench compare BASE NEW``: exit 1 on a regression, 0 otherwise (UserError -> 2)."""
    parser = OneLineParser(
        prog="dstbench compare",
        description="Compare the speedups (vs dense and vs CSR) of two runs of the same suite; "
                    "exit 1 if a case regressed.")
    parser.add_argument("base", help="the reference run folder")
    parser.add_argument("new", help="the run folder to check")
    add_options(parser)
    args = parser.parse_args(argv)
    check_options(args)
    result = compare_with_options(load_run(args.base), load_run(args.new), args)
    print(FORMATS[args.format](result), end="")
    return result.exit_code
