"""CUDA-graph replay of a timed call (the inference suite's ``--launch graph``).

Eager calls on a GPU pay Python's and the framework's launch overhead on
the host, often more than the kernels take on the device (a ViT-B/16
linear at batch 1 runs for a few microseconds). Served models hide that
overhead by replaying CUDA graphs, so the suite can time every row, dense
and sparse alike, as the replay of a graph captured once: the time is then
the device's alone.
"""

from __future__ import annotations

from typing import Callable

import torch

from dstbench.errors import UserError


class CaptureError(UserError):
    """A call that cannot be captured in a CUDA graph."""


WARMUP_CALLS = 3  # untimed calls on a side stream before the capture: they compile kernels and fill caches


def captured(fn: Callable[[], object], device: torch.device, name: str) -> Callable[[], None]:
    """``fn`` captured once in a CUDA graph on ``device``; the returned function replays it.

    The replay reads the same inputs and writes the same output buffers as the
    captured call (the graph keeps them alive). ``fn`` is first called
    ``WARMUP_CALLS`` times on a side stream, as torch's capture rules require.

    Raises:
        CaptureError: when ``fn`` cannot be captured (it syncs the host, say), naming ``name``.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            output = fn()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptureError(f"{name} cannot be captured in a CUDA graph ({first}); time it with --launch eager") from exc

    def replay() -> None:
        graph.replay()

    replay.keep_alive = (graph, output)  # type: ignore[attr-defined]
    return replay
