"""dstbench.timing: calibration, interleaved rounds, the torch.utils.benchmark block timer."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

from dstbench import timing

CPU = torch.device("cpu")


def test_calibrate_returns_first_block_count_reaching_min_time() -> None:
    tried = []

    def block(n: int) -> float:
        tried.append(n)
        return n * 1e-3  # 1 ms per call

    n = timing.calibrate(block, min_time=0.05)
    assert n * 1e-3 >= 0.05
    assert tried[-2:] == [n, n]  # the count that reached min_time, confirmed once
    assert all(m * 1e-3 < 0.05 for m in tried[:-2])
    assert tried[:-1] == sorted(tried[:-1]) and tried[0] == 1


def test_calibrate_recovers_from_a_transient_slowdown() -> None:
    """The first block runs 100x slow (another process had the core): the final count still fills min_time."""
    tried = []

    def block(n: int) -> float:
        tried.append(n)
        return n * (1e-1 if len(tried) == 1 else 1e-3)

    n = timing.calibrate(block, min_time=0.05)
    assert n * 1e-3 >= 0.05
    assert tried[0] == 1 and tried[-1] == n


def test_calibrate_stops_at_max_calls() -> None:
    assert timing.calibrate(lambda n: n * 1e-12, min_time=1.0, max_calls=64) == 64


def test_warm_block_timer_runs_the_function_and_returns_seconds() -> None:
    calls = []
    block = timing.warm_block_timer(lambda: calls.append(1), threads=1)
    seconds = block(10)
    assert seconds > 0
    assert len(calls) >= 10 + 2  # the timed calls plus Timer's untimed warm-up


def test_block_timer_sleep_is_measured_per_block() -> None:
    block = timing.block_timer(lambda: time.sleep(0.002), threads=1, device=CPU)
    assert 3 * 0.002 <= block(3) < 3 * 0.002 + 0.5


def test_cold_mode_on_the_cpu_and_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "llc_bytes", lambda device=CPU: (2**20, "test"))  # a small eviction buffer
    timing._evictor.cache_clear()
    try:
        calls = []
        block = timing.block_timer(lambda: calls.append(1), threads=1, device=CPU, l2="cold")
        assert isinstance(block, timing.CPUColdBlockTimer)
        assert 0 < block(3) <= block.last_wall_s and len(calls) == 3  # the evictions are in the wall time only
    finally:
        timing._evictor.cache_clear()
    for mode in ("flushed", "hot"):
        with pytest.raises(ValueError, match="L2 mode"):
            timing.block_timer(lambda: None, threads=1, device=CPU, l2=mode)


def test_interleaved_rotates_order_and_divides_block_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """With fake block timers (each name costs a fixed time per call), samples equal that cost and the order rotates."""
    cost = {"a": 1e-3, "b": 2e-3, "c": 4e-3}
    log: list[str] = []

    def fake_block_timer(fn, threads, device, l2="warm", primer=None, evict_factor=timing.EVICT_FACTOR):  # noqa: ANN001
        name = fn()

        def block(n: int) -> float:
            log.append(name)
            return n * cost[name]

        return block

    monkeypatch.setattr(timing, "block_timer", fake_block_timer)
    monkeypatch.setattr(timing, "warm_up", lambda fn, seconds, device: 3)
    blocks = []
    result = timing.interleaved({name: (lambda n=name: n) for name in cost}, rounds=3, min_time=0.01, threads=1,
                                device=CPU, on_block=lambda: blocks.append(1))
    assert log[-9:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert len(blocks) == 9
    for name, samples in result.items():
        assert samples.n_inner * cost[name] >= 0.01
        assert samples.samples_s == pytest.approx([cost[name]] * 3)


def test_interleaved_enters_each_functions_context_around_each_of_its_blocks() -> None:
    """One context for a function's warm-up and calibration, then one per round block; its calls run inside it."""
    log: list[tuple[str, str]] = []

    @contextmanager
    def context(name: str) -> Iterator[None]:
        log.append(("enter", name))
        yield
        log.append(("exit", name))

    def fn(name: str) -> None:
        assert log[-1] == ("enter", name)

    timing.interleaved({"a": lambda: fn("a"), "b": lambda: fn("b")}, rounds=2, min_time=1e-4, threads=1, device=CPU,
                       block_context=context)
    assert log == [(event, name) for name in ("a", "b", "a", "b", "b", "a") for event in ("enter", "exit")]


def test_interleaved_on_real_functions() -> None:
    fns = {"add": lambda: torch.ones(8) + 1, "mm": lambda: torch.ones(16, 16) @ torch.ones(16, 16)}
    result = timing.interleaved(fns, rounds=4, min_time=1e-3, threads=1, device=CPU)
    assert set(result) == {"add", "mm"}
    for samples in result.values():
        assert samples.n_inner >= 1 and len(samples.samples_s) == 4 and min(samples.samples_s) > 0


def test_interleaved_needs_a_round() -> None:
    with pytest.raises(ValueError):
        timing.interleaved({"f": lambda: None}, rounds=0, min_time=1e-3, threads=1, device=CPU)
