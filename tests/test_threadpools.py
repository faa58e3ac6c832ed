"""dstbench.threadpools: each timed block holds its own BLAS limit and starts once the other threads have gone quiet,
so that torch's rounds interleaved with OpenBLAS's are not slowed by OpenBLAS's spinning workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from dstbench import threadpools, timing

CPU = torch.device("cpu")


def blas_threads() -> set[int]:
    """The thread counts threadpoolctl reports for the loaded BLAS libraries (numpy's and scipy's OpenBLAS)."""
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


needs_two_blas_threads = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or max(blas_threads() or {1}) < 2,
    reason="needs 2 cores and an OpenBLAS pool of 2 threads")


def openblas_burst(seconds: float = 0.05) -> None:
    """Keep OpenBLAS's pool of 2 threads busy for ``seconds``; its workers then spin idle."""
    w, x = np.ones((1024, 1024), np.float32), np.ones((64, 1024), np.float32)
    with threadpool_limits(2, user_api="blas"):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            x @ w


def test_each_block_holds_its_blas_limit_while_it_runs() -> None:
    if not blas_threads():
        pytest.skip("no BLAS library that threadpoolctl knows is loaded")
    before = blas_threads()
    pools = threadpools.PoolLimits(2, blas={"openblas"})
    seen: dict[str, set[int]] = {"openblas": set(), "torch": set()}
    fns = {name: (lambda n=name: seen[n].update(blas_threads())) for name in seen}
    timing.interleaved(fns, rounds=3, min_time=1e-3, threads=1, device=CPU, block_context=pools.block)
    assert seen == {"openblas": {2}, "torch": {1}}
    assert blas_threads() == before  # restored after each block


def test_blas_functions_run_their_blocks_on_one_torch_thread() -> None:
    pools = threadpools.PoolLimits(2, blas={"openblas"})
    seen: dict[str, set[int]] = {"openblas": set(), "torch": set()}
    fns = {name: (lambda n=name: seen[n].add(torch.get_num_threads())) for name in seen}
    before = torch.get_num_threads()
    timing.interleaved(fns, rounds=3, min_time=1e-3, threads=2, device=CPU, block_context=pools.block,
                       torch_threads=pools.torch_threads(fns))
    assert seen == {"openblas": {1}, "torch": {2}}  # warm-up, calibration and every round
    assert torch.get_num_threads() == before


@needs_two_blas_threads
def test_wait_quiet_outlasts_openblas_spinning_workers() -> None:
    if threadpools.runnable_threads() is None:
        pytest.skip("no /proc/self/task")
    openblas_burst()
    assert threadpools.runnable_threads(), "OpenBLAS's workers spin right after the last call"
    waited = threadpools.wait_quiet()
    assert threadpools.runnable_threads() == []
    assert 0.005 < waited < threadpools.QUIET_TIMEOUT_S


def test_without_proc_wait_quiet_sleeps_the_measured_spin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(threadpools, "TASKS", tmp_path / "missing")
    assert threadpools.runnable_threads() is None
    assert threadpools.SPIN_S <= threadpools.wait_quiet() < threadpools.SPIN_S + 0.1


def openblas_workers() -> set[int]:
    """The native ids of OpenBLAS's worker threads: the threads that spin right after a burst on a quiet process."""
    threadpools.wait_quiet()
    openblas_burst()
    return set(threadpools.runnable_threads() or ())


def openblas_seen_by_torch_calls(block_context: object, workers: set[int]) -> list[set[int]]:
    """torch's dense GEMV interleaved with OpenBLAS's, 2 threads each, as the inference suite times them; per torch
    call, the OpenBLAS ``workers`` that were runnable when it started."""
    weight, x = torch.randn(3072, 768), torch.randn(1, 768)
    weight_t, x_np = weight.numpy().T, x.numpy()
    seen: list[set[int]] = []

    def torch_fn() -> None:
        seen.append(set(threadpools.runnable_threads() or ()) & workers)
        torch.nn.functional.linear(x, weight)

    timing.interleaved({"openblas": lambda: x_np @ weight_t, "torch": torch_fn}, rounds=4, min_time=0.005, threads=2,
                       device=CPU, block_context=block_context)
    return seen


@needs_two_blas_threads
def test_no_openblas_worker_runs_while_torch_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fair interleaving, checked on the threads' states rather than on timings: no torch call starts while an
    OpenBLAS worker is runnable. Without the wait for quiet (the control), torch's blocks start while OpenBLAS's
    workers still spin (~100 ms after its block), and torch's rounds then ran 2-3x slower than alone on this
    project's 2-core machine."""
    if threadpools.runnable_threads() is None:
        pytest.skip("no /proc/self/task")
    workers = openblas_workers()
    assert workers, "OpenBLAS's workers spin right after the last call"
    pools = threadpools.PoolLimits(2, blas={"openblas"})
    seen = openblas_seen_by_torch_calls(pools.block, workers)
    assert seen and not any(seen)
    monkeypatch.setattr(threadpools, "wait_quiet", lambda: 0.0)  # the control: pools.block without its wait for quiet
    assert any(openblas_seen_by_torch_calls(pools.block, workers)), "the control should catch OpenBLAS spinning"
