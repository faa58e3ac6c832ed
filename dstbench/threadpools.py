"""Thread pools kept out of each other's way while functions of different libraries are timed interleaved.

Two pools run the timed code of the inference suite:

* torch's intra-op pool (OpenMP): MKL, oneDNN, CSR and the compiled sparse
  kernels. The block timer sets its size (``torch.set_num_threads``) around
  every block.
* the OpenBLAS pool of numpy and scipy (pthreads), sized through threadpoolctl.

An idle pool does not sleep at once. After a call its workers spin (OpenBLAS:
``sched_yield`` for its thread timeout of 2^28 cycles; libgomp: GOMP_SPINCOUNT)
and take cores from whatever runs next. Measured on this project's 2-core CI
machine, 2 threads, after a 768x3072 GEMV called for 0.1 s: OpenBLAS's workers
stay runnable for 96-100 ms after the last call, torch's for 1.5-5 ms.
Lowering OpenBLAS's limit does not stop a spin under way.

``PoolLimits.block`` is entered once per timed block (``block_context`` of
``dstbench.timing.interleaved``). It waits until no other thread of the
process is runnable (``wait_quiet``), then sets the BLAS pool to the run's
thread count for the functions that call OpenBLAS and to 1 thread for all
others; ``PoolLimits.torch_threads`` gives the OpenBLAS functions 1 torch
thread in turn.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from threadpoolctl import ThreadpoolController

TASKS = Path("/proc/self/task")
#: the longest wait for quiet: 3x OpenBLAS's measured spin
QUIET_TIMEOUT_S = 0.3
#: the wait where /proc cannot tell (not Linux): OpenBLAS's measured spin with a margin
SPIN_S = 0.15


def runnable_threads() -> list[int] | None:
    """Native ids of this process's threads, other than the caller, that run or wait for a core (state R).

    None where ``/proc/self/task`` is missing (not Linux).
    """
    if not TASKS.is_dir():
        return None
    me = threading.get_native_id()
    busy = []
    for name in os.listdir(TASKS):
        if int(name) == me:
            continue
        try:
            stat = (TASKS / name / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        if stat[stat.rindex(")") + 2] == "R":
            busy.append(int(name))
    return busy


def wait_quiet(timeout_s: float = QUIET_TIMEOUT_S, poll_s: float = 1e-3) -> float:
    """Sleep until no other thread of this process is runnable, at most ``timeout_s``; the seconds waited.

    Without /proc (not Linux), sleep ``SPIN_S``.
    """
    start = time.perf_counter()
    busy = runnable_threads()
    if busy is None:
        time.sleep(SPIN_S)
    while busy and time.perf_counter() - start < timeout_s:
        time.sleep(poll_s)
        busy = runnable_threads()
    return time.perf_counter() - start


class PoolLimits:
    """The thread pools of each timed block, for ``timing.interleaved(block_context=PoolLimits(...).block)``.

    Args:
        threads: the run's thread count.
        blas: names of the timed functions that call OpenBLAS (numpy, scipy); they get ``threads`` BLAS threads,
            every other function 1.
    """

    def __init__(self, threads: int, blas: Iterable[str]) -> None:
        self.threads = threads
        self.blas = frozenset(blas)
        self._controller = ThreadpoolController()

    def torch_threads(self, names: Iterable[str]) -> dict[str, int]:
        """torch's intra-op threads for the BLAS functions among ``names``: 1.

        Their glue around OpenBLAS (the adds and GELU of a token stack) would
        otherwise wake torch's OpenMP pool, whose workers then fight
        OpenBLAS's spinning ones for the cores: on the 2-core CI machine the
        OpenBLAS token stack took 86 ms instead of 20.
        """
        return {name: 1 for name in names if name in self.blas}

    @contextmanager
    def block(self, name: str) -> Iterator[None]:
        """Wait for quiet, then hold the BLAS limit of function ``name`` until the block ends."""
        wait_quiet()
        with self._controller.limit(limits=self.threads if name in self.blas else 1, user_api="blas"):
            yield
