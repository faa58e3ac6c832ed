"""The accuracy suite's training loop: one case = one model trained by one method; DDP-aware and resumable.

Data order: epoch e visits the train split in the order of a
``DistributedSampler`` seeded with the case seed and ``set_epoch(e)`` (a world
of 1 is its single replica), so the batches of every step are a function of
(seed, step) and a run resumed mid-epoch continues with the same batches.
``Hyper.batch_size`` is the global batch: each of the W ranks takes
batch_size / W samples per step, so a DDP run and a single-process run take
the same number of steps with the same learning-rate schedule.

A checkpoint (``Checkpoint``) every N steps holds the model, the optimizer,
the learning-rate scheduler, ``method.state_dict()``, the RNG states of every
rank, the step and the training time so far. Only rank 0 writes it (temp
file + ``os.replace``); every rank reads it on resume.
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from dstbench import distributed, timing
from dstbench.distributed import World
from dstbench.errors import UserError
from dstbench.kernels import ops
from dstbench.methods.base import SparsityMethod, unwrap

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class Hyper:
    """Training hyper-parameters of a case.

    Attributes:
        epochs: passes over the train split.
        batch_size: global batch, split evenly over the ranks.
        lr: peak learning rate (after warm-up; cosine decay to 0 over the run).
        optimizer: "sgd" (momentum, Nesterov off), "adam" or "adamw".
        momentum: SGD momentum.
        weight_decay: L2 (sgd, adam) or decoupled (adamw) weight decay.
        warmup: fraction of the steps with a linear warm-up from 0.
        label_smoothing: of the cross-entropy loss.
        workers: DataLoader worker processes per rank (0: load in the training process).
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    warmup: float
    label_smoothing: float
    workers: int

    def check(self) -> None:
        """UserError for a value out of range."""
        if self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise UserError(f"--warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise UserError("--weight-decay and --momentum must be >= 0")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")


def rank_batch(hyper: Hyper, world: World) -> int:
    """Samples per rank and step; UserError if the global batch does not split evenly."""
    if hyper.batch_size % world.size:
        raise UserError(f"--batch-size {hyper.batch_size} must be a multiple of the {world.size} processes")
    return hyper.batch_size // world.size


def steps_per_epoch(train_size: int, hyper: Hyper, world: World) -> int:
    """Optimizer steps per epoch: ceil(ceil(N / W) / (batch / W)), the same on every rank."""
    return math.ceil(math.ceil(train_size / world.size) / rank_batch(hyper, world))


def epoch_order(dataset: Dataset, epoch: int, seed: int, world: World) -> list[int]:
    """This rank's sample indices for ``epoch`` (padded so every rank has the same count)."""
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def make_optimizer(params: Iterable[nn.Parameter], hyper: Hyper) -> torch.optim.Optimizer:
    """The optimizer of ``hyper`` over ``params`` (build it after ``method.prepare``)."""
    params = list(params)
    if hyper.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)
    if hyper.optimizer == "adam":
        return torch.optim.Adam(params, lr=hyper.lr, weight_decay=hyper.weight_decay)
    return torch.optim.AdamW(params, lr=hyper.lr, weight_decay=hyper.weight_decay)


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """LR factor of step s: linear from 1/(warmup+1) to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def rng_state(device: torch.device) -> dict[str, Any]:
    """The torch (CPU and, on CUDA, device), numpy and python RNG states of this process."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore ``rng_state``."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpoint:
    """The checkpoint file of one case.

    Args:
        path: the file (its folder is created on the first save).
        every: save every this many optimizer steps (0: never).
        signature: what must match for a checkpoint to be resumed (the case's options);
            a checkpoint with another signature is ignored, with a warning.
    """

    def __init__(self, path: Path, every: int, signature: dict[str, Any]) -> None:
        self.path = Path(path)
        self.every = every
        self.signature = signature

    def due(self, step: int, total: int) -> bool:
        """True after step ``step`` (1-based count of steps done) if a checkpoint is due; never after the last step."""
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (plus the signature) atomically: torch.save to a temp file, fsync, os.replace."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save({**state, "signature": self.signature}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None if there is none (or it was written for other options)."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("signature") != self.signature:
            warnings.warn(f"{self.path} was written with other options; training this case from the start", stacklevel=2)
            return None
        return state

    def delete(self) -> None:
        """Remove the checkpoint file (once the case's row is recorded)."""
        self.path.unlink(missing_ok=True)


@dataclass
class Outcome:
    """What a finished training run reports.

    Attributes:
        steps: optimizer steps done in all.
        epochs: epochs done.
        train_time_s: wall seconds spent in training steps, summed over resumes (checkpoint writes excluded).
        final_loss: training loss of the last step (this rank's batch).
        resumed_from: the step a checkpoint resumed from, or None.
    """

    steps: int
    epochs: int
    train_time_s: float
    final_loss: float
    resumed_from: int | None


def train(model: nn.Module, method: SparsityMethod, train_set: Dataset, hyper: Hyper, world: World, *, seed: int,
          checkpoint: Checkpoint | None = None, desc: str = "train") -> Outcome:
    """Train the prepared ``model`` (on ``world.device``) with ``method`` for ``hyper.epochs`` epochs.

    Resumes from ``checkpoint`` when it holds a state for the same options.
    The model is wrapped in DistributedDataParallel here when distributed
    (after ``method.prepare``, which the caller did), and the optimizer is
    built after that. Returns the Outcome; the trained bare model is ``model``.
    """
    device = world.device
    per_rank = rank_batch(hyper, world)
    epoch_steps = steps_per_epoch(len(train_set), hyper, world)
    total = hyper.epochs * epoch_steps
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
    net = distributed.wrap(model, world)
    optimizer = make_optimizer(net.parameters(), hyper)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, round(hyper.warmup * total)))
    step, spent, resumed_from = 0, 0.0, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, spent, resumed_from = state["step"], state["train_time_s"], state["step"]
        rngs = state["rng"]
        set_rng_state(rngs[world.rank] if len(rngs) == world.size else rngs[0], device)
    loss = torch.zeros((), device=device)
    net.train()
    with tqdm(total=total, initial=step, desc=desc, unit="step", file=sys.stderr, leave=False,
              disable=not world.is_main) as bar:
        timing.sync(device)
        start = time.perf_counter()
        while step < total:
            epoch, within = divmod(step, epoch_steps)
            order = epoch_order(train_set, epoch, seed, world)[within * per_rank:]
            loader = DataLoader(train_set, batch_size=per_rank, sampler=order, num_workers=hyper.workers,
                                pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(seed * 1_000_003 + step))
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(x), y, label_smoothing=hyper.label_smoothing)
                loss.backward()
                optimizer.step()
                method.step(optimizer)
                scheduler.step()
                step += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
                if checkpoint is not None and checkpoint.due(step, total):
                    timing.sync(device)
                    spent += time.perf_counter() - start
                    _save(checkpoint, model, method, optimizer, scheduler, step, spent, world)
                    start = time.perf_counter()
        timing.sync(device)
        spent += time.perf_counter() - start
    return Outcome(steps=step, epochs=hyper.epochs, train_time_s=spent, final_loss=float(loss.item()),
                   resumed_from=resumed_from)


def _save(checkpoint: Checkpoint, model: nn.Module, method: SparsityMethod, optimizer: torch.optim.Optimizer,
          scheduler: Any, step: int, spent: float, world: World) -> None:
    """Gather every rank's RNG state, then let rank 0 write the checkpoint."""
    rngs = distributed.gather_objects(rng_state(world.device), world)
    if world.is_main:
        save_checkpoint(checkpoint, {
            "step": step, "train_time_s": spent, "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "method": method.state_dict(), "rng": rngs,
        })


def save_checkpoint(checkpoint: Checkpoint, state: dict[str, Any]) -> None:
    """Write one checkpoint (a separate function so that tests can interrupt a run right after it)."""
    checkpoint.save(state)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int, world: World, workers: int = 0) -> tuple[Tensor, Tensor]:
    """The bare ``model``'s top-1 class and the label of every sample of ``dataset``: two int64 tensors (N,) on the CPU.

    Each rank predicts every W-th sample (no padding); the ranks' shares are
    summed into the full vectors, in dataset order, on every rank.
    """
    indices = list(range(world.rank, len(dataset), world.size))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers,
                        pin_memory=world.device.type == "cuda")
    was_training = model.training
    model.eval()
    out = torch.zeros(2, len(dataset), dtype=torch.int64, device=world.device)
    start = 0
    for x, y in loader:
        mine = torch.tensor(indices[start:start + len(y)], device=world.device)
        out[0, mine] = model(x.to(world.device)).argmax(dim=1)
        out[1, mine] = y.to(world.device)
        start += len(y)
    model.train(was_training)
    predictions, labels = distributed.all_reduce_sum(out, world).cpu()
    return predictions, labels


def example_batch(dataset: Dataset, size: int, device: torch.device) -> Tensor:
    """The first ``size`` inputs of ``dataset``, stacked: (size, C, H, W)."""
    return torch.stack([dataset[i][0] for i in range(min(size, len(dataset)))]).to(device)


def hyper_dict(hyper: Hyper) -> dict[str, Any]:
    """``hyper`` as a plain dict (for rows and checkpoint signatures)."""
    return asdict(hyper)


def training_impl(model: nn.Module, method: SparsityMethod) -> str:
    """Which kernel the prepared model trains with.

    The kernel implementation of the layers that report one (``impl``, e.g.
    DynaDiag's "cpu" / "cuda" / "reference", joined with "+" if they differ);
    otherwise "masked-dense" for a sparse method (dense kernels on masked
    weights, as RigL and SRigL train) and "dense" for the dense baseline.
    """
    impls = set()
    for module in unwrap(model).modules():
        requested = getattr(module, "impl", None)
        weight = next(module.parameters(recurse=False), None)
        if isinstance(requested, str) and weight is not None:
            impls.add(ops.select_impl(weight.device, weight.dtype, requested))
    if impls:
        return "+".join(sorted(impls))
    return "masked-dense" if method.sparsity > 0 else "dense"
