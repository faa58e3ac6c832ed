"""Latency measurement: warm-up, per-function calibration, then interleaved rounds of timed blocks.

Several functions (for example one per sparse format of the same layer) are
timed side by side. Each gets its own block size ``n_inner`` (calls per
block) so that one block lasts at least ``min_time`` seconds; then, for R
rounds, one block of every function is timed in turn, with the order rotated
each round. Drift of the machine (frequency, other processes) hits every
function alike, and sample i of every function comes from round i, so
per-round paired ratios are meaningful.

Blocks are timed with ``torch.utils.benchmark.Timer`` at an explicit thread
count. ``Timer.timeit(n)`` first makes ``max(2, n // 100)`` untimed calls, so
each block starts with the function's data back in cache after the previous
function ran: this is the ``"warm"`` L2 mode. On CUDA the timer synchronizes
the device. The ``"flushed"`` mode (CUDA only) times every call with CUDA
events after overwriting a buffer twice the size of the L2 cache, so each
call starts from a cold L2.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

# torch.utils.benchmark imports cpp_extension, which logs "No CUDA runtime is found"
# on every CPU-only machine; that says nothing about the timings.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils.benchmark import Timer  # noqa: E402
from torch.utils.benchmark.utils.common import set_torch_threads  # noqa: E402

L2_MODES = ("warm", "flushed")
#: upper bound on calls per block, for functions too fast to reach min_time
MAX_CALLS = 1_000_000

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


def flushed_block_timer(fn: Callable[[], object], threads: int, device: torch.device) -> BlockTimer:
    """A function ``n -> seconds``: the summed CUDA-event time of n calls, each after an L2 flush.

    The flush (zeroing a buffer of twice the L2 size) is not part of the time.
    """
    if device.type != "cuda":
        raise ValueError("the flushed L2 mode needs a CUDA device")
    buffer = torch.empty(2 * l2_bytes(device), dtype=torch.int8, device=device)

    def block(n: int) -> float:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        with set_torch_threads(threads):
            for start, end in zip(starts, ends):
                buffer.zero_()
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize(device)
        return sum(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3

    return block


def block_timer(fn: Callable[[], object], threads: int, device: torch.device, l2: str = "warm") -> BlockTimer:
    """The block timer for ``l2`` mode ("warm" anywhere, "flushed" on CUDA)."""
    if l2 == "warm":
        return warm_block_timer(fn, threads)
    if l2 == "flushed":
        return flushed_block_timer(fn, threads, device)
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
) -> dict[str, Samples]:
    """Time every function of ``fns`` in R interleaved rounds.

    Args:
        fns: name -> function of no arguments (one call = one unit to time).
        rounds: R, the number of samples per function.
        min_time: seconds each timed block lasts at least (sets n_inner).
        threads: intra-op threads during the timed calls.
        device: where the functions run (CUDA is synchronized).
        l2: "warm" or "flushed" (CUDA only), see the module docstring.
        on_block: called after every timed block of the rounds (progress bars).
        block_context: name -> a context entered around each block of that function (its warm-up and
            calibration, then each round's block), for example ``threadpools.PoolLimits.block``.
    Returns:
        name -> Samples with R per-call seconds in round order.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(fns)
    blocks = {name: block_timer(fns[name], threads, device, l2) for name in names}
    context = block_context or (lambda name: nullcontext())
    result: dict[str, Samples] = {}
    with set_torch_threads(threads):
        for name in names:
            with context(name):
                warm_up(fns[name], min_time, device)
                result[name] = Samples(n_inner=calibrate(blocks[name], min_time))
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sample = result[name]
            with context(name):
                sample.samples_s.append(blocks[name](sample.n_inner) / sample.n_inner)
            if on_block is not None:
                on_block()
    return result
