"""The core round-trip probe: the native ping-pong between two kernel threads, and the probe's guards and median."""

from __future__ import annotations

import math

import pytest

from dstbench import core_latency
from dstbench.kernels import cpu

needs_two_cpus = pytest.mark.skipif(core_latency.usable_cpus() < 2, reason="needs 2 usable CPUs")


@needs_two_cpus
def test_the_native_round_trip_is_a_plausible_time() -> None:
    ns = cpu.core_round_trip_ns(500)
    # a cache line between two cores takes tens to hundreds of ns; two spinning threads on one core would take
    # a scheduler time slice (milliseconds)
    assert ns is not None and math.isfinite(ns) and 5 < ns < 1e5


def test_the_native_round_trip_refuses_zero_trips() -> None:
    assert cpu.core_round_trip_ns(0) is None


@needs_two_cpus
def test_probe_with_two_threads_is_positive() -> None:
    ns = core_latency.probe(2)
    assert ns is not None and ns > 0


def test_probe_is_none_with_one_thread_or_one_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(trips: int) -> float:
        raise AssertionError("the probe must not spin two threads here")

    monkeypatch.setattr(cpu, "core_round_trip_ns", never)
    assert core_latency.probe(1) is None
    monkeypatch.setattr(core_latency, "usable_cpus", lambda: 1)
    assert core_latency.probe(2) is None


def test_probe_is_the_median_of_its_batches_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_latency, "usable_cpus", lambda: 2)
    values = iter([500.0, 100.0, 300.0, 200.0, 400.0])
    monkeypatch.setattr(cpu, "core_round_trip_ns", lambda trips: next(values))
    assert core_latency.probe(2) == 300.0
    values = iter([100.0, None, 100.0, 100.0, 100.0])
    assert core_latency.probe(2) is None
