"""DDP: two CPU ranks (gloo) on different data take identical topology decisions; the broadcast safeguard works."""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from dstbench.methods.options import accepted
from dstbench.registry import list_methods, method_class


def options_for(name: str) -> dict:
    """A 16-step run with topology updates every 3 steps (or a freeze at step 8) where the method has them."""
    cls = method_class(name)
    extra = accepted(cls, {"delta_t": 3, "freeze_at": 0.5})
    return dict(sparsity=0.9, total_steps=16, **extra)


OPTIONS = {name: options_for(name) for name in list_methods() if name != "dense"}


def topology(method) -> list[torch.Tensor]:
    """Every tensor of the method's state (masks, importances, offsets), in a fixed order."""
    def tensors(value) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value.clone()]
        if isinstance(value, dict):
            return [t for key in sorted(value, key=str) for t in tensors(value[key])]
        return []

    state = method.state_dict()
    state.pop("rng", None)
    return tensors(state)


def _worker(rank: int, out_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    warnings.filterwarnings("ignore")
    from methods_harness import mlp  # noqa: PLC0415

    from dstbench.registry import make_method  # noqa: PLC0415

    teacher = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=2)
    results = {}
    for name, options in OPTIONS.items():
        method = make_method(name, sync_topology=False, impl="reference", **options)
        model = method.prepare(mlp(0))
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        changes = 0
        for step in range(14):
            x = torch.randn(32, 64, generator=torch.Generator().manual_seed(2 * step + rank))  # other data per rank
            y = (x @ teacher).argmax(dim=1)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            changes += method.step(opt)
        results[name] = {"topology": topology(method), "params": [p.detach().clone() for p in model.parameters()],
                         "changes": changes, "dynamic": method.dynamic_fraction() > 0}
    safeguard = make_method("rigl", seed=rank, **OPTIONS["rigl"])  # another seed on rank 1, broadcast from rank 0
    safeguard.prepare(mlp(0))
    results["safeguard"] = {"topology": topology(safeguard)}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    # a rank that leaves while the other still reads its last message aborts gloo there (SIGABRT, once in CI)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ranks_agree_on_the_topology(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for name in OPTIONS:
        assert r0[name]["changes"] > 0 or not r0[name]["dynamic"], f"{name}: the topology moved during the run"
        assert all(torch.equal(a, b) for a, b in zip(r0[name]["topology"], r1[name]["topology"])), name
        assert all(torch.equal(a, b) for a, b in zip(r0[name]["params"], r1[name]["params"])), name
    assert all(torch.equal(a, b) for a, b in zip(r0["safeguard"]["topology"], r1["safeguard"]["topology"]))
