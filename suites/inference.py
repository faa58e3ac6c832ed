"""The inference suite: latency of one linear layer (and of a whole ViT-B/16) in each method's inference format.

Cases (``--cases``): the linear shapes of ViT-B/16, ViT-L/16 and ViT-H/14
(qkv, proj, fc1, fc2; named sets ``b16``, ``l16``, ``h14``), or any
``INxOUT`` shape; every shape is timed at every sparsity and batch (rows of
X). ``b16-stack`` is ViT-B/16's 48 encoder linears applied in sequence to
one token (batch 1 whatever ``--batch`` says; ``suites/token_stack.py``).
The default is ``b16`` and ``b16-stack``; the bigger shapes are the named
sets ``l16`` and ``h14`` (ViT-L/16's fc1 included), out of the default to
keep a full run, warm and cold, under an hour on 2 cores. The end-to-end case
is torchvision's ViT-B/16 at image batch 1 with every encoder linear converted
(``suites/vit_e2e.py``).

Layer and stack cases are timed with warm caches and with cold ones
(``--l2``, ``dstbench.timing``): warm, each call finds the layer's data left
in cache by the previous one; cold, the caches are evicted before every
call, outside the timed region, and a cold group takes ``--cold-rounds``
rounds (3x ``--rounds`` by default: a call from memory varies more). On
the CPU the eviction reads a buffer ``--evict-factor`` times the last-level
cache (1.5 by default), which cold rows record as ``evict_bytes`` (``compare``
judges only cold rows of equal buffers against each other).
``--quick`` times warm only on the CPU; the end-to-end case is always warm.

Every row also says how close it comes to this machine's memory
bandwidth: ``bytes`` (``suites/traffic.py``: the layer's stored tensors in
their dtypes plus x and y), ``gbps`` (bytes / p50) and ``limit_frac`` (gbps
over ``ceiling_gbps``, the bandwidth that ``dstbench.bandwidth``'s probe
measured in the same run at that working set, warm for a warm row and after
an eviction for a cold one); ``bw_probe`` holds the whole probe. The end-to-end rows leave them
empty. On the CPU with 2 or more threads every row also carries ``core_rtt_ns``, the round trip of a cache
line between two of the kernels' threads (``dstbench.core_latency``) probed just before and just after its
group was timed: on a virtual machine that moves the threads' cores, it tells a batch-1 row measured with the
cores near each other from one measured with them far apart.

One *case group* is (case, sparsity, batch, dtype, device, threads, L2
mode). All methods of a group, plus the dense and CSR (``rigl``) baselines,
are timed interleaved in the same process (``dstbench.timing``), and the
group's rows are appended in one atomic write; a rerun into the same
``--out`` skips recorded groups. The dense layers of a shape are built once
and shared by all sparsity groups; they are timed in each group, so that
every speedup is a per-round paired ratio (``dstbench.stats``). A dense
row's ``sparsity`` is its group's (its ``nnz`` is in*out).

Dense is timed in several implementations, each its own row with method
"dense" (``suites/dense_baselines.py``): torch's default F.linear (MKL),
oneDNN and OpenBLAS on the CPU in float32; end to end, ViT-B/16 with every
encoder linear in each of them (``suites/vit_e2e.py``). Every row of a group carries:

* ``speedup_vs_dense``: against the fastest dense implementation of the
  group (least median), whose impl is ``dense_impl``;
* ``speedup_vs_torch_dense``: against torch's default, whose impl is
  ``torch_dense_impl``;
* ``speedup_vs_csr``: against CSR (``rigl``);
* ``dense_impls``: the impls of the dense rows timed in the group.

Each library gets the run's threads while its block runs, and each block
starts once the previous one's idle threads have gone quiet
(``dstbench.threadpools``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from dstbench import bandwidth, core_latency, cuda_graphs, records, registry, stats, threadpools, timing
from dstbench import report as reporting
from dstbench.compare import Ratio, SuiteSpec
from dstbench.errors import UserError
from dstbench.kernels.layers import InferenceLayer
from dstbench.registry import register_suite
from dstbench.methods.base import SparsityMethod
from dstbench.suites import base, dense_baselines, token_stack, traffic, vit_e2e
from dstbench.suites.method_specs import parse_methods, with_baselines
from dstbench.table import Column, fmt_ratio_ci, format_table

NAME = "inference"
#: name -> (in_features, out_features)
LAYER_CASES = {
    "b16-qkv": (768, 2304),
    "b16-proj": (768, 768),
    "b16-fc1": (768, 3072),
    "b16-fc2": (3072, 768),
    "l16-qkv": (1024, 3072),
    "l16-proj": (1024, 1024),
    "l16-fc1": (1024, 4096),
    "l16-fc2": (4096, 1024),
    "h14-qkv": (1280, 3840),
    "h14-proj": (1280, 1280),
    "h14-fc1": (1280, 5120),
    "h14-fc2": (5120, 1280),
}
#: the token-stack cases, name -> (in_features, out_features) of the whole stack
STACK_CASES = {name: (width, width) for name, (width, _, _) in token_stack.STACKS.items()}
#: --cases names that stand for several cases
CASE_SETS = {model: [name for name in LAYER_CASES if name.startswith(f"{model}-")] for model in ("b16", "l16", "h14")}
E2E_CASE = "vit_b16"
DENSE, CSR = "dense", "rigl"
#: options a resumed run may change (they do not define its cases)
RESUMABLE = ("named", "quick", "out", "notes")
DEFAULTS = {
    "cases": "b16,b16-stack",
    "sparsity": "0.8,0.9,0.95,0.99",
    "batch": "1,197,256",
    "rounds": 10,
    "min_time": 0.1,
    "l2": ",".join(timing.L2_MODES),
}
QUICK = {"cases": "b16-fc1", "sparsity": "0.9", "batch": "1,256", "rounds": 7, "min_time": 0.05, "l2": "warm"}
#: how each call is issued (``--launch``): from Python one by one, or as the replay of a CUDA graph captured once
LAUNCH_MODES = ("eager", "graph")
#: rounds of the end-to-end case in --quick (a ViT-B/16 forward takes ~0.3 s on 2 cores)
QUICK_E2E_ROUNDS = 6
#: a cold group's rounds per warm round, where --cold-rounds is not given: a cold call's time moves with what
#: the memory system is doing (one DynaDiag layer took 93 to 162 us from one trial to the next), and at 10
#: rounds the 95% intervals of the cold batch-1 ratios spanned +-30%; at 30 about +-5%
COLD_ROUNDS_FACTOR = 3
_SHAPE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class Group:
    """One case group: everything but the method.

    ``in_features``/``out_features`` are None for the end-to-end case, whose
    batch counts images (1x3x224x224) rather than rows of X.
    """

    case: str
    in_features: int | None
    out_features: int | None
    sparsity: float
    batch: int
    dtype: str
    device: str
    threads: int
    l2: str
    launch: str = "eager"

    @property
    def e2e(self) -> bool:
        return self.case == E2E_CASE

    @property
    def stack(self) -> bool:
        return self.case in STACK_CASES

    @property
    def group_id(self) -> str:
        shape = "e2e" if self.e2e else f"{self.in_features}x{self.out_features}"
        launch = "" if self.launch == "eager" else f"/{self.launch}"  # eager ids predate --launch
        return (f"{self.case}/{shape}/s{self.sparsity:g}/b{self.batch}/{self.dtype}/{self.device}"
                f"/t{self.threads}/l2-{self.l2}{launch}")

    def case_id(self, name: str) -> str:
        """The id of the row ``name`` (a method, or a dense implementation of ``dense_baselines.NAMES``)."""
        return f"{self.group_id}/{name}"


@dataclass
class Config:
    """The resolved options of one run (stored in run.json).

    ``methods`` are the methods timed in every group: dense and the CSR
    baseline (rigl) first, then the others asked for. ``named`` are those
    given in --methods (empty when it was not given). ``dense`` are the
    dense implementations timed in every layer group (``dense_baselines``),
    torch's default first. ``l2`` are the cache modes of the layer and stack
    groups. ``launch`` are the launch modes (``LAUNCH_MODES``) every group is
    timed in.
    """

    methods: list[str]
    named: list[str]
    dense: list[str]
    cases: dict[str, tuple[int, int]]
    sparsities: list[float]
    batches: list[int]
    l2: list[str]
    evict_factor: float
    launch: list[str]
    e2e: bool
    rounds: int
    cold_rounds: int
    e2e_rounds: int
    min_time: float
    threads: int
    device: str
    dtype: str
    impl: str
    seed: int
    quick: bool
    out: str
    notes: list[str]

    def groups(self) -> list[Group]:
        """Every case group, layer and stack cases first (shape, batch, sparsity, L2 mode), then end to end.

        A stack case is timed at batch 1 only (one token).
        """
        out = [
            Group(case, fin, fout, s, b, self.dtype, self.device, self.threads, l2, launch)
            for case, (fin, fout) in self.cases.items()
            for b in ([1] if case in STACK_CASES else self.batches)
            for s in self.sparsities
            for l2 in self.l2
            for launch in self.launch
        ]
        if self.e2e:
            out += [Group(E2E_CASE, None, None, s, 1, self.dtype, self.device, self.threads, "warm", launch)
                    for s in self.sparsities for launch in self.launch]
        return out

    def rounds_of(self, group: Group) -> int:
        """R of ``group``: ``e2e_rounds`` end to end, ``cold_rounds`` with cold caches, else ``rounds``."""
        if group.e2e:
            return self.e2e_rounds
        return self.cold_rounds if group.l2 == "cold" else self.rounds

    def names(self, group: Group) -> list[str]:
        """The rows of ``group``: its dense implementations, then the other methods."""
        return self.dense + [m for m in self.methods if m != DENSE]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options of ``dstbench run --suite inference``."""
    parser.add_argument("--quick", action="store_true",
                        help=f"small subset: cases {QUICK['cases']}, sparsity {QUICK['sparsity']}, batch {QUICK['batch']}, "
                             f"{QUICK['rounds']} rounds, warm caches (on the CPU), ViT-B/16 end to end at 0.9 with "
                             f"{QUICK_E2E_ROUNDS} rounds "
                             "when the compiled kernels are available (explicit options override)")
    parser.add_argument("--methods", help="comma-separated method specs NAME[:KEY=VALUE...] (default: all registered); dense and rigl (CSR) "
                                          "are always timed as the baselines of the speedups")
    parser.add_argument("--cases", help=f"comma-separated layer cases: names among {', '.join(LAYER_CASES)}; the sets "
                                        f"{', '.join(CASE_SETS)} (each model's qkv, proj, fc1, fc2); "
                                        f"{', '.join(STACK_CASES)} (ViT-B/16's 48 encoder linears in sequence on one "
                                        "token, batch 1); or shapes INxOUT such as 64x128 (default "
                                        f"{DEFAULTS['cases']}: the l16 and h14 sets, l16-fc1 included, are left out to "
                                        "keep a full run, warm and cold, under an hour on 2 cores)")
    parser.add_argument("--sparsity", help=f"comma-separated sparsities in [0, 1) (default {DEFAULTS['sparsity']})")
    parser.add_argument("--batch", help=f"comma-separated batch sizes, rows of X (default {DEFAULTS['batch']})")
    parser.add_argument("--l2", help="comma-separated cache modes of the layer and stack cases: warm (each call finds "
                                     "the layer's data where the last one left it) and cold (before every call, untimed, "
                                     "the caches are emptied, on the CPU by reading a buffer --evict-factor times the "
                                     "last-level cache, and a twin of the layer is run, so that only the layer's own "
                                     "data is cold) (default warm,cold; --quick on the CPU: warm)")
    parser.add_argument("--evict-factor", type=float,
                        help=f"cold caches on the CPU: the eviction buffer in multiples of the last-level cache, at "
                             f"least 1 (default {timing.EVICT_FACTOR}); a larger one leaves less of a layer in a "
                             "cache whose replacement is not LRU, and costs more time per cold call")
    parser.add_argument("--launch", help="comma-separated launch modes (CUDA): eager (every call issued from Python, "
                                         "its launch overhead included) and graph (each row's call captured once in a "
                                         "CUDA graph and replayed: the device's time alone, dense and CSR alike) "
                                         "(default eager,graph on CUDA; eager on the CPU)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end ViT-B/16 case")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", help=f"one of {', '.join(base.DTYPES)} (default float32)")
    parser.add_argument("--impl", default="auto",
                        help="kernel of srigl/dynadiag: auto, cpu, cuda or reference (default auto)")
    parser.add_argument("--min-time", type=float,
                        help=f"seconds each timed block lasts at least (default {DEFAULTS['min_time']})")
    parser.add_argument("--rounds", type=int,
                        help=f"samples per method of a warm-cache case and end to end (default {DEFAULTS['rounds']})")
    parser.add_argument("--cold-rounds", type=int,
                        help=f"samples per method of a cold-cache case (default {COLD_ROUNDS_FACTOR}x --rounds: a cold "
                             "call's latency varies more)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    base.add_out_arguments(parser, NAME)


def _preset(args: argparse.Namespace, key: str) -> Any:
    value = getattr(args, key)
    if value is not None:
        return value
    return (QUICK if args.quick else DEFAULTS)[key]


def parse_cases(text: str) -> dict[str, tuple[int, int]]:
    """'b16-fc1,64x128' -> {'b16-fc1': (768, 3072), '64x128': (64, 128)}; a set (``CASE_SETS``) stands for its cases.

    Raises:
        UserError: an unknown name.
    """
    cases = {}
    for name in (item.strip() for item in text.split(",")):
        if not name:
            continue
        shape = _SHAPE.match(name)
        if shape:
            fin, fout = int(shape.group(1)), int(shape.group(2))
            if fin < 1 or fout < 1:
                raise UserError(f"--cases shape {name} needs in and out >= 1")
            cases[name] = (fin, fout)
        elif name in CASE_SETS:
            cases.update((case, LAYER_CASES[case]) for case in CASE_SETS[name])
        elif name in LAYER_CASES or name in STACK_CASES:
            cases[name] = {**LAYER_CASES, **STACK_CASES}[name]
        else:
            raise UserError(f"unknown case {name!r} in --cases; choose from {', '.join([*LAYER_CASES, *STACK_CASES])}, "
                            f"the sets {', '.join(CASE_SETS)}, or give a shape INxOUT like 64x128")
    return cases


def _parse_modes(text: str, modes: tuple[str, ...], option: str) -> list[str]:
    """The distinct modes of a comma-separated ``text``, in order; UserError for an unknown or missing one."""
    chosen = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not chosen or any(m not in modes for m in chosen):
        raise UserError(f"{option} takes a comma-separated list of {', '.join(modes)}, got {text!r}")
    return chosen


def parse_l2(text: str) -> list[str]:
    """'warm,cold' -> ['warm', 'cold']; UserError for an unknown or missing mode."""
    return _parse_modes(text, timing.L2_MODES, "--l2")


def parse_launch(text: str, device: torch.device) -> list[str]:
    """'eager,graph' -> ['eager', 'graph']; UserError for an unknown or missing mode, or graph off CUDA."""
    modes = _parse_modes(text, LAUNCH_MODES, "--launch")
    if "graph" in modes and device.type != "cuda":
        raise UserError("--launch graph replays CUDA graphs; use it with --device cuda")
    return modes


#: the largest --evict-factor: beyond it the buffer costs memory and time and evicts nothing more
MAX_EVICT_FACTOR = 64.0


def _evict_factor(value: float | None, device: torch.device) -> float:
    """--evict-factor, checked: at least 1 and at most ``MAX_EVICT_FACTOR``, CPU only; the default without one."""
    if value is None:
        return timing.EVICT_FACTOR
    if device.type != "cpu":
        raise UserError(f"--evict-factor sizes the CPU's eviction buffer; on {device.type} the cold mode overwrites "
                        "twice the L2 instead, so drop the option")
    if not 1.0 <= value <= MAX_EVICT_FACTOR:
        raise UserError(f"--evict-factor must be between 1 (the last-level cache itself) and {MAX_EVICT_FACTOR:g}, "
                        f"got {value:g}")
    return float(value)


def make_method(label: str, **options: Any) -> SparsityMethod:
    """The method of a --methods spec label (``srigl:ablation=false``) with the suite's ``options`` added."""
    spec, = parse_methods(label)
    return registry.make_method(spec.method, **options, **spec.options)


def resolve_config(args: argparse.Namespace) -> Config:
    """Check every option and resolve the --quick presets; raises UserError before anything is written."""
    named = [spec.label for spec in parse_methods(args.methods)] if args.methods is not None else []
    methods = [spec.label for spec in with_baselines([DENSE, CSR], args.methods)]
    cases = parse_cases(_preset(args, "cases"))
    sparsities = base.sparsities(_preset(args, "sparsity"))
    batches = base.batches(_preset(args, "batch"))
    device = base.resolve_device(args.device)
    # CUDA times both modes by default, --quick too (its flush costs little)
    l2 = parse_l2(args.l2 if args.l2 is not None else DEFAULTS["l2"] if device.type == "cuda" else _preset(args, "l2"))
    launch = parse_launch(args.launch or (",".join(LAUNCH_MODES) if device.type == "cuda" else "eager"), device)
    if not sparsities:
        raise UserError("--sparsity is empty; give for example --sparsity 0.9")
    if not batches:
        raise UserError("--batch is empty; give for example --batch 1,256")
    rounds = base.rounds(_preset(args, "rounds"), "--rounds")
    cold_rounds = base.rounds(COLD_ROUNDS_FACTOR * rounds if args.cold_rounds is None else args.cold_rounds,
                              "--cold-rounds")
    min_time = base.min_time(_preset(args, "min_time"), "--min-time")
    evict_factor = _evict_factor(args.evict_factor, device)
    dtype = base.resolve_dtype(args.dtype)
    if args.impl not in ("auto", "cpu", "cuda", "reference"):
        raise UserError(f"--impl must be auto, cpu, cuda or reference, got {args.impl!r}")
    if not cases and args.no_e2e:
        raise UserError("nothing to run: --cases is empty and --no-e2e is set")
    threads = base.set_threads(args.threads)
    e2e_rounds = rounds if args.rounds is not None or not args.quick else QUICK_E2E_ROUNDS
    return Config(
        methods=methods, named=named, dense=dense_baselines.candidates(device.type, dtype), cases=cases,
        sparsities=sparsities, batches=batches, l2=l2, evict_factor=evict_factor, launch=launch, e2e=not args.no_e2e,
        rounds=rounds, cold_rounds=cold_rounds, e2e_rounds=e2e_rounds, min_time=min_time, threads=threads,
        device=device.type, dtype=args.dtype, impl=args.impl, seed=args.seed, quick=args.quick,
        out=str(args.out or records.default_out(NAME)), notes=[],
    )


def build_layers(method: str, linears: list[nn.Linear], sparsity: float, impl: str) -> list[nn.Module]:
    """Each of ``linears`` in ``method``'s inference format at ``sparsity`` (dense ignores the sparsity), by one
    instance of the method.

    Raises:
        UserError: if the method's layer breaks the ``InferenceLayer`` contract (impl, nnz, shapes).
    """
    instance = make_method(method, sparsity=sparsity, impl=impl)
    layers = [instance.sparsify_linear(linear) for linear in linears]
    for layer in layers:
        if not isinstance(layer, InferenceLayer):
            missing = [a for a in ("in_features", "out_features", "impl", "nnz") if not hasattr(layer, a)]
            raise UserError(f"method {method!r}: sparsify_linear returned a {type(layer).__name__} without "
                            f"{', '.join(missing)}; see kernels.layers.InferenceLayer")
    return layers


def build_layer(method: str, linear: nn.Linear, sparsity: float, impl: str) -> nn.Module:
    """``linear`` in ``method``'s inference format at ``sparsity`` (``build_layers`` of one)."""
    return build_layers(method, [linear], sparsity, impl)[0]


def build_vit(name: str, source: nn.Module, sparsity: float, impl: str) -> nn.Module:
    """A copy of the ViT ``source`` with its encoder linears in ``name``'s format: a dense implementation of
    ``dense_baselines.NAMES`` (torch's default keeps them as they are), or a method's at ``sparsity``."""
    if name in dense_baselines.BUILDERS:
        return vit_e2e.with_encoder_linears(source, dense_baselines.BUILDERS[name])
    dense = name in dense_baselines.NAMES
    method = registry.make_method(DENSE) if dense else make_method(name, sparsity=sparsity, impl=impl)
    return vit_e2e.convert(source, method)


def _run_tiny(make: Callable[[nn.Linear], nn.Module], config: Config) -> nn.Module:
    """``make``'s layer of a tiny linear in the run's dtype and device, called once.

    Raises:
        RuntimeError, NotImplementedError: the layer cannot run in this dtype on this device.
    """
    device, dtype = torch.device(config.device), base.DTYPES[config.dtype]
    layer = make(nn.Linear(16, 32).to(device, dtype))
    with torch.inference_mode():
        layer(torch.randn(2, 16, device=device, dtype=dtype))
    return layer


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def probe(config: Config) -> dict[str, str]:
    """Run every method and dense implementation once on a tiny layer in the run's dtype and device.

    A method that cannot run is a UserError if it was named in --methods (or
    is dense); otherwise it is dropped from ``config.methods`` with a warning
    (without rigl, the speedup_vs_csr columns stay empty). A dense
    implementation other than torch's that cannot run is dropped from
    ``config.dense`` with a warning.

    Returns:
        method -> the impl that ran.
    """
    impls = {}
    for method in list(config.methods):
        try:
            impls[method] = _run_tiny(lambda linear: build_layer(method, linear, 0.5, config.impl), config).impl
        except (RuntimeError, NotImplementedError) as exc:
            message = f"{method} cannot run in {config.dtype} on {config.device} ({_reason(exc)})"
            if method in config.named or method == DENSE:
                raise UserError(f"{message}; choose another --dtype/--device or drop it from --methods") from None
            warnings.warn(f"{message}; leaving it out", stacklevel=2)
            config.methods.remove(method)
    for name in config.dense[1:]:
        try:
            _run_tiny(dense_baselines.BUILDERS[name], config)
        except (RuntimeError, NotImplementedError) as exc:
            warnings.warn(f"dense baseline {name} cannot run in {config.dtype} on {config.device} ({_reason(exc)}); "
                          "leaving it out", stacklevel=2)
            config.dense.remove(name)
    return impls


def _impl_of(module: nn.Module) -> str:
    if hasattr(module, "impl"):
        return module.impl
    return "+".join(sorted({layer.impl for layer in vit_e2e.converted_layers(module)}))


def _nnz_of(module: nn.Module) -> int:
    layers = [module] if isinstance(module, InferenceLayer) else vit_e2e.converted_layers(module)
    return sum(int(layer.nnz) for layer in layers)


class Workloads:
    """Builds the timed modules and inputs of each group.

    The modules of a shape are built once per sparsity (dense once per shape) and shared by its cache modes, so that
    the same modules are timed warm and cold. A cold group also gets each module's *twin*: the same method and
    format on other weights of the same shapes (a stack's twin is one block), called before each timed call so that
    the call finds its code path, thread pools and input warm and only its own data cold (``timing.interleaved``'s
    ``primers``).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = base.DTYPES[config.dtype]
        self._key: tuple | None = None
        self._sources: dict[bool, Any] = {}
        self._built: dict[tuple, nn.Module] = {}

    def _source(self, group: Group, twin: bool) -> Any:
        """The seeded nn.Linear of the group's shape (the stack's list of them, or the ViT); a twin has other weights."""
        if twin not in self._sources:
            seed = self.config.seed + (1 if twin else 0)
            if group.e2e:
                self._sources[twin] = vit_e2e.vit_b16(seed, self.device, self.dtype)
            elif group.stack:
                width, mlp, blocks = token_stack.STACKS[group.case]
                self._sources[twin] = token_stack.source_linears(width, mlp, 1 if twin else blocks, seed, self.device,
                                                                 self.dtype)
            else:
                torch.manual_seed(seed)
                self._sources[twin] = nn.Linear(group.in_features, group.out_features).to(self.device, self.dtype)
        return self._sources[twin]

    def _build(self, group: Group, name: str, source: Any) -> nn.Module:
        """``name``'s module (a method, or a dense implementation of ``dense_baselines.NAMES``) of ``source``."""
        if group.e2e:
            return build_vit(name, source, group.sparsity, self.config.impl)
        dense = name in dense_baselines.NAMES

        def one(linears: list[nn.Linear]) -> list[nn.Module]:
            if name in dense_baselines.BUILDERS:
                return [dense_baselines.BUILDERS[name](linear) for linear in linears]
            return build_layers(DENSE if dense else name, linears, 0.0 if dense else group.sparsity, self.config.impl)

        return token_stack.TokenStack(one(source)) if group.stack else one([source])[0]

    def _module(self, group: Group, name: str, twin: bool) -> nn.Module:
        shape = (group.case, group.in_features, group.out_features)
        if shape != self._key:
            self._key, self._sources, self._built = shape, {}, {}
        sparsity = None if name in dense_baselines.NAMES else group.sparsity
        if sparsity is not None and any(key[2] not in (None, sparsity) for key in self._built):
            self._built = {key: module for key, module in self._built.items() if key[2] is None}  # one sparsity kept
        key = (twin, name, sparsity)
        if key not in self._built:
            self._built[key] = self._build(group, name, self._source(group, twin))
        return self._built[key]

    def modules(self, group: Group, names: list[str]) -> dict[str, nn.Module]:
        """name (``Config.names``) -> the module to time for this group."""
        return {name: self._module(group, name, twin=False) for name in names}

    def twins(self, group: Group, names: list[str]) -> dict[str, nn.Module]:
        """name -> the twin of its module (see the class docstring)."""
        return {name: self._module(group, name, twin=True) for name in names}

    def input(self, group: Group) -> torch.Tensor:
        """X: (batch, in_features), or (1, 3, 224, 224) images for the end-to-end case."""
        shape = vit_e2e.IMAGE_SHAPE if group.e2e else (group.batch, group.in_features)
        gen = torch.Generator().manual_seed(self.config.seed + 1)
        return torch.randn(shape, generator=gen).to(self.device, self.dtype)


def measure_group(group: Group, workloads: Workloads, names: list[str], config: Config,
                  on_block: Callable[[], None] | None = None,
                  probe: bandwidth.Bandwidth | None = None) -> list[dict[str, Any]]:
    """Time all ``names`` (``Config.names``) of one group interleaved; one row per name.

    ``probe`` is the run's bandwidth probe, which the rows' ``limit_frac`` divides by (empty without one).
    """
    modules = workloads.modules(group, names)
    x = workloads.input(group)
    fns = {name: (lambda m=module: m(x)) for name, module in modules.items()}
    if group.launch == "graph":
        fns = _captured(group, fns, config)
        names = [name for name in names if name in fns]
    primers = None
    if group.l2 == "cold" and group.device == "cpu":  # an L2 flush on CUDA leaves the host's code warm: no twins
        primers = {name: (lambda m=twin: m(x)) for name, twin in workloads.twins(group, names).items()}
    pools = threadpools.PoolLimits(config.threads, dense_baselines.BLAS)
    rtt_before = _core_rtt(config)
    with torch.inference_mode():
        samples = timing.interleaved(fns, rounds=config.rounds_of(group), min_time=config.min_time,
                                     threads=config.threads, device=torch.device(config.device), l2=group.l2,
                                     on_block=on_block, block_context=pools.block, primers=primers,
                                     torch_threads=pools.torch_threads(names), evict_factor=config.evict_factor)
    rtt_after = _core_rtt(config)
    rtt = None if rtt_before is None or rtt_after is None else [rtt_before, rtt_after]
    dense = [name for name in names if name in dense_baselines.NAMES]
    fastest = min(dense, key=lambda name: statistics.median(samples[name].samples_s))
    evict = timing.evict_bytes(torch.device(config.device), config.evict_factor) if group.l2 == "cold" else None
    return [{**_row(group, name, modules, samples, dense, fastest), "evict_bytes": evict, "core_rtt_ns": rtt,
             **_traffic(group, modules[name], samples[name], probe)} for name in names]


def _core_rtt(config: Config) -> float | None:
    """The round trip between two of the CPU kernels' threads now (``dstbench.core_latency``), in ns; None on
    CUDA or with one thread."""
    return core_latency.probe(config.threads) if config.device == "cpu" else None


def _captured(group: Group, fns: dict[str, Callable[[], object]], config: Config) -> dict[str, Callable[[], None]]:
    """Each of ``fns`` captured in a CUDA graph (``cuda_graphs.captured``); a sparse row that cannot be captured
    is left out with a note (its group's other rows are still timed).

    Raises:
        cuda_graphs.CaptureError: when a dense row cannot be captured: the group has no reference then.
    """
    out = {}
    with torch.inference_mode():
        for name, fn in fns.items():
            try:
                out[name] = cuda_graphs.captured(fn, torch.device(config.device), name)
            except cuda_graphs.CaptureError as exc:
                if name in dense_baselines.NAMES:
                    raise
                config.notes.append(f"{group.case_id(name)} not timed: {exc}")
    return out


def _traffic(group: Group, module: nn.Module, own: timing.Samples, probe: bandwidth.Bandwidth | None) -> dict[str, Any]:
    """bytes, gbps, ceiling_gbps, limit_frac and bw_probe of a row (all None end to end; the last three without a
    probe)."""
    nbytes = None if group.e2e else traffic.call_bytes(module, group.batch, base.DTYPES[group.dtype].itemsize)
    gbps = None if nbytes is None else nbytes / statistics.median(own.samples_s) / 1e9
    ceiling = None if gbps is None or probe is None else probe.ceiling(nbytes, group.l2)
    return {"bytes": nbytes, "gbps": gbps, "ceiling_gbps": ceiling,
            "limit_frac": None if ceiling is None else gbps / ceiling,
            "bw_probe": None if ceiling is None else probe.record()}


def _row(group: Group, name: str, modules: dict[str, nn.Module], samples: dict[str, timing.Samples],
         dense: list[str], fastest: str) -> dict[str, Any]:
    """The row of ``name``; ``dense`` are the group's dense implementations, ``fastest`` the one of least median."""
    module, own = modules[name], samples[name]
    pct = stats.percentiles(own.samples_s, (50, 90, 99))
    return {
        "suite": NAME,
        "case_id": group.case_id(name),
        "group_id": group.group_id,
        "method": DENSE if name in dense_baselines.NAMES else name,
        "impl": _impl_of(module),
        "case": group.case,
        "e2e": group.e2e,
        "in_features": group.in_features,
        "out_features": group.out_features,
        "sparsity": group.sparsity,
        "batch": group.batch,
        "dtype": group.dtype,
        "device": group.device,
        "threads": group.threads,
        "l2": group.l2,
        "launch": group.launch,
        "nnz": _nnz_of(module),
        "n": len(own.samples_s),
        "n_inner": own.n_inner,
        "p50_s": pct[50],
        "p90_s": pct[90],
        "p99_s": pct[99],
        "dispersion": stats.dispersion(own.samples_s),
        "dense_impl": _impl_of(modules[fastest]),
        "torch_dense_impl": _impl_of(modules[DENSE]),
        "dense_impls": [_impl_of(modules[n]) for n in dense],
        **stats.speedup_columns("speedup_vs_dense", samples[fastest].samples_s, own.samples_s),
        **stats.speedup_columns("speedup_vs_torch_dense", samples[DENSE].samples_s, own.samples_s),
        **stats.speedup_columns("speedup_vs_csr", getattr(samples.get(CSR), "samples_s", None), own.samples_s),
        "samples_s": own.samples_s,
    }


def summary_table(rows: list[dict[str, Any]], device: str) -> str:
    """The readable end-of-run table: one line per row, p50 in µs, speedups with their 95% intervals, GB/s.

    "vs dense" is against the fastest dense implementation of the row's group, named in the "dense" column; "limit"
    is ``limit_frac`` in percent. The l2 column shows where the rows hold more than one cache mode (or on CUDA).
    """
    columns = [
        Column("method", "method"),
        Column("case", "case"),
        Column("sparsity", lambda r: f"{r['sparsity']:g}", ">"),
        Column("batch", "batch", ">"),
    ]
    if device == "cuda" or len({r["l2"] for r in rows}) > 1:
        columns.append(Column("l2", "l2"))
    if len({r.get("launch", "eager") for r in rows}) > 1:
        columns.append(Column("launch", lambda r: r.get("launch", "eager")))
    columns += [
        Column("impl", "impl"),
        Column("n", "n", ">"),
        Column("p50 µs", lambda r: f"{r['p50_s'] * 1e6:.1f}", ">"),
        _ratio_column("vs dense [95% CI]", "speedup_vs_dense"),
        Column("dense", "dense_impl"),
        _ratio_column("vs torch dense [95% CI]", "speedup_vs_torch_dense"),
        _ratio_column("vs CSR [95% CI]", "speedup_vs_csr"),
        Column("GB/s", lambda r: "–" if r.get("gbps") is None else f"{r['gbps']:.3g}", ">"),
        Column("limit", lambda r: "–" if r.get("limit_frac") is None else f"{r['limit_frac']:.0%}", ">"),
    ]
    return format_table(rows, columns)


def _ratio_column(header: str, column: str) -> Column:
    return Column(header, lambda r: fmt_ratio_ci(r[column], r[f"{column}_lo"], r[f"{column}_hi"]), ">")


def _check_e2e_speed(config: Config, impls: dict[str, str]) -> None:
    """Leave the end-to-end case out of --quick (with a note) where sparse layers would run on the slow reference."""
    slow = [m for m in config.methods if impls.get(m) == "reference"]
    if not (config.e2e and slow):
        return
    if config.quick:
        config.e2e = False
        config.notes.append(
            f"end-to-end ViT-B/16 left out of --quick: {', '.join(slow)} run on the pure-torch reference kernel here "
            "(seconds per forward); run without --quick to time it anyway")
    else:
        warnings.warn(f"end to end, {', '.join(slow)} run on the pure-torch reference kernel (seconds per ViT-B/16 "
                      "forward); --no-e2e leaves that case out", stacklevel=2)


def _probe_bandwidth(config: Config) -> bandwidth.Bandwidth:
    """The run's bandwidth probe (``dstbench.bandwidth``), with one line on stderr."""
    bw = bandwidth.probe(torch.device(config.device), config.threads, evict_factor=config.evict_factor)

    def by_size(gbps: Sequence[float]) -> str:
        return ", ".join(f"{size / 2**20:g} MiB {value:.3g}" for size, value in zip(bw.sizes, gbps))

    print(f"dstbench: read bandwidth (GB/s) by working set: {by_size(bw.gbps)}; cold: {by_size(bw.cold_gbps or ())}; "
          f"last-level cache {bw.llc_bytes / 2**20:g} MiB ({bw.llc_source})", file=sys.stderr)
    return bw


def run(args: argparse.Namespace) -> int:
    """``dstbench run --suite inference``: validate, open the run folder, time every pending group, print the table."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    records.check_folder(Path(config.out), NAME)
    _check_e2e_speed(config, probe(config))
    with records.RunStore(Path(config.out), NAME, asdict(config), threads=config.threads, may_change=RESUMABLE,
                          new_segment=args.new_segment) as store:
        groups = config.groups()
        pending = [g for g in groups if not all(g.case_id(name) in store.done for name in config.names(g))]
        if len(pending) < len(groups):
            print(f"dstbench: resuming {config.out}: {len(groups) - len(pending)} of {len(groups)} case groups already "
                  "recorded", file=sys.stderr)
        workloads = Workloads(config)
        start = time.perf_counter()
        probe_bw = _probe_bandwidth(config) if any(not g.e2e for g in pending) else None
        total_blocks = sum(len(config.names(g)) * config.rounds_of(g) for g in pending)
        with tqdm(total=total_blocks, unit="block", file=sys.stderr, desc=NAME) as bar:
            for group in pending:
                bar.set_postfix_str(f"{group.case} s={group.sparsity:g} b={group.batch} l2={group.l2} {group.launch}")
                try:
                    rows = measure_group(group, workloads, config.names(group), config,
                                         on_block=lambda: bar.update(1), probe=probe_bw)
                except cuda_graphs.CaptureError as exc:  # the other groups still run; the note says which is missing
                    config.notes.append(f"{group.group_id} not timed: {exc}")
                    bar.update(len(config.names(group)) * config.rounds_of(group))
                    continue
                store.append_many(row for row in rows if row["case_id"] not in store.done)
        store.finish()
    wanted = {g.case_id(name): None for g in groups for name in config.names(g)}
    by_id = {row["case_id"]: row for row in store.rows}
    rows = [by_id[case_id] for case_id in wanted if case_id in by_id]
    print(summary_table(rows, config.device))
    rtts = core_latency.probed_range(rows)
    if rtts:
        print(f"core round trip between the kernels' threads, probed around each group: {rtts[0]:.0f}-"
              f"{rtts[1]:.0f} ns (core_rtt_ns)")
    for line in config.notes:
        print(f"note: {line}")
    print(f"{len(pending)} case groups timed in {time.perf_counter() - start:.1f} s; records in {config.out}")
    return 0


SUITE = register_suite(NAME)(base.Suite(
    NAME, "inference latency and speedups", add_arguments, run,
    required=("method", "impl", "case", "sparsity", "batch", "p50_s", "samples_s", "speedup_vs_dense"),
    compare=SuiteSpec(
        key=("case", "sparsity", "batch", "dtype", "device", "l2", "launch"),
        defaults={"launch": "eager"},
        setup=("in_features", "out_features", "threads", "evict_bytes"),
        ratios={**base.dense_ratios(DENSE), "speedup_vs_csr": Ratio(CSR, None, "vs CSR")}),
    report=reporting.inference_section,
    references=(base.Reference(DENSE, "dense"), base.Reference(CSR, "CSR", same_sparsity=True))))
