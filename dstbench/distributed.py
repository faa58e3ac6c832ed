"""torchrun / DistributedDataParallel helpers: one process per device, started by ``torchrun``, never by us.

``torchrun --nproc-per-node N -m dstbench run ...`` sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in every
process; ``init`` reads them and joins the process group (gloo on CPU, nccl
on CUDA). Without them everything here degrades to a single process: rank 0
of a world of 1, no collectives.

Checkpoints written by rank 0 are read by every rank on resume, so the run
folder must be visible to all ranks (one node, or a shared file system).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dstbench.errors import UserError

ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place in the job.

    Attributes:
        rank: global rank, 0 .. size - 1.
        local_rank: rank on this node (selects the GPU).
        size: number of processes (1 without torchrun).
        device: the device this process trains on.
    """

    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes records, checkpoints and progress bars."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set."""
    return all(name in os.environ for name in ENV_VARS)


def local_world_size() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched_by_torchrun() else 1


def backend_for(device: torch.device) -> str:
    """nccl for CUDA, gloo for CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device) -> World:
    """Join the process group when launched by torchrun (else a world of 1); returns this process's World.

    On CUDA each process takes GPU ``LOCAL_RANK``. Calling it again reuses the
    group already initialised.
    """
    if not launched_by_torchrun():
        return World(0, 0, 1, device)
    rank, local_rank, size = (int(os.environ[name]) for name in ENV_VARS)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                            "start torchrun with --nproc-per-node at most the number of GPUs")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend_for(device))
    return World(rank, local_rank, size, device)


def shutdown(world: World) -> None:
    """Leave the process group (after a final barrier) if this process joined one."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed, else ``model``.

    Call it after ``method.prepare`` (the methods install their masks and
    hooks on the bare model). ``find_unused_parameters=True`` because a method
    may stop training a parameter during the run (DynaDiag's alpha at the freeze).
    """
    if not world.distributed:
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (pickled); ``obj`` itself in a world of 1."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Tensor, world: World) -> Tensor:
    """The element-wise sum of ``values`` over ranks (a new tensor on ``values``' device)."""
    total = values.clone()
    if world.distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def barrier(world: World) -> None:
    """Wait for every rank (no-op in a world of 1)."""
    if world.distributed:
        dist.barrier()


def _tensors(obj: Any) -> Iterable[Tensor]:
    """The tensors of a nested dict / list / tuple, in a fixed order (dict keys sorted)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _tensors(obj[key])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)


def fingerprint(obj: Any) -> str:
    """SHA-256 of the bytes, shapes and dtypes of every tensor in ``obj`` (for example a method's state_dict).

    Two ranks whose masks, importances and schedule state are bit-identical give the same string.
    """
    digest = hashlib.sha256()
    for tensor in _tensors(obj):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
