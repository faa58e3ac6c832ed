"""The training suite: samples/s of a full training step per method, with speedups over dense and over RigL.

A step is what training does: forward, backward, ``optimizer.step()`` and
``method.step(optimizer)`` on a fixed synthetic batch of 3x32x32 images
(random labels). Models (``--models``): ``mlp``, 3072 -> 3072 -> 3072 -> 10,
and ``vit_tiny``, a ViT with width 384, 6 blocks, 6 heads, MLP 1536 and
patch 4 (65 tokens). Each method trains its own copy of the same
initialisation with SGD (momentum 0.9) in its training representation:
masked dense weights for RigL and SRigL, the diagonal kernels for DynaDiag.

Schedule position. Every method is prepared for a run of
``total_steps = 100 * delta_t`` steps, and the timed steps sit at a fixed
position of that schedule (``method.step_count`` is set before each timed
block; it is the schedule position of the ``SparsityMethod`` interface):

- ``--phase dynamic``: 10% into the run, where the topology still
  changes (before RigL/SRigL's t_end and DynaDiag's freeze). A round times a
  block of ordinary steps (no topology update among them; their mean is
  ``regular``) and, separately, the one step that ends with a topology
  update (``update``, which also computes the dense gradient for RigL and
  SRigL). The step time of the round is the update amortized over
  ``delta_t`` steps: ``regular + (update - regular) / delta_t``.
- ``--phase settled``: 90% into the run, after every method's topology is
  fixed (DynaDiag frozen); only ordinary steps exist there.
- ``--phase schedule`` (default): both, each on its own copy of the model,
  and the whole run's mean step ``f * dynamic + (1 - f) * settled`` with
  f = ``method.dynamic_fraction()``, the share of training before the
  topology settles (RigL/SRigL: t_end = 0.75; DynaDiag: freeze_at = 0.3,
  where its pre-freeze steps cost a dense GEMM on all P diagonals and its
  post-freeze steps run the sparse kernels). Rows then carry
  ``dynamic_p50_s`` and ``settled_p50_s`` with their own speedups over dense.

Methods (dense and rigl always included, as the baselines) are timed in
interleaved rounds in one process, the order rotated each round, so sample
i of every method comes from round i and speedups are per-round paired
ratios of medians with bootstrap intervals (``dstbench.stats``).

Dense is timed in several implementations of the same step (``--dense``,
``suites/dense_training.py``): torch's eager step, the step compiled by
``torch.compile`` and oneDNN's linear layers, each its own row with method
"dense". Every row of a group carries:

* ``speedup_vs_dense``: against the fastest dense row of the group (least
  median step), whose impl is ``dense_impl``;
* ``speedup_vs_torch_dense``: against torch's eager step (``torch_dense_impl``);
* ``speedup_vs_rigl``: against RigL;
* ``dense_impls``: the impls of the dense rows timed in the group.

A compiled row compiles in its first steps, before its warm-up; every dense
row but eager is checked then to train exactly as eager does, and is left
out with a warning if it does not (or cannot run). Its ``compile_s`` is the
wall time of those first steps on all its model copies, compilation included.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from dstbench import records, registry, stats, timing
from dstbench import report as reporting
from dstbench.compare import Ratio, SuiteSpec
from dstbench.errors import UserError
from dstbench.methods.base import SparsityMethod
from dstbench.methods.options import accepted
from dstbench.registry import register_suite
from dstbench.suites import base, dense_training, loop, models
from dstbench.suites.method_specs import parse_methods, with_baselines
from dstbench.table import Column, fmt_ratio_ci, format_table

NAME = "training"
DENSE, RIGL = "dense", "rigl"
#: options a resumed run may change (they do not define its cases)
RESUMABLE = ("quick", "out")
IMAGE = (3, 32, 32)
CLASSES = 10
#: name -> builder of the timed model for IMAGE inputs
MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": lambda: models.mlp(IMAGE[0] * IMAGE[1] * IMAGE[2], CLASSES, hidden=(3072, 3072)),
    "vit_tiny": lambda: models.vit(IMAGE, CLASSES, dim=384, depth=6, heads=6, mlp_dim=1536, patch=4),
}
PHASES = {"dynamic": 0.1, "settled": 0.9}
#: --phase choices: one schedule position, or both combined over the whole schedule
PHASE_CHOICES = (*PHASES, "schedule")
DEFAULTS = dict(models="mlp,vit_tiny", sparsity="0.9", batch=64, rounds=10, min_time=0.5, dense="eager,compiled,onednn")
QUICK = dict(models="mlp,vit_tiny", sparsity="0.9", batch=16, rounds=5, min_time=0.05, dense="eager")
#: the steps a non-eager dense row first takes, compiled and checked against eager (the second uses SGD's momentum)
CHECK_STEPS = 2
LR = 0.01


@dataclass(frozen=True)
class Group:
    """Everything of a timed case but the method."""

    model: str
    sparsity: float
    batch: int
    phase: str
    delta_t: int
    device: str
    threads: int
    dtype: str = "float32"

    @property
    def group_id(self) -> str:
        return f"{self.model}/s{self.sparsity:g}/b{self.batch}/{self.phase}/dt{self.delta_t}/{self.device}/t{self.threads}"

    def case_id(self, method: str) -> str:
        return f"{self.group_id}/{method}"


@dataclass
class Config:
    """The resolved options of one run (stored in run.json)."""

    methods: list[str]
    dense: list[str]
    models: list[str]
    sparsities: list[float]
    batch: int
    phase: str
    delta_t: int
    rounds: int
    min_time: float
    threads: int
    device: str
    impl: str
    seed: int
    quick: bool
    out: str

    def names(self) -> list[str]:
        """The timed rows of every group: the dense implementations (eager first), then the other methods."""
        return self.dense + [m for m in self.methods if m != DENSE]

    def groups(self) -> list[Group]:
        return [Group(m, s, self.batch, self.phase, self.delta_t, self.device, self.threads)
                for m in self.models for s in self.sparsities]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options of ``dstbench run --suite training``."""
    parser.add_argument("--quick", action="store_true",
                        help=f"batch {QUICK['batch']}, {QUICK['rounds']} rounds, sparsity {QUICK['sparsity']}, dense "
                             f"{QUICK['dense']} (explicit options override)")
    parser.add_argument("--methods", help="comma-separated method specs NAME[:KEY=VALUE...] (default: all registered); "
                                          "dense and rigl are always timed as the baselines of the speedups")
    parser.add_argument("--dense", help="comma-separated dense training steps, each its own row, among eager (torch), "
                                        "compiled (torch.compile, compiled before timing) and onednn (oneDNN's "
                                        "linear, CPU); speedup_vs_dense is against the fastest; eager is always "
                                        f"timed (default {DEFAULTS['dense']}; --quick: {QUICK['dense']})")
    parser.add_argument("--models", help=f"comma-separated, among {', '.join(MODELS)} (default {DEFAULTS['models']})")
    parser.add_argument("--sparsity", help=f"comma-separated sparsities in [0, 1) (default {DEFAULTS['sparsity']})")
    parser.add_argument("--batch-size", type=int, help=f"images per step (default {DEFAULTS['batch']})")
    parser.add_argument("--phase", default="schedule", choices=PHASE_CHOICES,
                        help="schedule position of the timed steps: dynamic (10%% in, topology changing), settled "
                             "(90%% in, topology fixed) or schedule (both, combined over the whole run; default)")
    parser.add_argument("--delta-t", type=int, default=100, help="steps between topology updates (default 100)")
    parser.add_argument("--rounds", type=int, help=f"samples per method and case (default {DEFAULTS['rounds']})")
    parser.add_argument("--min-time", type=float,
                        help=f"seconds a timed block of regular steps lasts at least (default {DEFAULTS['min_time']})")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--impl", default="auto", help="kernel of the sparse layers: auto, cpu, cuda or reference")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, masks and the batch (default 0)")
    base.add_out_arguments(parser, NAME)


def _preset(args: argparse.Namespace, key: str, attr: str | None = None) -> Any:
    value = getattr(args, attr or key)
    return value if value is not None else (QUICK if args.quick else DEFAULTS)[key]


def resolve_config(args: argparse.Namespace) -> Config:
    """Check every option and resolve the presets; raises UserError before anything is written."""
    methods = [spec.label for spec in with_baselines([DENSE, RIGL], args.methods)]
    names = [m.strip() for m in _preset(args, "models").split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise UserError(f"--models takes names among {', '.join(MODELS)}, got {_preset(args, 'models')!r}")
    sparsities = base.sparsities(_preset(args, "sparsity"))
    if not sparsities:
        raise UserError("--sparsity is empty; give for example --sparsity 0.9")
    batch = _preset(args, "batch", "batch_size")
    if batch < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch}")
    rounds = base.rounds(_preset(args, "rounds"), "--rounds")
    min_time = base.min_time(_preset(args, "min_time"), "--min-time")
    if args.delta_t < 3:
        raise UserError(f"--delta-t must be >= 3 (a block of regular steps fits between two updates), got {args.delta_t}")
    if args.impl not in ("auto", "cpu", "cuda", "reference"):
        raise UserError(f"--impl must be auto, cpu, cuda or reference, got {args.impl!r}")
    device = base.resolve_device(args.device)
    dense = dense_training.parse(_preset(args, "dense"), device.type, given=args.dense is not None)
    return Config(methods=methods, dense=dense, models=list(dict.fromkeys(names)), sparsities=sparsities, batch=batch,
                  phase=args.phase, delta_t=args.delta_t, rounds=rounds, min_time=min_time,
                  threads=base.set_threads(args.threads), device=device.type, impl=args.impl, seed=args.seed,
                  quick=args.quick, out=str(args.out or records.default_out(NAME)))


class Trainee:
    """One method's model, optimizer and fixed batch, stepped at a chosen schedule position.

    Args:
        method: the method, not yet prepared.
        model: a fresh model (the same initialisation for every method of a group).
        x, y: the batch, (B, 3, 32, 32) float32 and (B,) int64, on the model's device.
        dense: the dense implementation (a row name of ``dense_training``) the step runs as; eager for every method.
    """

    def __init__(self, method: SparsityMethod, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 dense: str = dense_training.EAGER) -> None:
        self.method = method
        self.model = method.prepare(dense_training.build_model(dense, model))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9)
        self.loss, self.update = dense_training.step_functions(dense, self.optimizer)
        self.x, self.y = x, y

    def step(self) -> torch.Tensor:
        """One full training step; returns its loss (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model, self.x, self.y)
        loss.backward()
        self.update()
        self.method.step(self.optimizer)
        return loss.detach()

    def steps_from(self, position: int, n: int) -> list[torch.Tensor]:
        """Set the schedule position, then take ``n`` steps (positions position+1 .. position+n); their losses."""
        self.method.step_count = position
        return [self.step() for _ in range(n)]


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    timing.sync(device)
    start = time.perf_counter()
    fn()
    timing.sync(device)
    return time.perf_counter() - start


@dataclass
class Timing:
    """One method's samples in round order, in seconds.

    Attributes:
        fraction: share of the schedule before the topology settles (``method.dynamic_fraction()``).
        n_inner: regular steps per timed block, per timed phase.
        step_s: the step of the run's phase (``schedule``: f * dynamic + (1 - f) * settled).
        phase_s: the step of each timed phase (dynamic: the update amortized over delta_t steps).
        regular_s, update_s: the regular and the update step of the first timed phase.
        compile_s: for the compiled dense step, the wall time of its first steps on all its model copies.
    """

    fraction: float
    n_inner: dict[str, int]
    compile_s: float | None = None
    step_s: list[float] = field(default_factory=list)
    phase_s: dict[str, list[float]] = field(default_factory=dict)
    regular_s: list[float] = field(default_factory=list)
    update_s: list[float] = field(default_factory=list)


def timed_phases(phase: str) -> tuple[str, ...]:
    """The schedule positions a --phase times."""
    return tuple(PHASES) if phase == "schedule" else (phase,)


def positions(phase: str, delta_t: int) -> tuple[int, int, int]:
    """(total_steps, start of the regular blocks, position before the update step) of a phase.

    The regular block starts right after an update position (a multiple of
    delta_t), so up to delta_t - 1 steps from there are ordinary steps; the
    update step is the next multiple of delta_t.
    """
    total = 100 * delta_t
    start = round(PHASES[phase] * 100) * delta_t
    return total, start, start + delta_t - 1


def _time_phase(t: Trainee, phase: str, n: int, delta_t: int, device: torch.device) -> tuple[float, float]:
    """(regular step, update step) seconds at ``phase``; the update is the regular step where none exists."""
    _, start, before_update = positions(phase, delta_t)
    regular = _timed(lambda: t.steps_from(start, n), device) / n
    update = _timed(lambda: t.steps_from(before_update, 1), device) if phase == "dynamic" else regular
    return regular, update


def _trainees(group: Group, config: Config, names: list[str], x: torch.Tensor,
              y: torch.Tensor) -> dict[tuple[str, str], Trainee]:
    """(row name, timed phase) -> a Trainee of the group's model, every one from the same initialisation."""
    specs = {spec.label: spec for spec in parse_methods(",".join(n for n in names if n not in dense_training.IMPLS))}
    trainees = {}
    for name in names:
        spec = specs.get(name)
        method_name, options = (spec.method, spec.options) if spec else (DENSE, {})
        schedule = accepted(registry.method_class(method_name), {"delta_t": group.delta_t})
        for phase in timed_phases(group.phase):
            torch.manual_seed(config.seed)
            model = MODELS[group.model]().to(config.device)
            method = registry.make_method(method_name, **{
                "sparsity": group.sparsity, "total_steps": positions(phase, group.delta_t)[0], "seed": config.seed,
                "impl": config.impl, **schedule, **options})
            trainees[name, phase] = Trainee(method, model, x, y, dense=dense_training.EAGER if spec else name)
    return trainees


def check_dense(trainees: dict[tuple[str, str], Trainee], names: list[str], group: Group,
                device: torch.device) -> tuple[dict[str, float], list[str]]:
    """The first CHECK_STEPS steps of every dense row (compiling the compiled one), each checked against eager's.

    Returns:
        (row -> wall seconds of its first steps on all its model copies, the rows left out: those that cannot run
        or do not train as eager does, each with a warning).
    """
    others = [name for name in names if name in dense_training.IMPLS and name != dense_training.EAGER]
    seconds: dict[str, float] = {}
    failed: list[str] = []
    for phase in timed_phases(group.phase):
        start = positions(phase, group.delta_t)[1]
        ref = trainees[dense_training.EAGER, phase]
        ref_losses = ref.steps_from(start, CHECK_STEPS)
        for name in (n for n in others if n not in failed):
            trainee = trainees[name, phase]
            try:
                began = time.perf_counter()
                losses = trainee.steps_from(start, CHECK_STEPS)
                timing.sync(device)
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - began
                problem = dense_training.mismatch(ref.model, trainee.model, ref_losses, losses)
            except (RuntimeError, NotImplementedError) as exc:
                problem = f"it cannot run ({(str(exc).strip() or type(exc).__name__).splitlines()[0]})"
            if problem:
                warnings.warn(f"dense step {name} left out of {group.group_id}: {problem}", stacklevel=2)
                failed.append(name)
    return seconds, failed


def measure_group(group: Group, config: Config, names: list[str],
                  on_block: Callable[[], None] | None = None) -> tuple[dict[str, Timing], dict[str, Trainee]]:
    """Time every row of a group in interleaved rounds; (row -> Timing, row -> Trainee of the last phase).

    ``names`` are ``Config.names``; a dense row that ``check_dense`` leaves out has neither.
    """
    device = torch.device(config.device)
    phases = timed_phases(group.phase)
    gen = torch.Generator().manual_seed(config.seed + 1)
    x = torch.randn((group.batch, *IMAGE), generator=gen).to(device)
    y = torch.randint(0, CLASSES, (group.batch,), generator=gen).to(device)
    if dense_training.COMPILED in names:
        dense_training.fresh_compiles()
    trainees = _trainees(group, config, names, x, y)
    first_steps, failed = check_dense(trainees, names, group, device)
    names = [name for name in names if name not in failed]
    result: dict[str, Timing] = {}
    for name in names:
        n_inner = {}
        for phase in phases:
            t = trainees[name, phase]
            _, start, before_update = positions(phase, group.delta_t)
            timing.warm_up(lambda t=t, s=start: t.steps_from(s, 1), config.min_time / 2, device, min_calls=2)
            if phase == "dynamic":
                t.steps_from(before_update, 1)
            cap = group.delta_t - 2 if phase == "dynamic" else timing.MAX_CALLS
            block = (lambda n, t=t, s=start: _timed(lambda: t.steps_from(s, n), device))
            n_inner[phase] = timing.calibrate(block, config.min_time, max_calls=cap)
        fraction = trainees[name, phases[0]].method.dynamic_fraction()
        result[name] = Timing(fraction, n_inner, first_steps.get(name) if name == dense_training.COMPILED else None,
                              phase_s={phase: [] for phase in phases})
    for r in range(config.rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            out = result[name]
            for i, phase in enumerate(phases):
                regular, update = _time_phase(trainees[name, phase], phase, out.n_inner[phase], group.delta_t, device)
                if i == 0:
                    out.regular_s.append(regular)
                    out.update_s.append(update)
                out.phase_s[phase].append(regular + (update - regular) / group.delta_t)
            if len(phases) == 1:
                out.step_s.append(out.phase_s[phases[0]][-1])
            else:
                out.step_s.append(out.fraction * out.phase_s["dynamic"][-1] + (1 - out.fraction) * out.phase_s["settled"][-1])
            if on_block is not None:
                on_block()
    return result, {name: trainees[name, phases[-1]] for name in names}


def _phase_columns(own: Timing, dense: Timing) -> dict[str, Any]:
    """Per timed phase p: ``p_p50_s``, ``p_samples_s`` and ``speedup_vs_dense_p`` (against ``dense``) with its interval."""
    columns: dict[str, Any] = {"dynamic_fraction": own.fraction}
    for phase, samples in own.phase_s.items():
        columns[f"{phase}_p50_s"] = stats.percentiles(samples, (50,))[50]
        columns[f"{phase}_samples_s"] = samples
        columns.update(stats.speedup_columns(f"speedup_vs_dense_{phase}", dense.phase_s[phase], samples))
    return columns


def _impl(name: str, trainee: Trainee) -> str:
    return dense_training.IMPLS.get(name) or loop.training_impl(trainee.model, trainee.method)


def _row(group: Group, name: str, trainees: dict[str, Trainee], timings: dict[str, Timing]) -> dict[str, Any]:
    """The row of ``name``; its speedups are against the group's fastest dense row, torch's eager one and RigL."""
    own, trainee = timings[name], trainees[name]
    dense = [n for n in timings if n in dense_training.IMPLS]
    fastest = min(dense, key=lambda n: stats.percentiles(timings[n].step_s, (50,))[50])
    eager = timings[dense_training.EAGER]
    pct = stats.percentiles(own.step_s, (50, 90, 99))
    summary = trainee.method.summary(trainee.model, trainee.x[:2])
    return {
        "suite": NAME,
        "case_id": group.case_id(name),
        "group_id": group.group_id,
        "method": DENSE if name in dense_training.IMPLS else name,
        "impl": _impl(name, trainee),
        **asdict(group),
        "sparsity_achieved": summary["sparsity"],
        "params": summary["params"],
        "flops": summary["flops"],
        "n": len(own.step_s),
        "n_inner": own.n_inner,
        "p50_s": pct[50],
        "p90_s": pct[90],
        "p99_s": pct[99],
        "dispersion": stats.dispersion(own.step_s),
        "samples_per_s": group.batch / pct[50],
        "regular_p50_s": stats.percentiles(own.regular_s, (50,))[50],
        "update_p50_s": stats.percentiles(own.update_s, (50,))[50],
        "compile_s": own.compile_s,
        "dense_impl": _impl(fastest, trainees[fastest]),
        "torch_dense_impl": _impl(dense_training.EAGER, trainees[dense_training.EAGER]),
        "dense_impls": [_impl(n, trainees[n]) for n in dense],
        **stats.speedup_columns("speedup_vs_dense", timings[fastest].step_s, own.step_s),
        **stats.speedup_columns("speedup_vs_torch_dense", eager.step_s, own.step_s),
        **stats.speedup_columns("speedup_vs_rigl", getattr(timings.get(RIGL), "step_s", None), own.step_s),
        "samples_s": own.step_s,
        "regular_samples_s": own.regular_s,
        "update_samples_s": own.update_s,
        **_phase_columns(own, timings[fastest]),
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _ratio(header: str, column: str) -> Column:
    return Column(header, lambda r: fmt_ratio_ci(r.get(column), r.get(f"{column}_lo"), r.get(f"{column}_hi")), ">")


def summary_table(rows: list[dict[str, Any]]) -> str:
    """One line per row: samples/s, step p50 in ms (per timed phase too), update-step p50, speedups with 95% intervals.

    "vs dense" is against the fastest dense row of the group, named in the "dense" column.
    """
    return format_table(rows, [
        Column("model", "model"),
        Column("method", "method"),
        Column("sparsity", lambda r: f"{r['sparsity']:g}", ">"),
        Column("batch", "batch", ">"),
        Column("impl", "impl"),
        Column("n", "n", ">"),
        Column("step ms", lambda r: f"{r['p50_s'] * 1e3:.2f}", ">"),
        Column("dynamic ms", lambda r: _ms(r.get("dynamic_p50_s")), ">"),
        Column("settled ms", lambda r: _ms(r.get("settled_p50_s")), ">"),
        Column("update ms", lambda r: f"{r['update_p50_s'] * 1e3:.2f}", ">"),
        Column("samples/s", lambda r: f"{r['samples_per_s']:.1f}", ">"),
        _ratio("vs dense [95% CI]", "speedup_vs_dense"),
        Column("dense", lambda r: r.get("dense_impl") or "-"),
        _ratio("vs torch dense [95% CI]", "speedup_vs_torch_dense"),
        _ratio("vs RigL [95% CI]", "speedup_vs_rigl"),
    ])


def run(args: argparse.Namespace) -> int:
    """``dstbench run --suite training``: validate, open the run folder, time every pending group, print the table."""
    config = resolve_config(args)
    records.check_folder(Path(config.out), NAME)
    with records.RunStore(Path(config.out), NAME, asdict(config), threads=config.threads, may_change=RESUMABLE,
                          new_segment=args.new_segment) as store:
        groups = config.groups()
        pending = [g for g in groups if not all(g.case_id(m) in store.done for m in config.names())]
        if len(pending) < len(groups):
            print(f"dstbench: resuming {config.out}: {len(groups) - len(pending)} of {len(groups)} case groups already "
                  "recorded", file=sys.stderr)
        start = time.perf_counter()
        with warnings.catch_warnings(), tqdm(total=len(pending) * len(config.names()) * config.rounds, unit="block",
                                             file=sys.stderr, desc=NAME) as bar:
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            for group in pending:
                compiling = " (compiling the dense step first)" if dense_training.COMPILED in config.dense else ""
                bar.set_postfix_str(f"{group.model} s={group.sparsity:g}{compiling}")
                timings, trainees = measure_group(group, config, config.names(), on_block=lambda: bar.update(1))
                config.dense = [name for name in config.dense if name in timings]  # one left out is not retried
                rows = [_row(group, m, trainees, timings) for m in config.names()]
                store.append_many(row for row in rows if row["case_id"] not in store.done)
        store.finish()
    by_id = {row["case_id"]: row for row in store.rows}
    print(summary_table([by_id[g.case_id(m)] for g in groups for m in config.names() if g.case_id(m) in by_id]))
    print(f"{len(pending)} case groups timed in {time.perf_counter() - start:.1f} s ({config.phase} phase, "
          f"delta_t {config.delta_t}); records in {config.out}")
    return 0


SUITE = register_suite(NAME)(base.Suite(
    NAME, "training throughput and speedups", add_arguments, run,
    required=("method", "model", "sparsity", "batch", "samples_per_s", "samples_s", "speedup_vs_dense"),
    compare=SuiteSpec(key=("model", "sparsity", "batch", "dtype", "device"), setup=("threads",),
                      ratios={**base.dense_ratios(DENSE), "speedup_vs_rigl": Ratio(RIGL, None, "vs RigL")}),
    report=reporting.training_section,
    references=(base.Reference(DENSE, "dense"), base.Reference(RIGL, "RigL", same_sparsity=True))))
