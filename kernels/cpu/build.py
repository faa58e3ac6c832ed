"""Compile the CPU kernels with the system C++ compiler, once per machine, and load them.

The sources (plain C++17 + OpenMP, no torch headers) form six translation
units, ``common.cpp`` followed by ``diagonal.cpp``, ``condensed.cpp``,
``attention.cpp``, ``lanes.cpp`` or ``diag_pack.cpp``, and ``core_probe.cpp``
alone (``UNITS``), compiled in parallel and linked into one shared library in the
cache folder ``$DSTBENCH_CACHE/kernels`` (default ``~/.cache/dstbench/kernels``).
The file name carries a hash of the sources, the flags, the compiler and
its version, and the CPU's feature flags, so an edit, a new compiler or a
new machine rebuilds while everything else is a cache hit. The build
writes to a temporary file and ``os.replace``s it into place, so processes
that build at the same time never load a half-written library.

Environment: ``CXX`` picks the compiler (default: the first of c++, g++,
clang++ on PATH); ``DSTBENCH_CACHE`` moves the cache.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

UNITS = (("common.cpp", "diagonal.cpp"), ("common.cpp", "condensed.cpp"), ("common.cpp", "attention.cpp"),
         ("common.cpp", "rowwise.cpp"),
         ("common.cpp", "lanes.cpp"), ("common.cpp", "diag_pack.cpp"), ("core_probe.cpp",))
FLAGS = ("-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-fPIC")
_SOURCE_DIR = Path(__file__).resolve().parent
_COMPILE_TIMEOUT_S = 300
_ERROR_TAIL_CHARS = 1500


class BuildError(RuntimeError):
    """The kernels could not be compiled or loaded; the message says why."""


def cache_dir() -> Path:
    """Folder holding the compiled libraries."""
    root = os.environ.get("DSTBENCH_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "dstbench"
    return base / "kernels"


def compiler() -> list[str]:
    """The compiler command: ``$CXX`` split like a shell would, else c++, g++ or clang++ from PATH."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    raise BuildError("no C++ compiler found (install g++ or clang++, or point CXX at one)")


def arch_flags() -> tuple[str, ...]:
    """Tune for this CPU (enables AVX2 / AVX-512 where present)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686"):
        return ("-march=native",)
    if machine in ("aarch64", "arm64"):
        return ("-mcpu=native",)
    return ()


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    return line.strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler_version(cmd: list[str]) -> str:
    try:
        done = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"cannot run the C++ compiler {shlex.join(cmd)!r}: {exc}") from None
    if done.returncode != 0:
        raise BuildError(f"the C++ compiler {shlex.join(cmd)!r} does not run (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-_ERROR_TAIL_CHARS:]}")
    return done.stdout


def unit_source(files: tuple[str, ...]) -> str:
    """One translation unit: the files joined, with #line directives pointing at the originals."""
    parts = []
    for name in files:
        text = (_SOURCE_DIR / name).read_text(encoding="utf-8")
        parts.append(f'#line 1 "{_SOURCE_DIR / name}"\n{text}')
    return "\n".join(parts)


def library_path() -> tuple[Path, list[str]]:
    """Where the library for the current sources, compiler and CPU lives, and the compile command.

    Raises:
        BuildError: no usable compiler.
    """
    cmd = compiler()
    flags = [*FLAGS, *arch_flags()]
    key = hashlib.sha256()
    for part in (*(unit_source(u) for u in UNITS), shlex.join(cmd), " ".join(flags), _compiler_version(cmd), _cpu_signature()):
        key.update(part.encode())
        key.update(b"\0")
    return cache_dir() / f"dstbench_cpu_{key.hexdigest()[:20]}.so", [*cmd, *flags]


def _failure(what: str, command: list[str], done: subprocess.CompletedProcess) -> BuildError:
    tail = (done.stderr or done.stdout).strip()[-_ERROR_TAIL_CHARS:]
    return BuildError(f"{what} the CPU kernels failed ({shlex.join(command[:1])} exit {done.returncode}): "
                      f"{tail or 'no compiler output'}")


def build(target: Path, command: list[str]) -> None:
    """Compile the units in parallel and link them into ``target`` atomically (temporary file, then os.replace)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dstbench_build_") as tmp:
        jobs = []
        try:
            for n, unit in enumerate(UNITS):
                src, obj = Path(tmp) / f"unit{n}.cpp", Path(tmp) / f"unit{n}.o"
                src.write_text(unit_source(unit), encoding="utf-8")
                jobs.append((obj, subprocess.Popen([*command, "-c", str(src), "-o", str(obj)], stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE, text=True)))
            for obj, job in jobs:
                out, err = job.communicate(timeout=_COMPILE_TIMEOUT_S)
                if job.returncode != 0:
                    raise _failure("compiling", command, subprocess.CompletedProcess(job.args, job.returncode, out, err))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"compiling the CPU kernels failed: {exc}") from None
        finally:
            for _, job in jobs:
                if job.poll() is None:
                    job.kill()
                    job.wait()
        fd, partial = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            try:
                done = subprocess.run([*command, "-shared", *(str(obj) for obj, _ in jobs), "-o", partial],
                                      capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BuildError(f"linking the CPU kernels failed: {exc}") from None
            if done.returncode != 0:
                raise _failure("linking", command, done)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


def ensure_built() -> tuple[Path, bool]:
    """Path of the compiled library, building it if needed; the flag is True on a cache hit.

    Raises:
        BuildError: no compiler, or the build failed (the message carries the compiler's error tail).
    """
    target, command = library_path()
    if target.exists():
        return target, True
    build(target, command)
    return target, False
