"""This machine's read bandwidth by working-set size: the ceiling that the inference suite's rows are held against.

A STREAM-like probe: one call sums a float32 buffer (``torch.sum``, the
run's threads), which reads every byte of it once. It is timed by
``timing.interleaved`` exactly as the layers are, in both cache modes:

* warm, at working sets from 256 KiB (in a core's L2) up to the cold-mode
  eviction buffer (``timing.evict_bytes``: beyond the last-level cache);
* cold, at the working sets below the eviction buffer: each sum follows an
  eviction and a sum of a twin buffer of the same size, as a cold layer call
  follows an eviction and a call of its twin, so it reads its bytes from
  wherever an eviction leaves them (memory, less what a replacement policy
  that is not LRU keeps).

The small sizes include torch's per-call overhead, as a layer call of that
size does. The beyond-cache warm figure reads one buffer over and over; a
last-level cache whose replacement is not LRU serves part of it (121 GB/s on
the 32 MiB L3 of an AMD EPYC, against 35 GB/s for a cold dense GEMV), which
is why cold rows are held against the cold curve.

``Bandwidth.ceiling`` gives the bandwidth a row is held against, the
probe's figure at the row's bytes in the row's cache mode (interpolated
linearly in log size, clamped at both ends). Records made before the cold
curve existed hold a cold row against the beyond-cache warm figure. A kernel
that reads faster than a plain sum (or reuses data within a call) can exceed
its ceiling.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dstbench import timing

#: working sets below the beyond-cache one, bytes: 256 KiB, 1, 4, 16 and 64 MiB
SIZES = tuple(2**k for k in (18, 20, 22, 24, 26))
ROUNDS = 5
MIN_TIME = 0.02
KERNEL = "sum-fp32"


@dataclass(frozen=True)
class Bandwidth:
    """Probe result: ``gbps[i]`` (1e9 bytes/s, median over rounds) reading a warm buffer of ``sizes[i]`` bytes,
    and ``cold_gbps[i]`` reading a cold one of ``sizes[i]`` bytes, ``i < len(sizes) - 1``.

    ``sizes`` increase; the last is beyond the last-level cache (``llc_bytes``, read from ``llc_source``).
    ``cold_gbps`` is None in records made before the cold curve existed.
    """

    sizes: tuple[int, ...]
    gbps: tuple[float, ...]
    llc_bytes: int
    llc_source: str
    kernel: str = KERNEL
    cold_gbps: tuple[float, ...] | None = None

    def ceiling(self, nbytes: float, l2: str) -> float:
        """The bandwidth (GB/s) a call moving ``nbytes`` in cache mode ``l2`` is held against."""
        x = np.log2(max(nbytes, 1))
        if l2 == "cold":
            if self.cold_gbps is None:
                return self.gbps[-1]
            return float(np.interp(x, np.log2(self.sizes[:len(self.cold_gbps)]), self.cold_gbps))
        return float(np.interp(x, np.log2(self.sizes), self.gbps))

    def record(self) -> dict[str, Any]:
        """As stored in each row (``bw_probe``): plain lists, JSON-ready."""
        return {"bytes": list(self.sizes), "gbps": list(self.gbps), "llc_bytes": self.llc_bytes,
                "llc_source": self.llc_source, "kernel": self.kernel,
                "cold_gbps": None if self.cold_gbps is None else list(self.cold_gbps)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Bandwidth:
        cold = record.get("cold_gbps")
        return cls(tuple(record["bytes"]), tuple(record["gbps"]), record["llc_bytes"], record["llc_source"],
                   record.get("kernel", KERNEL), None if cold is None else tuple(cold))


def probe(device: torch.device, threads: int, rounds: int = ROUNDS, min_time: float = MIN_TIME,
          evict_factor: float = timing.EVICT_FACTOR) -> Bandwidth:
    """Measure the read bandwidth at ``SIZES`` and beyond the last-level cache; a few seconds on 2 CPU cores.

    The beyond-cache buffer is the cold mode's eviction buffer (``timing.evictor`` of ``evict_factor``), shared,
    not a second copy.
    """
    beyond = timing.evictor(device, evict_factor).buffer
    below = [torch.ones(size // 4, dtype=torch.float32, device=device) for size in SIZES if size < beyond.nbytes]
    buffers = [*below, beyond]
    fns = {str(b.nbytes): (lambda b=b: b.sum()) for b in buffers}
    warm = timing.interleaved(fns, rounds=rounds, min_time=min_time, threads=threads, device=device)
    twins = {str(b.nbytes): (lambda t=torch.ones_like(b): t.sum()) for b in below}
    cold = timing.interleaved({name: fns[name] for name in twins}, rounds=rounds, min_time=min_time, threads=threads,
                              device=device, l2="cold", primers=twins, evict_factor=evict_factor)
    llc, source = timing.llc_bytes(device)

    def gbps(samples: dict[str, timing.Samples], b: torch.Tensor) -> float:
        return b.nbytes / statistics.median(samples[str(b.nbytes)].samples_s) / 1e9

    return Bandwidth(tuple(b.nbytes for b in buffers), tuple(gbps(warm, b) for b in buffers), llc, source,
                     cold_gbps=tuple(gbps(cold, b) for b in below))
