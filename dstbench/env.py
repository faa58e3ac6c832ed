"""Capture of the environment a run was measured in (asv's machine_info / commit_info)."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: /proc/cpuinfo fields that name a CPU's generation: x86's family and model numbers, Arm's implementer and part
_CPU_ID_FIELDS = (("cpu family", "family"), ("model", "model"), ("CPU implementer", "implementer"),
                  ("CPU part", "part"))


def cpu_id(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's generation as /proc/cpuinfo numbers it: 'family 25, model 17' (x86: AMD Zen 4), or 'implementer
    0x41, part 0xd0c' (Arm); None where the file is missing or names neither.

    A virtual machine may show a generic model name ('AMD EPYC' on Zen 4 and on Zen 5 alike), and speedups move
    between generations (MKL's batch-1 GEMV, a kernel's load ports), so the machine class carries these numbers.
    """
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return None
    pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in pairs}
    parts = [f"{label} {fields[key]}" for key, label in _CPU_ID_FIELDS if fields.get(key)]
    return ", ".join(parts) or None


def cupy_version() -> str | None:
    try:
        import cupy  # noqa: PLC0415
    except Exception:  # noqa: BLE001  (any import failure means "no CuPy")
        return None
    return cupy.__version__


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


@functools.cache
def commit() -> dict[str, Any]:
    """The git sha of the checkout dstbench runs from and whether tracked files differ from it.

    Read once per process, so that the records of one process name one
    commit even if the checkout changes while it runs.
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": _git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None}


#: the ``dstbench`` command being run in this process (set by the CLI around a suite run), else None
_command: list[str] | None = None


@contextlib.contextmanager
def running(command: Sequence[str]) -> Iterator[None]:
    """Record ``command`` (``dstbench``'s arguments, such as ``["run", "--suite", ...]``) as the argv of the runs
    made inside: a suite run in-process (``dstbench baseline``, tests) then records its own command line, not the
    process's."""
    global _command
    previous, _command = _command, list(command)
    try:
        yield
    finally:
        _command = previous


def capture(threads: int | None = None) -> dict[str, Any]:
    """A JSON-ready description of this machine, software and commit."""
    return {
        **commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cupy": cupy_version(),
        "cpu_model": cpu_model(),
        "cpu_id": cpu_id(),
        "cpu_count": os.cpu_count(),
        "gpu_name": gpu_name(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "argv": sys.argv if _command is None else [sys.argv[0], *_command],
    }


def machine_class(env: dict[str, Any]) -> str:
    """What must match for two runs' speedups to be comparable: the GPU name, or the CPU model with its generation
    (``cpu_id``) where the run recorded one: 'AMD EPYC (family 25, model 17)'."""
    if env.get("gpu_name"):
        return env["gpu_name"]
    model = env.get("cpu_model") or "unknown"
    return f"{model} ({env['cpu_id']})" if env.get("cpu_id") else model
