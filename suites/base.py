"""What every suite provides to the CLI, and the options they share."""

from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from dstbench.compare import Ratio, SuiteSpec
from dstbench.errors import UserError, check_sparsity


@dataclass(frozen=True)
class Reference:
    """A method a suite's report measures the others against.

    Attributes:
        method: its registered name.
        label: how tables name it ("dense", "RigL").
        same_sparsity: compared at each other method's own sparsity (RigL), or as recorded, at sparsity 0 (dense).
    """

    method: str
    label: str
    same_sparsity: bool = False


@dataclass(frozen=True)
class Suite:
    """A suite describes itself to the harness, which names no suite.

    Attributes:
        name, help: how ``dstbench run --suite`` and ``dstbench list`` show it.
        add_arguments: adds its options to ``dstbench run``.
        run: runs it into a RunStore; returns the exit code.
        required: the fields every row of its records carries (``runs.load_run`` checks them).
        compare: how ``dstbench compare`` matches its rows and which speedups it checks; None when it records none.
        report: writes its section of ``dstbench report`` (``report(Report, rows DataFrame, references)``); None
            for none.
        references: the methods its report and compare measure the others against; the first is the baseline
            that figures draw as their 1x line or level, that tables leave out of the sparse rows and whose own
            rows compare does not judge.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    required: tuple[str, ...] = ()
    compare: SuiteSpec | None = None
    report: Callable[[Any, Any, tuple[Reference, ...]], None] | None = None
    references: tuple[Reference, ...] = ()

    def __post_init__(self) -> None:
        if (self.report is not None or self.compare is not None) and not self.references:
            raise ValueError(f"suite {self.name!r} declares a report section or speedups but no references (its "
                             "baseline first)")


def dense_ratios(dense: str) -> dict[str, Ratio]:
    """The speedups over a baseline timed as several implementations (dense libraries, dense training steps):
    against the fastest of a case, named in a row's ``dense_impl``, and against torch's own, ``torch_dense_impl``."""
    return {"speedup_vs_dense": Ratio(dense, "dense_impl", "vs dense"),
            "speedup_vs_torch_dense": Ratio(dense, "torch_dense_impl", "vs torch dense")}


def parse_list(text: str, kind: type, what: str) -> list:
    """'0.8,0.9' -> [0.8, 0.9]; UserError naming ``what`` if an item does not parse."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"--{what} takes a comma-separated list of {kind.__name__}, got {text!r}") from None


def sparsities(text: str) -> list[float]:
    """Parse and check --sparsity."""
    return [check_sparsity(s) for s in parse_list(text, float, "sparsity")]


def batches(text: str) -> list[int]:
    """Parse and check --batch (every batch >= 1)."""
    values = parse_list(text, int, "batch")
    bad = [b for b in values if b <= 0]
    if bad:
        raise UserError(f"--batch must be positive, got {bad[0]}")
    return values


def rounds(value: int, option: str) -> int:
    """Check a rounds option (``--rounds``, ``--cold-rounds``, ...): at least 2; returns it."""
    if value < 2:
        raise UserError(f"{option} must be >= 2 (the confidence intervals need several samples), got {value}")
    return value


def min_time(value: float, option: str) -> float:
    """Check a block duration option (``--min-time``, ...): a positive number of seconds; returns it as a float."""
    if not value > 0:
        raise UserError(f"{option} must be a positive number of seconds, got {value}")
    return float(value)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (default: all cores) and return it.

    More threads than cores is allowed, with a warning: it oversubscribes and
    makes timings noisy.
    """
    cores = os.cpu_count() or 1
    if threads is None:
        threads = cores
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if threads > cores:
        warnings.warn(f"--threads {threads} is more than the {cores} cores here; timings will be noisy", stacklevel=2)
    torch.set_num_threads(threads)
    return threads


def resolve_device(name: str) -> torch.device:
    """Check --device; 'cuda' without a GPU is a UserError."""
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda needs a CUDA GPU and none is visible; use --device cpu")
    return torch.device(name)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """Check --dtype."""
    if name not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def add_out_arguments(parser: argparse.ArgumentParser, suite: str) -> None:
    """--out and --new-segment, the run-folder options of every suite (``dstbench.records``)."""
    parser.add_argument("--out", help=f"run folder (default results/{suite}-<timestamp>); rerun into it to resume")
    parser.add_argument("--new-segment", action="store_true",
                        help="continue the run in --out although its options, commit or environment differ, as a new "
                             "segment of it that records its own (its rows name their segment)")
