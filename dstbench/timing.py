"""Latency measurement: warm-up, per-function calibration, then interleaved rounds of timed blocks.

Several functions (for example one per sparse format of the same layer) are
timed side by side. Each gets its own block size ``n_inner`` (calls per
block) so that one block lasts at least ``min_time`` seconds; then, for R
rounds, one block of every function is timed in turn, with the order rotated
each round. Drift of the machine (frequency, other processes) hits every
function alike, and sample i of every function comes from round i, so
per-round paired ratios are meaningful.

Two cache modes (the ``l2`` of the records), timed the same way:

* ``"warm"``: blocks are timed with ``torch.utils.benchmark.Timer`` at an
  explicit thread count. ``Timer.timeit(n)`` first makes ``max(2, n // 100)``
  untimed calls, so each block starts with the function's data back in cache
  after the previous function ran, and consecutive calls find it there. On
  CUDA the timer synchronizes the device.
* ``"cold"``: every call starts with its data evicted from the caches
  (``Evictor``), and only the call is timed. On CUDA: a buffer twice the
  size of the L2 is overwritten before each call, timed with CUDA events.
  On the CPU: a buffer of ``evict_factor`` (default ``EVICT_FACTOR``) times
  the last-level cache (read from the machine, ``llc_bytes``) is read by the
  run's threads; the process
  waits until no other of its threads is runnable
  (``threadpools.wait_quiet``); then the function's *primer*, if given, is
  called (the same code on other data: a twin of the layer), and the call
  is timed with ``time.perf_counter``. A CPU eviction empties the caches of
  everything, the interpreter's and torch's code and data included, which
  costs a trivial torch op ~0.15 ms on the next call; the primer brings
  that back (and wakes the thread pools), so that the call pays for its own
  data coming from memory, page walks included, as a layer of a model whose
  weights exceed the caches does, and not for a cold interpreter. An
  eviction costs far more than a call (~0.1 s for a 720 MB buffer), so a cold
  block (CPU or CUDA) is calibrated on its wall time, evictions included: it
  lasts ``min_time`` like a warm block, and holds fewer calls.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from dstbench import threadpools

# torch.utils.benchmark imports cpp_extension, which logs "No CUDA runtime is found"
# on every CPU-only machine; that says nothing about the timings.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils.benchmark import Timer  # noqa: E402
from torch.utils.benchmark.utils.common import set_torch_threads  # noqa: E402

L2_MODES = ("warm", "cold")
#: upper bound on calls per block, for functions too fast to reach min_time
MAX_CALLS = 1_000_000
#: a CPU eviction reads this many times the last-level cache: a margin over LLC + private caches and over
#: replacement policies that keep some old lines through one scan of exactly the cache's size
EVICT_FACTOR = 1.5
#: the last-level cache assumed where the machine does not report one (neither sysfs nor sysconf)
FALLBACK_LLC_BYTES = 256 * 2**20
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")

BlockTimer = Callable[[int], float]


@dataclass
class Samples:
    """The timing of one function.

    Attributes:
        n_inner: calls per timed block.
        samples_s: per-call seconds (block time / n_inner), one per round, in round order.
    """

    n_inner: int
    samples_s: list[float] = field(default_factory=list)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_block_timer(fn: Callable[[], object], threads: int) -> BlockTimer:
    """A function ``n -> seconds`` that times n calls of ``fn`` with torch.utils.benchmark.Timer."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)

    def block(n: int) -> float:
        return timer.timeit(n).raw_times[0]

    return block


def l2_bytes(device: torch.device) -> int:
    """The L2 cache size of a CUDA device, in bytes."""
    return int(torch.cuda.get_device_properties(device).L2_cache_size)


def _size(text: str) -> int:
    """sysfs cache size '2048K' / '480M' / '1024' -> bytes."""
    text = text.strip()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
    return int(text.rstrip("KkMmGg")) * scale


def llc_bytes(device: torch.device = torch.device("cpu")) -> tuple[int, str]:
    """The last-level cache of ``device`` in bytes, and where the number comes from.

    CUDA: the device's L2. CPU: the highest cache level of cpu0 in sysfs,
    else glibc's sysconf (L3, then L2), else ``FALLBACK_LLC_BYTES``. On a
    shared host this is the whole socket's cache, of which a process may
    hold much less.
    """
    if device.type == "cuda":
        return l2_bytes(device), "cuda"
    levels = {}
    for index in sorted(CPU_CACHES.glob("index*")):
        try:
            if (index / "type").read_text().strip() != "Instruction":
                levels[int((index / "level").read_text())] = _size((index / "size").read_text())
        except (OSError, ValueError):
            continue
    if levels:
        return levels[max(levels)], "sysfs"
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError):
            continue
        if size > 0:
            return int(size), "sysconf"
    return FALLBACK_LLC_BYTES, "fallback"


def evict_bytes(device: torch.device, factor: float = EVICT_FACTOR) -> int:
    """The size of ``device``'s eviction buffer in bytes: ``factor`` x ``llc_bytes`` on the CPU, twice the L2 on
    CUDA (``factor`` does not apply there)."""
    return 4 * math.ceil((2 if device.type == "cuda" else factor) * llc_bytes(device)[0] / 4)


class Evictor:
    """Empties the caches of ``device`` between timed calls by touching a buffer larger than its last-level cache.

    CPU: ``buffer`` (float32, ``nbytes``; ``evictor`` sizes it by ``evict_bytes``) is filled
    once (pages never written would all map the kernel's one zero page, and
    reading them would read from cache); a call reads it all on the calling
    thread count, then waits for the process's other threads to go quiet.
    CUDA: a call overwrites it.
    """

    def __init__(self, device: torch.device, nbytes: int) -> None:
        self.device = device
        self.buffer = torch.ones(math.ceil(nbytes / 4), dtype=torch.float32, device=device)

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def __call__(self) -> None:
        if self.device.type == "cuda":
            self.buffer.zero_()
        else:
            self.buffer.sum()
            threadpools.wait_quiet()


def evictor(device: torch.device, factor: float = EVICT_FACTOR) -> Evictor:
    """The process's one ``Evictor`` of ``device`` per buffer size (its buffer is allocated once)."""
    return _evictor(device, evict_bytes(device, factor))


@functools.lru_cache(maxsize=None)
def _evictor(device: torch.device, nbytes: int) -> Evictor:
    return Evictor(device, nbytes)


class ColdBlockTimer:
    """What the cold block timers share: ``fn``, the thread count, the device's evictor, and ``wall(n)``, which
    runs a block and returns its wall time, evictions included; ``interleaved`` calibrates the calls per cold
    block on it, since an eviction takes longer than a small call. A subclass's ``__call__(n)`` times the calls
    alone and sets ``last_wall_s``."""

    def __init__(self, fn: Callable[[], object], threads: int, device: torch.device,
                 evict_factor: float = EVICT_FACTOR) -> None:
        self.fn, self.threads, self.device = fn, threads, device
        self.evict = evictor(device, evict_factor)
        self.last_wall_s = 0.0

    def wall(self, n: int) -> float:
        self(n)
        return self.last_wall_s


class CUDAColdBlockTimer(ColdBlockTimer):
    """``n -> seconds``: the summed CUDA-event time of n calls, each after an L2 flush (zeroing a buffer of twice
    the L2 size), which is not part of the time."""

    def __call__(self, n: int) -> float:
        begin = time.perf_counter()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        with set_torch_threads(self.threads):
            for start, end in zip(starts, ends):
                self.evict()
                start.record()
                self.fn()
                end.record()
            torch.cuda.synchronize(self.device)
        self.last_wall_s = time.perf_counter() - begin
        return sum(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3


class CPUColdBlockTimer(ColdBlockTimer):
    """``n -> seconds``: the summed time of n calls of ``fn``, each after an eviction (``Evictor``) and a call of
    ``primer`` (if given), neither of them timed."""

    def __init__(self, fn: Callable[[], object], threads: int, device: torch.device,
                 primer: Callable[[], object] | None = None, evict_factor: float = EVICT_FACTOR) -> None:
        super().__init__(fn, threads, device, evict_factor)
        self.primer = primer

    def __call__(self, n: int) -> float:
        total = 0.0
        begin = time.perf_counter()
        with set_torch_threads(self.threads):
            for _ in range(n):
                self.evict()
                if self.primer is not None:
                    self.primer()
                start = time.perf_counter()
                self.fn()
                total += time.perf_counter() - start
        self.last_wall_s = time.perf_counter() - begin
        return total


def block_timer(fn: Callable[[], object], threads: int, device: torch.device, l2: str = "warm",
                primer: Callable[[], object] | None = None, evict_factor: float = EVICT_FACTOR) -> BlockTimer:
    """The block timer of cache mode ``l2`` ("warm" or "cold", see the module docstring) on ``device``.

    ``primer`` is called before each cold call on the CPU (an L2 flush on CUDA leaves the host's code warm);
    ``evict_factor`` sizes the CPU's eviction buffer (``evict_bytes``).
    """
    if l2 == "warm":
        return warm_block_timer(fn, threads)
    if l2 == "cold":
        if device.type == "cuda":
            return CUDAColdBlockTimer(fn, threads, device)
        return CPUColdBlockTimer(fn, threads, device, primer, evict_factor)
    raise ValueError(f"unknown L2 mode {l2!r}; choose one of {L2_MODES}")


def warm_up(fn: Callable[[], object], seconds: float, device: torch.device, min_calls: int = 3) -> int:
    """Call ``fn`` for at least ``seconds`` of wall time and ``min_calls`` calls; returns the call count."""
    calls = 0
    start = time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        sync(device)
        calls += 1
    return calls


def calibrate(block: BlockTimer, min_time: float, max_calls: int = MAX_CALLS) -> int:
    """A call count whose block lasts at least ``min_time`` seconds (capped at max_calls).

    Starts at 1 call and grows by at least 2x, aiming 20% above ``min_time``
    from the last per-call estimate. A count that reaches ``min_time`` is
    timed once more and kept only if that block also lasts at least half of
    ``min_time``, so that a transient slowdown (another process taking the
    core) does not leave blocks far too short.
    """
    n = 1
    while True:
        total = block(n)
        if n >= max_calls:
            return n
        if total >= min_time:
            total = block(n)
            if total >= min_time / 2:
                return n
        n = min(max_calls, max(2 * n, math.ceil(1.2 * n * min_time / total)))


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    min_time: float,
    threads: int,
    device: torch.device,
    l2: str = "warm",
    on_block: Callable[[], None] | None = None,
    block_context: Callable[[str], AbstractContextManager[object]] | None = None,
    primers: Mapping[str, Callable[[], object]] | None = None,
    torch_threads: Mapping[str, int] | None = None,
    evict_factor: float = EVICT_FACTOR,
) -> dict[str, Samples]:
    """Time every function of ``fns`` in R interleaved rounds.

    Args:
        fns: name -> function of no arguments (one call = one unit to time).
        rounds: R, the number of samples per function.
        min_time: seconds each timed block lasts at least (sets n_inner; for a cold block, of wall time).
        threads: intra-op threads during the timed calls.
        device: where the functions run (CUDA is synchronized).
        l2: "warm" or "cold", see the module docstring.
        on_block: called after every timed block of the rounds (progress bars).
        block_context: name -> a context entered around each block of that function (its warm-up and
            calibration, then each round's block), for example ``threadpools.PoolLimits.block``.
        primers: name -> a function run before each of that function's cold calls, untimed (see the module
            docstring); none by default.
        torch_threads: name -> torch's intra-op threads during that function's blocks, where not ``threads``
            (for example 1 for a function whose work runs on another library's pool).
        evict_factor: cold, on the CPU: the eviction buffer in multiples of the last-level cache.
    Returns:
        name -> Samples with R per-call seconds in round order.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(fns)
    own = {name: (torch_threads or {}).get(name, threads) for name in names}
    blocks = {name: block_timer(fns[name], own[name], device, l2, (primers or {}).get(name), evict_factor)
              for name in names}
    context = block_context or (lambda name: nullcontext())
    result: dict[str, Samples] = {}
    for name in names:
        with set_torch_threads(own[name]):
            with context(name):
                warm_up(fns[name], min_time, device)
                # a cold block is calibrated on its wall time, evictions included
                result[name] = Samples(n_inner=calibrate(getattr(blocks[name], "wall", blocks[name]), min_time))
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sample = result[name]
            with context(name):
                sample.samples_s.append(blocks[name](sample.n_inner) / sample.n_inner)
            if on_block is not None:
                on_block()
    return result
