"""This machine's read bandwidth by working-set size: the ceiling that the inference suite's rows are held against.

A STREAM-like probe: one call sums a float32 buffer (``torch.sum``, the
run's threads), which reads every byte of it once. It is timed by
``timing.interleaved`` in warm mode, exactly as the layers are, at working
sets from 256 KiB (in a core's L2) up to the cold-mode eviction buffer
(``timing.evict_bytes``: beyond the last-level cache). The small sizes
include torch's per-call overhead, as a layer call of that size does.

``Bandwidth.ceiling`` gives the bandwidth a row is held against: for a warm
row, the probe's bandwidth at the row's bytes (interpolated linearly in
log size, clamped at both ends); for a cold row, whose data comes from
memory whatever its size, the beyond-cache bandwidth. A kernel that reads
faster than a plain sum (or reuses data within a call) can exceed it.
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
    """Probe result: ``gbps[i]`` (1e9 bytes/s, median over rounds) reading a buffer of ``sizes[i]`` bytes.

    ``sizes`` increase; the last is beyond the last-level cache (``llc_bytes``, read from ``llc_source``).
    """

    sizes: tuple[int, ...]
    gbps: tuple[float, ...]
    llc_bytes: int
    llc_source: str
    kernel: str = KERNEL

    def ceiling(self, nbytes: float, l2: str) -> float:
        """The bandwidth (GB/s) a call moving ``nbytes`` in cache mode ``l2`` is held against."""
        if l2 == "cold":
            return self.gbps[-1]
        return float(np.interp(np.log2(max(nbytes, 1)), np.log2(self.sizes), self.gbps))

    def record(self) -> dict[str, Any]:
        """As stored in each row (``bw_probe``): plain lists, JSON-ready."""
        return {"bytes": list(self.sizes), "gbps": list(self.gbps), "llc_bytes": self.llc_bytes,
                "llc_source": self.llc_source, "kernel": self.kernel}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Bandwidth:
        return cls(tuple(record["bytes"]), tuple(record["gbps"]), record["llc_bytes"], record["llc_source"],
                   record.get("kernel", KERNEL))


def probe(device: torch.device, threads: int, rounds: int = ROUNDS, min_time: float = MIN_TIME,
          evict_factor: float = timing.EVICT_FACTOR) -> Bandwidth:
    """Measure the read bandwidth at ``SIZES`` and beyond the last-level cache; a few seconds on 2 CPU cores.

    The beyond-cache buffer is the cold mode's eviction buffer (``timing.evictor`` of ``evict_factor``), shared,
    not a second copy.
    """
    beyond = timing.evictor(device, evict_factor).buffer
    buffers = [torch.ones(size // 4, dtype=torch.float32, device=device) for size in SIZES if size < beyond.nbytes]
    buffers.append(beyond)
    fns = {str(b.nbytes): (lambda b=b: b.sum()) for b in buffers}
    samples = timing.interleaved(fns, rounds=rounds, min_time=min_time, threads=threads, device=device)
    llc, source = timing.llc_bytes(device)
    return Bandwidth(tuple(b.nbytes for b in buffers),
                     tuple(b.nbytes / statistics.median(samples[str(b.nbytes)].samples_s) / 1e9 for b in buffers),
                     llc, source)
