"""One command that checks dstbench on a GPU machine and measures the papers' headline settings.

On the GPU machine (torch with CUDA and CuPy already installed)::

    python3 -m pip install -q -e . --no-deps --no-build-isolation
    python3 -m dstbench.gpu_check --out results/gpu-check

Steps, each a subprocess with its own time budget (a step that runs past it
is stopped, recorded as ``timeout``, and the check goes on); the budgets add
up to ``TOTAL_BUDGET_S`` (8.5 minutes); ``--steps a,b`` runs only those:

1. ``gpu-tests``: ``pytest -m gpu``, every CUDA kernel against the reference,
   forward and backward, in float32/float16/bfloat16 (and float64) on edge
   shapes and at each batch tile, CUDA-graph capture and replay, the
   inference suite in both launch modes, and training steps of every
   registered method on CUDA. torch's cached GPU memory is filled with NaN
   before each test.
2. ``sanitizer-memcheck`` and ``sanitizer-racecheck``: the small-shape GPU
   tests (``-m "gpu and small"``) under ``compute-sanitizer``; memcheck with
   torch's caching allocator off, so every tensor has exact bounds. A machine
   that refuses the tool (not installed, "Device not supported") is recorded
   as ``refused`` and the check goes on.
3. ``inference-layers``: the inference suite on the ViT-B/16 linear shapes at
   90% sparsity, batch 1, 197 and 256, both L2 modes (warm and flushed) and
   both launch modes (eager, and CUDA-graph replay).
4. ``kernel-sweep``: every batch tile of the staged / batched forwards against
   the tile the launch rule picks (batch 197 and 256), and the values-gradient
   kernels against cuBLAS's dense product and a gather (batch 64 and 256), on
   the same shapes (``kernels.cuda.kernel_sweep``; ``kernels.md``).
5. ``inference-e2e``: torchvision's ViT-B/16 end to end at batch 1, 90%, both
   launch modes.
6. ``training``: the training suite on CUDA (MLP and small ViT, 90%).

The suites time dense, RigL's CSR (the baselines) and SRigL and DynaDiag;
static and SET run the same CSR layers as RigL and are left out for time.

``--out DIR`` receives the suites' run folders (``inference-layers/``,
``inference-e2e/``, ``training/``) and four files: ``summary.md``,
``summary.json`` (steps, statuses, times, and the headline ratios against the
papers' figures), ``check.log`` (every step's full output) and
``gpu-tests.xml`` (JUnit). Rerunning into the same DIR resumes the suites'
run folders; use a fresh DIR after changing code. Without a CUDA device (or
without CuPy) the command stops at once with one line and exit code 2;
``--dry-run`` prints the plan without running anything. Exit code 0 when
every step passed (a refused sanitizer included), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent  # the repository: the steps run here, on its tests/
SMALL_TESTS = "gpu and small"
#: the suites' methods besides their baselines (dense, and RigL's CSR; static and SET run the same CSR layers)
METHODS = ("--methods", "srigl,dynadiag")
#: the headline figures of the papers at 90% sparsity on ViT-B/16 (issue 12): (what, method, column, target)
TARGETS = (
    ("DynaDiag end to end, batch 1, vs CSR", "dynadiag", "speedup_vs_csr", 3.13),
    ("DynaDiag end to end, batch 1, vs dense", "dynadiag", "speedup_vs_dense", 1.5),
    ("SRigL condensed layer, batch 256, vs dense", "srigl", "speedup_vs_dense", 1.7),
    ("SRigL condensed layer, batch 256, vs CSR", "srigl", "speedup_vs_csr", 10.0),
    ("DynaDiag training step vs RigL", "dynadiag", "speedup_vs_rigl", 1.59),
)
#: memcheck ends with "ERROR SUMMARY: N errors", racecheck with "RACECHECK SUMMARY: H hazards displayed (N errors, ..."
_SANITIZER_SUMMARY = re.compile(r"(?:ERROR SUMMARY: |RACECHECK SUMMARY: \d+ hazards? displayed \()(\d+) error")
#: pytest's last line, framed by "=" or (with -q and no failure) bare
_PYTEST_SUMMARY = re.compile(r"^=* ?(\d+ (?:passed|failed|errors?|skipped|deselected)\b.* in [\d.]+s.*?)(?: =+)?$",
                             re.MULTILINE)


@dataclass(frozen=True)
class Step:
    """One step of the check.

    Attributes:
        name: short id; a suite step writes its run folder DIR/name.
        argv: the command.
        budget_s: wall-clock seconds before the step is stopped.
        env: variables added to the environment.
        sanitizer: a compute-sanitizer step (a refusal is not a failure).
    """

    name: str
    argv: tuple[str, ...]
    budget_s: int
    env: dict[str, str] = field(default_factory=dict)
    sanitizer: bool = False

    @property
    def command(self) -> str:
        prefix = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"{prefix} {shlex.join(self.argv)}".strip()


@dataclass
class Result:
    """What one step did: status is passed, failed, timeout or refused; seconds of wall time."""

    name: str
    status: str
    seconds: float
    returncode: int | None
    detail: str


def plan(out: Path, python: str = sys.executable) -> list[Step]:
    """The steps of the check, writing under ``out`` (the --out folder, absolute)."""
    pytest = (python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")

    def sanitizer(tool: str, env: dict[str, str]) -> Step:
        return Step(f"sanitizer-{tool}", ("compute-sanitizer", "--tool", tool, *pytest, "-m", SMALL_TESTS), 45,
                    env, sanitizer=True)

    def suite(name: str, suite_name: str, budget_s: int, *options: str) -> Step:
        """A suite run on CUDA at 90% into the run folder out/name."""
        argv = (python, "-m", "dstbench", "run", "--suite", suite_name, "--device", "cuda", "--sparsity", "0.9",
                *options, "--out", str(out / name))
        return Step(name, argv, budget_s, {"TQDM_MININTERVAL": "10"})  # a progress line per 10 s in check.log

    return [
        Step("gpu-tests", (*pytest, "-m", "gpu", f"--junitxml={out / 'gpu-tests.xml'}"), 100),
        sanitizer("memcheck", {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}),
        sanitizer("racecheck", {}),
        suite("inference-layers", "inference", 150, "--cases", "b16-qkv,b16-proj,b16-fc1,b16-fc2",
              "--batch", "1,197,256", "--no-e2e", *METHODS, "--rounds", "5", "--cold-rounds", "5",
              "--min-time", "0.03"),  # as many cold rounds as warm: the budget was sized for that
        Step("kernel-sweep", (python, "-m", "dstbench.kernels.cuda.kernel_sweep", "--out", str(out / "kernels.md")),
             45),
        suite("inference-e2e", "inference", 55, "--cases", "", "--batch", "1", *METHODS, "--rounds", "6",
              "--min-time", "0.1"),
        suite("training", "training", 80, "--batch-size", "64", *METHODS, "--rounds", "5", "--min-time", "0.2",
              "--dense", "eager"),
    ]


TOTAL_BUDGET_S = sum(step.budget_s for step in plan(Path("DIR")))


def no_gpu_reason() -> str | None:
    """Why the check cannot run on this machine (no CUDA device, no CuPy), or None."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine"
    from dstbench.kernels.cuda import loader

    return loader.cupy_missing_reason()


def classify(step: Step, returncode: int | None, output: str) -> tuple[str, str]:
    """(status, detail) of a finished step from its exit code (None: stopped at its budget) and output."""
    if returncode is None:
        return "timeout", f"stopped after its budget of {step.budget_s} s"
    tests = _PYTEST_SUMMARY.findall(output)
    detail = tests[-1] if tests else ""
    if step.sanitizer:
        errors = _SANITIZER_SUMMARY.findall(output)
        if not errors:
            lines = [line for line in output.splitlines() if line.strip()]
            return "refused", lines[-1][:200] if lines else f"exit code {returncode}"
        detail = f"{errors[-1]} sanitizer errors; {detail}"
        return ("passed" if returncode == 0 and errors[-1] == "0" else "failed"), detail
    return ("passed" if returncode == 0 else "failed"), detail or f"exit code {returncode}"


def run_step(step: Step, log: Any) -> Result:
    """Run ``step``, appending its output to ``log``; stop its process group at the budget."""
    log.write(f"\n===== {step.name}: {step.command}\n")
    log.flush()
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env={**os.environ, **step.env}, start_new_session=True)
    except FileNotFoundError as exc:
        log.write(f"{exc}\n")
        status = "refused" if step.sanitizer else "failed"
        return Result(step.name, status, 0.0, None, f"{step.argv[0]} not found")
    try:
        output, _ = proc.communicate(timeout=step.budget_s)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        returncode = None
    log.write(output)
    log.flush()
    status, detail = classify(step, returncode, output)
    return Result(step.name, status, time.perf_counter() - start, returncode, detail)


def _rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / "rows.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def headline(out: Path) -> list[dict[str, Any]]:
    """The measured ratios next to the papers' figures, one entry per matching row of the run folders."""
    sources = {
        "DynaDiag end to end": [r for r in _rows(out / "inference-e2e") if r.get("e2e")],
        "SRigL condensed layer": [r for r in _rows(out / "inference-layers") if r.get("batch") == 256],
        "DynaDiag training step": _rows(out / "training"),
    }
    entries = []
    for what, method, column, target in TARGETS:
        rows = next(rows for prefix, rows in sources.items() if what.startswith(prefix))
        for row in (r for r in rows if r.get("method") == method and r.get(column) is not None):
            where = row.get("model") or row.get("case")
            if row.get("l2"):
                where = f"{where} l2={row['l2']}"
            if row.get("launch"):
                where = f"{where} {row['launch']}"
            entries.append({"what": what, "where": where, "target": target, "measured": row[column],
                            "lo": row.get(f"{column}_lo"), "hi": row.get(f"{column}_hi"),
                            "met": row[column] >= target})
    return entries


def summary_markdown(results: Sequence[Result], entries: Sequence[dict[str, Any]]) -> str:
    """summary.md: the steps, then the headline ratios against their targets."""
    lines = ["# dstbench GPU check", "", "| step | status | seconds | detail |", "|---|---|---:|---|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.detail} |" for r in results]
    lines += ["", "## Headline ratios at 90% sparsity (ViT-B/16 shapes)", "",
              "| figure | case | target | measured [95% CI] | met |", "|---|---|---:|---:|---|"]
    for e in entries:
        ci = f" [{e['lo']:.2f}, {e['hi']:.2f}]" if e["lo"] is not None and e["hi"] is not None else ""
        lines.append(f"| {e['what']} | {e['where']} | {e['target']:.2f}x | {e['measured']:.2f}x{ci} | "
                     f"{'yes' if e['met'] else 'no'} |")
    if not entries:
        lines.append("| (no suite rows recorded) | | | | |")
    lines += ["", "Keep the layer rows as the GPU baseline (once their step passed): `dstbench baseline update --out "
              "results/baselines/gpu-h200 --from DIR/inference-layers`, DIR being this folder."]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, results: Sequence[Result], steps: Sequence[Step]) -> str:
    """Write summary.md and summary.json in ``out``; returns the Markdown."""
    entries = headline(out)
    markdown = summary_markdown(results, entries)
    (out / "summary.md").write_text(markdown)
    data = {"total_budget_s": TOTAL_BUDGET_S,
            "steps": [{**asdict(r), "command": s.command, "budget_s": s.budget_s} for r, s in zip(results, steps)],
            "headline": entries}
    (out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    return markdown


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dstbench.gpu_check --out DIR [--dry-run]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m dstbench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the run folders and the summary")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their budgets, run nothing")
    parser.add_argument("--steps", help="comma-separated step names to run (default: all, in order)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    steps = plan(out)
    if args.steps is not None:
        names = [name.strip() for name in args.steps.split(",") if name.strip()]
        unknown = [name for name in names if name not in {step.name for step in steps}]
        if unknown or not names:
            print(f"dstbench gpu_check: --steps takes names among {', '.join(step.name for step in steps)}, "
                  f"got {args.steps!r}", file=sys.stderr)
            return 2
        steps = [step for step in steps if step.name in names]
    if args.dry_run:
        for i, step in enumerate(steps, 1):
            print(f"[{i}/{len(steps)}] {step.name} (budget {step.budget_s} s): {step.command}")
        print(f"total budget {sum(step.budget_s for step in steps)} s")
        return 0
    reason = no_gpu_reason()
    if reason:
        print(f"dstbench gpu_check: {reason}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with open(out / "check.log", "a") as log:
        for i, step in enumerate(steps, 1):
            print(f"[{i}/{len(steps)}] {step.name} (budget {step.budget_s} s) ...", flush=True)
            result = run_step(step, log)
            print(f"[{i}/{len(steps)}] {step.name}: {result.status} in {result.seconds:.1f} s  {result.detail}",
                  flush=True)
            results.append(result)
    print(write_summary(out, results, steps))
    print(f"summary in {out / 'summary.md'}; full output in {out / 'check.log'}")
    return 0 if all(r.status in ("passed", "refused") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
