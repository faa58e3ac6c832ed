"""The README's measurements of call overhead: one layer's calls, a compiled ViT-B/16, and where its forward goes.

``python -m dstbench.call_costs layers``: one inference layer at batch 1,
90% sparse, bias included, ``inference_mode``, 1 thread, median over 15
interleaved rounds of 200 calls of ``time.thread_time`` (CPU time of the
calling thread, in microseconds), three ways per layer:

* ``direct``: the kernel the layer runs, alone: the compiled entry point
  (the packed copy's where the layer reads one at batch 1) called through
  ctypes on prepared pointers with y preallocated (CSR: ``torch.sparse.mm``
  on a CSR tensor kept between calls, no bias);
* ``layer``: the layer as the suites call it;
* ``operator``: the ``torch.ops.dstbench`` operator on the same tensors.

``python -m dstbench.call_costs compile``: torchvision's ViT-B/16 (a random
head: torchvision's is zero) with its 48 encoder linears converted at 90%,
compiled by inductor with ``fullgraph=True`` and exported with
``torch.export``: the largest difference from eager of each, and a batch-1
forward on 1 thread, eager and compiled, CPU time, median of 20 paired calls.

``python -m dstbench.call_costs parts``: where a ViT-B/16 forward at one
image spends its wall time, on 2 threads (``--threads``), for oneDNN's
dense model and the DynaDiag and SRigL models at 90%: the 48 encoder
linears by kind (qkv, proj, fc1, fc2; forward hooks), the shared ops that
every model runs alike (``SHARED_OPS``: the attention core, the GELUs, the
residual adds with their LayerNorms) and everything else (the patch
embedding, the class token, the head and the modules' Python), medians of 10 forwards
after 3 warm-up ones, in milliseconds. The parts that dense and sparse
share bound the end-to-end speedup.

All print Markdown (a table, or one line per method).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from dstbench import registry
from dstbench.kernels import cpu, ops
from dstbench.suites import vit_e2e
from dstbench.suites.inference import build_layer, build_vit

LAYER_SHAPES = ((768, 3072), (64, 64))
LAYER_METHODS = ("dynadiag", "srigl", "rigl")
COMPILE_METHODS = ("dense", "rigl", "srigl", "dynadiag")
PARTS_MODELS = ("dense-onednn", "dynadiag", "srigl")
#: the last name component of each encoder linear of torchvision's ViT (with ``LinearQKVAttention``) -> its kind
LINEAR_KINDS = {"qkv": "qkv", "out_proj": "proj", "0": "fc1", "3": "fc2"}
#: the ``kernels.ops`` functions of the encoder's shared ops (vit_e2e.FusedRowsEncoder) -> their part's name
SHARED_OPS = {"self_attention": "attention", "gelu": "gelu", "add_layer_norm": "add+layernorm"}
SPARSITY = 0.9


def cpu_times_us(fns: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """name -> median per-call CPU time (µs) of ``fns`` over ``rounds`` interleaved rounds of ``calls`` calls."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.thread_time()
            for _ in range(calls):
                fn()
            samples[name].append((time.thread_time() - start) / calls * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def _three_ways(method: str, layer: nn.Module, x: Tensor, out_features: int) -> dict[str, Callable[[], object]]:
    """The direct, layer and operator calls of one layer on x (module docstring)."""
    if method == "rigl":
        csr = torch.sparse_csr_tensor(layer.crow_indices, layer.col_indices, layer.values, (out_features, x.shape[1]),
                                      check_invariants=False)
        xt = x.T.contiguous()
        direct = lambda: torch.sparse.mm(csr, xt)  # noqa: E731
        operator = lambda: torch.ops.dstbench.csr_mm(x, layer.crow_indices, layer.col_indices, layer.values,  # noqa: E731
                                                     out_features, layer.bias)
    else:
        bound = layer._bind(x)
        y = torch.empty(x.shape[0], out_features)
        if isinstance(bound, cpu.BoundCopy) and bound.copies(x.shape[0]):  # the packed copy, which the layer reads
            blob, bias, n, steps = bound._copy_args
            fn, args = bound._copy_fn, (x.data_ptr(), blob, bias, y.data_ptr(), x.shape[0], x.shape[1], out_features,
                                        n, steps, 1)
        else:
            fn, args = bound._fn, (x.data_ptr(), *bound._pointers, y.data_ptr(), x.shape[0], *bound._sizes, 1)
        direct = lambda y=y: fn(*args)  # noqa: E731  (y kept alive with the lambda: the kernel writes it)
        if method == "dynadiag":
            operator = lambda: torch.ops.dstbench.diag_mm(x, layer.offsets, layer.values, out_features, "cpu",  # noqa: E731
                                                          layer.bias)
        else:
            operator = lambda: torch.ops.dstbench.condensed_mm(x, layer.values, layer.indices,  # noqa: E731
                                                               layer.active_rows, out_features, "cpu", layer.bias)
    return {"direct": direct, "layer": lambda: layer(x), "operator": operator}


def layer_costs(shapes: Sequence[tuple[int, int]] = LAYER_SHAPES, methods: Sequence[str] = LAYER_METHODS,
                rounds: int = 15, calls: int = 200) -> list[dict[str, object]]:
    """One row per (shape, method): ``method``, ``in_features``, ``out_features`` and the three times (µs)."""
    torch.set_num_threads(1)
    rows = []
    with torch.inference_mode():
        for fin, fout in shapes:
            torch.manual_seed(0)
            linear = nn.Linear(fin, fout)
            x = torch.randn(1, fin)
            for method in methods:
                layer = build_layer(method, linear, SPARSITY, "auto")
                fns = _three_ways(method, layer, x, fout)
                for fn in fns.values():  # binds the layer, builds the call path
                    fn()
                rows.append({"method": method, "in_features": fin, "out_features": fout,
                             **cpu_times_us(fns, rounds, calls)})
    return rows


def compile_costs(methods: Sequence[str] = COMPILE_METHODS, calls: int = 20) -> list[dict[str, object]]:
    """One row per method: the largest |compiled - eager| and |exported - eager|, the largest |eager| output, and
    the median eager and compiled CPU times (ms) of a batch-1 forward on 1 thread."""
    torch.set_num_threads(1)
    source = vit_e2e.vit_b16(0, torch.device("cpu"), torch.float32)
    nn.init.normal_(source.heads.head.weight, std=0.02)
    x = torch.randn(vit_e2e.IMAGE_SHAPE)
    rows = []
    for method in methods:
        model = vit_e2e.convert(source, registry.make_method(method, sparsity=SPARSITY))
        compiled = torch.compile(model, fullgraph=True)
        with torch.no_grad():
            eager = model(x)
            diff = (compiled(x) - eager).abs().max().item()
            exported = (torch.export.export(model, (x,)).module()(x) - eager).abs().max().item()
            times = cpu_times_us({"eager": lambda: model(x), "compiled": lambda: compiled(x)}, calls, 1)
        rows.append({"method": method, "compiled_diff": diff, "export_diff": exported,
                     "max_abs": eager.abs().max().item(), "eager_ms": times["eager"] / 1e3,
                     "compiled_ms": times["compiled"] / 1e3})
    return rows


@contextlib.contextmanager
def _timed_parts(model: nn.Module, seconds: dict[str, float]) -> Iterator[None]:
    """While open, every forward of ``model`` adds the wall time (s) of its encoder linears, by kind, and of its
    shared ops (``SHARED_OPS``, by wrapping those functions of ``kernels.ops``) to ``seconds``."""
    def timer(kind: str) -> tuple[Callable, Callable]:
        starts: list[float] = []
        def pre(module: nn.Module, args: tuple) -> None:
            starts.append(time.perf_counter())
        def post(module: nn.Module, args: tuple, out: object) -> None:
            seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - starts.pop()
        return pre, post

    handles = []
    for name, module in model.named_modules():
        kind = LINEAR_KINDS.get(name.rsplit(".", 1)[-1])
        if name.startswith("encoder.") and kind is not None:
            pre, post = timer(kind)
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    originals = {name: getattr(ops, name) for name in SHARED_OPS}

    def timed(name: str) -> Callable:
        def call(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                seconds[SHARED_OPS[name]] = seconds.get(SHARED_OPS[name], 0.0) + time.perf_counter() - start
        return call

    for name in SHARED_OPS:
        setattr(ops, name, timed(name))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(ops, name, function)
        for handle in handles:
            handle.remove()


def forward_parts(models: Sequence[str] = PARTS_MODELS, threads: int = 2, forwards: int = 10,
                  warmup: int = 3) -> list[dict[str, float | str]]:
    """One row per model (a dense implementation of ``suites.dense_baselines`` or a method label at 90%): ``model``,
    ``total`` and, per part (``LINEAR_KINDS``' kinds, ``SHARED_OPS``' parts, ``other``), the median over ``forwards``
    forwards of ViT-B/16 at one image on ``threads`` threads, in ms."""
    torch.set_num_threads(threads)
    source = vit_e2e.vit_b16(0, torch.device("cpu"), torch.float32)
    x = torch.randn(vit_e2e.IMAGE_SHAPE)
    rows = []
    for name in models:
        model = build_vit(name, source, SPARSITY, "auto")
        samples: dict[str, list[float]] = {}
        seconds: dict[str, float] = {}
        with torch.inference_mode(), _timed_parts(model, seconds):
            for i in range(warmup + forwards):
                seconds.clear()
                start = time.perf_counter()
                model(x)
                total = time.perf_counter() - start
                if i >= warmup:
                    for part, value in {**seconds, "other": total - sum(seconds.values()), "total": total}.items():
                        samples.setdefault(part, []).append(value * 1e3)
        rows.append({"model": name, **{part: statistics.median(values) for part, values in samples.items()}})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dstbench.call_costs layers|compile|parts``."""
    parser = argparse.ArgumentParser(prog="python -m dstbench.call_costs", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["layers", "compile", "parts"])
    parser.add_argument("--threads", type=int, help="threads of the parts measurement (default 2; layers and "
                                                     "compile run on 1)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.what != "parts":
        parser.error(f"--threads applies to parts only; {args.what} runs on 1 thread")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.what == "parts":
        rows = forward_parts(threads=2 if args.threads is None else args.threads)
        print("| part of the forward | " + " | ".join(r["model"] for r in rows) + " |")
        print("|---|" + "---:|" * len(rows))
        for part in ("total", *LINEAR_KINDS.values(), *SHARED_OPS.values(), "other"):
            print(f"| {part} | " + " | ".join(f"{r.get(part, 0.0):.1f} ms" for r in rows) + " |")
    elif args.what == "layers":
        print("| layer | direct kernel call | layer | through the operator |\n|---|---|---|---|")
        for r in layer_costs():
            print(f"| {r['method']} {r['in_features']}→{r['out_features']} | {r['direct']:.1f} µs | "
                  f"{r['layer']:.1f} µs | {r['operator']:.1f} µs |")
    else:
        for r in compile_costs():
            print(f"- {r['method']}: max |compiled - eager| {r['compiled_diff']:.2g}, max |export - eager| "
                  f"{r['export_diff']:.2g} (outputs up to {r['max_abs']:.3g}); eager {r['eager_ms']:.0f} ms -> "
                  f"compiled {r['compiled_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
