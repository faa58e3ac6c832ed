"""How far apart the run's cores are: the round trip of a cache line between two threads of the CPU kernels'
OpenMP pool (``kernels/cpu/core_probe.cpp``), in nanoseconds.

Each multi-threaded kernel call pays a few such trips (waking the pool, barriers, the join, reading another
thread's partial sums), so at batch 1, where a call takes a few microseconds, the placement of the threads'
cores moves the call's time. On this project's 2-vCPU CI machine (AMD EPYC, Zen 5) the host alternates, minute
by minute, between ~110 ns and ~540 ns per trip, and the raw DynaDiag b16-fc1 kernel at batch 1 (2 threads)
between 7.4 and 9.5 µs with it, while the dense GEMVs (50 µs, bound by the L3's bandwidth) hardly move. The
inference suite records the probe before and after each CPU case group (``core_rtt_ns``), so a row's speedups
can be read with the placement they were measured under.
"""

from __future__ import annotations

import os
import statistics
from typing import Any, Iterable, Mapping

from dstbench.kernels import cpu

#: trips per batch, and batches per probe (the probe's figure is their median): about 1-6 ms per probe
TRIPS = 2000
BATCHES = 5


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS has one, else the CPU count)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def probe(threads: int) -> float | None:
    """Median over ``BATCHES`` of the mean round trip (ns) between two threads of the kernels' pool.

    None when the run uses fewer than two threads, the process may use fewer than two CPUs (two spinning threads
    on one CPU would measure the scheduler's time slice), or the compiled kernels are unavailable.
    """
    if threads < 2 or usable_cpus() < 2:
        return None
    values = [cpu.core_round_trip_ns(TRIPS) for _ in range(BATCHES)]
    if any(value is None for value in values):
        return None
    return statistics.median(values)


def probed_range(rows: Iterable[Mapping[str, Any]]) -> tuple[float, float] | None:
    """The least and greatest of the rows' ``core_rtt_ns`` probes, or None if no row has any."""
    values = [ns for row in rows for ns in row.get("core_rtt_ns") or ()]
    return (min(values), max(values)) if values else None
