"""The accuracy suite: every (method, sparsity, seed) trains a model; records top-1, achieved sparsity, params, FLOPs.

Cases: each method spec of ``--methods`` at each ``--sparsity`` and
``--seeds``; ``dense`` runs once per seed (sparsity 0). A method spec is a
registered name with optional inline options, ``NAME[:KEY=VALUE...]``, so
variants of one method compare side by side in the same run, e.g.
``--methods srigl,srigl:ablation=false``. ``--option KEY=VALUE`` passes an
option to every method, ``--option METHOD.KEY=VALUE`` to one method.
A row's ``method`` is the spec as written (``srigl:ablation=false``), its
``base_method`` the registered name and ``options`` the resolved method
options. Every spec is prepared once on the model before any training, so
a bad option or a method that cannot sparsify the model (DynaDiag on a
ResNet) is a UserError before anything is written.

Data and model: ``--dataset digits`` (default; scikit-learn's bundled 8x8
digits, an MLP 64-256-256-10), ``cifar10`` (resnet18 or vit_tiny) or
``imagenet`` (resnet50 or vit_b_16) from ``--data-dir`` (``suites/data.py``
gives the layouts). Defaults per dataset and model: ``DEFAULTS``,
``MODEL_DEFAULTS``; per model, a method follows its paper's preset
(``METHOD_DEFAULTS``): SRigL on the ViTs uniform densities and gamma_sal
0.95, RigL on ResNet-50 the first conv dense and the fc sparse.

Each case trains with ``suites/loop.py`` (checkpoints every
``--checkpoint-every`` steps in ``OUT/checkpoints/``); its row is appended
atomically (``RunStore``) and its checkpoint then deleted. Rerunning the same
command into the same ``--out`` skips recorded cases and continues an
unfinished one from its checkpoint.

After training, each case's model is converted with ``to_inference`` and
timed against dense models of the same architecture, one per dense library
(torch's default; on the CPU every linear through oneDNN, and through
OpenBLAS in float32), interleaved in the same process, at batch 1 and at the
evaluation batch (``suites/model_timing.py``; ``--timing-rounds``,
``--timing-min-time``, ``--no-timing``): its row carries
``speedup_vs_dense_b1`` and ``speedup_vs_dense_beval`` (against the fastest
dense model, named in ``dense_impl_b1`` / ``dense_impl_beval``),
``speedup_vs_torch_dense_*``, their intervals, latency percentiles and the
kernels that ran (``inference_impl``). The model's top-1 class of every
test sample is stored as int16 in ``OUT/predictions/<case>.npy`` (the
labels once in ``OUT/predictions/labels.npy``), both named in the row, for
McNemar's test in ``dstbench report``.

Under ``torchrun`` every process trains its shard with DDP (gloo on CPU,
nccl on CUDA); rank 0 alone writes records, checkpoints and progress bars.
For tests, ``DSTBENCH_FINGERPRINT_DIR`` makes every rank append, per case,
hashes of its method state (masks / alpha) and parameters to
``rank<R>.jsonl`` there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dstbench import distributed, records, registry
from dstbench.distributed import World
from dstbench.errors import UserError
from dstbench.methods.base import SparsityMethod
from dstbench import report as reporting
from dstbench.methods.options import accepted, accepts
from dstbench.registry import register_suite
from dstbench.suites import base, data, dense_baselines, loop, model_timing, models
from dstbench.suites.method_specs import MethodSpec, parse_methods, parse_options
from dstbench.table import Column, fmt_ratio_ci, format_table

NAME = "accuracy"
DENSE, RIGL = "dense", "rigl"
FINGERPRINT_ENV = "DSTBENCH_FINGERPRINT_DIR"
METHODS = "dense,rigl,srigl,dynadiag"
#: per dataset: model and training hyper-parameters (explicit options override)
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(model="mlp", epochs=30, batch_size=64, lr=3e-3, optimizer="adam", weight_decay=0.0, warmup=0.0,
                   label_smoothing=0.0, workers=0, checkpoint_every=200),
    "cifar10": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1, optimizer="sgd", weight_decay=5e-4,
                    warmup=0.0, label_smoothing=0.0, workers=4, checkpoint_every=500),
    "imagenet": dict(model="resnet50", epochs=90, batch_size=256, lr=0.1, optimizer="sgd", weight_decay=1e-4,
                     warmup=0.05, label_smoothing=0.1, workers=8, checkpoint_every=1000),
}
#: per model: hyper-parameters that replace the dataset's defaults
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit_tiny": dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup=0.05, label_smoothing=0.1),
    "vit_b_16": dict(optimizer="adamw", lr=5e-4, weight_decay=0.05, warmup=0.05, label_smoothing=0.1),
}
#: per model and method: method options of the method's paper for that architecture
METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "vit_tiny": {"srigl": dict(gamma_sal=0.95, distribution="uniform")},
    "vit_b_16": {"srigl": dict(gamma_sal=0.95, distribution="uniform")},
    # RigL's ImageNet ResNet-50: the first conv dense, the fc layer sparse
    "resnet50": {"rigl": dict(dense_first_layer=True, sparse_head=True)},
}


def method_options(model: str, method: str) -> dict[str, Any]:
    """The options of ``method``'s paper for ``model`` (``METHOD_DEFAULTS``; empty if none)."""
    return dict(METHOD_DEFAULTS.get(model, {}).get(method, {}))


SPARSITY, SEEDS = "0.9", "0"
QUICK = dict(dataset="digits", sparsity="0.9", seeds="0", epochs=15)
MOMENTUM = 0.9
EVAL_BATCH = 256
#: rounds and seconds per timed block of the same-model inference timing (a few seconds per case on digits)
TIMING_ROUNDS, TIMING_MIN_TIME = 7, 0.01
PREDICTIONS = "predictions"
@dataclass(frozen=True)
class Case:
    """One trained model: method spec, target sparsity (0 for dense) and seed."""

    spec: MethodSpec
    sparsity: float
    seed: int

    def case_id(self, dataset: str, model: str) -> str:
        return f"{dataset}/{model}/{self.spec.label}/s{self.sparsity:g}/seed{self.seed}"


@dataclass
class Config:
    """The resolved options of one run (stored in run.json; a resumed run must match them)."""

    dataset: str
    data_dir: str | None
    image_size: int
    model: str
    methods: list[str]
    sparsities: list[float]
    seeds: list[int]
    hyper: dict[str, Any]
    delta_t: int
    distribution: str | None
    impl: str
    options: list[str]
    device: str
    threads: int
    timing: bool
    timing_rounds: int
    timing_min_time: float
    checkpoint_every: int
    quick: bool
    out: str


    def specs(self) -> list[MethodSpec]:
        return parse_methods(",".join(self.methods))

    def cases(self) -> list[Case]:
        """Seeds outermost, so that a partial run holds complete seeds; dense once per seed at sparsity 0."""
        out = []
        for seed in self.seeds:
            for spec in self.specs():
                levels = [0.0] if spec.method == DENSE else self.sparsities
                out += [Case(spec, s, seed) for s in levels]
        return out

    def method_options(self, spec: MethodSpec) -> dict[str, Any]:
        """The method options of a spec: model defaults < --delta-t/--distribution < --option < METHOD.KEY < inline.

        --delta-t and an unscoped --option reach the methods that declare them.
        """
        common, scoped = parse_options(self.options)
        cls = registry.method_class(spec.method)
        common = accepted(cls, common)
        options = {**accepted(cls, {"delta_t": self.delta_t}), **method_options(self.model, spec.method)}
        if self.distribution is not None:
            options["distribution"] = self.distribution
        return {**options, **common, **scoped.get(spec.method, {}), **spec.options}

    def comparable(self) -> dict[str, Any]:
        return comparable(asdict(self))


#: options that may change between a run and its resumption
RESUMABLE = ("threads", "checkpoint_every", "quick", "out", "data_dir", "workers")


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A stored or resolved config, hyper-parameters flattened, without the options a resumed run may change."""
    flat = {**{k: v for k, v in config.items() if k != "hyper"}, **config.get("hyper", {})}
    return {k: v for k, v in flat.items() if k not in RESUMABLE}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options of ``dstbench run --suite accuracy``."""
    parser.add_argument("--quick", action="store_true",
                        help=f"digits, sparsity {QUICK['sparsity']}, seed {QUICK['seeds']}, {QUICK['epochs']} epochs "
                             "(explicit options override)")
    parser.add_argument("--methods", default=METHODS,
                        help=f"comma-separated NAME[:KEY=VALUE...] (default {METHODS}); e.g. srigl,srigl:ablation=false")
    parser.add_argument("--option", action="append", metavar="[METHOD.]KEY=VALUE",
                        help="method option for every method, or for METHOD only; repeatable "
                             "(e.g. --option srigl.gamma_sal=0.5)")
    parser.add_argument("--sparsity", help="comma-separated target sparsities in [0, 1) (default 0.9)")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0)")
    parser.add_argument("--dataset", help=f"one of {', '.join(data.DATASETS)} (default digits)")
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (cifar10) or train/ and val/ (imagenet)")
    parser.add_argument("--model", help=f"one of {', '.join(models.MODELS)} (default: mlp for digits, resnet18 for "
                                        "cifar10, resnet50 for imagenet)")
    parser.add_argument("--epochs", type=int, help="epochs per case (default: digits 30, cifar10 100, imagenet 90)")
    parser.add_argument("--batch-size", type=int, help="global batch size, split over torchrun processes")
    parser.add_argument("--lr", type=float, help="peak learning rate (cosine decay to 0)")
    parser.add_argument("--optimizer", help=f"one of {', '.join(loop.OPTIMIZERS)}")
    parser.add_argument("--weight-decay", type=float, help="weight decay")
    parser.add_argument("--warmup", type=float, help="fraction of the steps with linear LR warm-up")
    parser.add_argument("--label-smoothing", type=float, help="label smoothing of the loss")
    parser.add_argument("--workers", type=int,
                        help="DataLoader worker processes per rank (default: digits 0, cifar10 4, imagenet 8, at most "
                             "the cores per process)")
    parser.add_argument("--image-size", type=int, default=224,
                        help="imagenet only: side of the square crops the model sees (default 224)")
    parser.add_argument("--delta-t", type=int, default=100, help="steps between topology updates (default 100)")
    parser.add_argument("--distribution", choices=("erk", "uniform"),
                        help="layer densities (default: each method's paper default)")
    parser.add_argument("--impl", default="auto", help="kernel of the sparse layers: auto, cpu, cuda or reference")
    parser.add_argument("--threads", type=int, help="intra-op threads per process (default: cores / local processes)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--timing-rounds", type=int, default=TIMING_ROUNDS,
                        help=f"rounds of the inference timing of each trained model against dense (default {TIMING_ROUNDS})")
    parser.add_argument("--timing-min-time", type=float, default=TIMING_MIN_TIME,
                        help=f"seconds each timed block lasts at least (default {TIMING_MIN_TIME})")
    parser.add_argument("--no-timing", action="store_true",
                        help="do not time the trained models (no speedup columns; no accuracy-vs-speedup figure)")
    parser.add_argument("--checkpoint-every", type=int,
                        help="steps between checkpoints inside a case, 0 for none (default: digits 200, cifar10 500, "
                             "imagenet 1000)")
    base.add_out_arguments(parser, NAME)


def _pick(args: argparse.Namespace, key: str, dataset: str, model: str) -> Any:
    value = getattr(args, key, None)
    if value is not None:
        return value
    if args.quick and key in QUICK:
        return QUICK[key]
    value = MODEL_DEFAULTS.get(model, {}).get(key, DEFAULTS[dataset].get(key))
    if key == "workers":
        return min(value, max(1, (os.cpu_count() or 1) // distributed.local_world_size())) if value else 0
    return value


def resolve_config(args: argparse.Namespace) -> Config:
    """Check every option and fill in the defaults; raises UserError before anything is written."""
    dataset = args.dataset or (QUICK["dataset"] if args.quick else "digits")
    if dataset not in data.DATASETS:
        raise UserError(f"--dataset must be one of {', '.join(data.DATASETS)}, got {dataset!r}")
    model = args.model or DEFAULTS[dataset]["model"]
    if model not in models.MODELS:
        raise UserError(f"--model must be one of {', '.join(models.MODELS)}, got {model!r}")
    hyper = loop.Hyper(**{key: _pick(args, key, dataset, model) for key in
                          ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "warmup", "label_smoothing",
                           "workers")}, momentum=MOMENTUM)
    hyper.check()
    specs = parse_methods(args.methods)
    common, _ = parse_options(args.option)
    for key in common:
        if not any(accepts(registry.method_class(spec.method), key) for spec in specs):
            raise UserError(f"--option {key}: none of the methods {', '.join(s.label for s in specs)} has that option; "
                            "check its name (options are listed with dstbench list)")
    sparsities = base.sparsities(args.sparsity or (QUICK["sparsity"] if args.quick else SPARSITY))
    seeds = base.parse_list(args.seeds or (QUICK["seeds"] if args.quick else SEEDS), int, "seeds")
    if not sparsities or not seeds:
        raise UserError("--sparsity and --seeds need at least one value each")
    if args.impl not in ("auto", "cpu", "cuda", "reference"):
        raise UserError(f"--impl must be auto, cpu, cuda or reference, got {args.impl!r}")
    checkpoint_every = _pick(args, "checkpoint_every", dataset, model)
    if checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    timing_rounds = base.rounds(args.timing_rounds, "--timing-rounds")
    timing_min_time = base.min_time(args.timing_min_time, "--timing-min-time")
    if args.image_size < 16:
        raise UserError(f"--image-size must be >= 16 pixels, got {args.image_size}")
    device = base.resolve_device(args.device)
    threads = args.threads if args.threads is not None else max(1, (os.cpu_count() or 1) // distributed.local_world_size())
    return Config(
        dataset=dataset, data_dir=args.data_dir, image_size=args.image_size, model=model, methods=[s.label for s in specs], sparsities=sparsities,
        seeds=list(dict.fromkeys(seeds)), hyper=loop.hyper_dict(hyper), delta_t=args.delta_t,
        distribution=args.distribution, impl=args.impl, options=list(args.option or []), device=device.type,
        threads=base.set_threads(threads), timing=not args.no_timing, timing_rounds=timing_rounds,
        timing_min_time=timing_min_time, checkpoint_every=checkpoint_every, quick=args.quick,
        out=str(args.out or records.default_out(NAME)),
    )


def _slug(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=\-]+", "_", case_id)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _inference_model(method: SparsityMethod, model: nn.Module,
                     example: torch.Tensor) -> tuple[nn.Module | None, float | None]:
    """``method.to_inference(model)`` in eval mode and max |its logits - model's logits| on ``example``;
    (None, None), with a warning, if it cannot run."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            fast = method.to_inference(model).eval()
            with torch.no_grad():
                was_training = model.training
                model.eval()
                gap = (fast(example) - model(example)).abs().max().item()
                model.train(was_training)
        return fast, gap
    except (RuntimeError, NotImplementedError) as exc:
        warnings.warn(f"{method.name}: the inference-format check could not run ({exc})", stacklevel=2)
        return None, None


def _time_inference(fast: nn.Module, case: Case, config: Config, dataset: data.Data, world: World) -> dict[str, Any]:
    """The same-model timing columns (``suites/model_timing.py``) of ``fast`` against a dense model of its
    architecture, at batch 1 and at the evaluation batch of test inputs, plus the kernels each ran."""
    dense = registry.make_method(DENSE).to_inference(
        models.build(config.model, dataset.shape, dataset.classes, case.seed).to(world.device)).eval()
    inputs = {label: loop.example_batch(dataset.test, batch, world.device)
              for label, batch in zip(records.TIMED_BATCHES, (1, EVAL_BATCH))}
    denses = _runnable(dense_baselines.models(dense, world.device.type, next(dense.parameters()).dtype), inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        columns = model_timing.time_against_dense(fast, denses, inputs, rounds=config.timing_rounds,
                                                  min_time=config.timing_min_time, threads=config.threads,
                                                  device=world.device)
    return {"inference_impl": model_timing.kernel_impls(fast), "dense_inference_impl": model_timing.kernel_impls(dense),
            **columns}


def _runnable(denses: dict[str, nn.Module], inputs: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """The dense models (torch's default first) that run every input; any other is left out with a warning."""
    out = {}
    for i, (name, model) in enumerate(denses.items()):
        try:
            with torch.inference_mode():
                for x in inputs.values():
                    model(x)
            out[name] = model
        except (RuntimeError, NotImplementedError) as exc:
            if i == 0:
                raise
            warnings.warn(f"dense baseline {name} cannot run this model ({str(exc).splitlines()[0]}); leaving it out",
                          stacklevel=2)
    return out


def _write_predictions(folder: Path, case_id: str, predictions: torch.Tensor, labels: torch.Tensor,
                       write: bool) -> dict[str, str]:
    """The row's ``predictions`` and ``labels`` columns: files, relative to the run folder, holding the top-1
    class of every test sample (int16, int32 beyond 32767 classes) and the labels, written atomically if ``write``."""
    names = {"predictions": f"{PREDICTIONS}/{_slug(case_id)}.npy", "labels": f"{PREDICTIONS}/labels.npy"}
    if write:
        (folder / PREDICTIONS).mkdir(parents=True, exist_ok=True)
        dtype = np.int16 if max(int(labels.max()), int(predictions.max())) <= np.iinfo(np.int16).max else np.int32
        for key, values in (("predictions", predictions), ("labels", labels)):
            buffer = io.BytesIO()
            np.save(buffer, values.numpy().astype(dtype))
            records.atomic_write_bytes(folder / names[key], buffer.getvalue())
    return names


def _dump_fingerprint(case_id: str, method: SparsityMethod, model: nn.Module, world: World) -> None:
    folder = os.environ.get(FINGERPRINT_ENV)
    if not folder:
        return
    line = {"case_id": case_id, "rank": world.rank, "topology": distributed.fingerprint(method.state_dict()),
            "params": distributed.fingerprint(model.state_dict())}
    with open(Path(folder) / f"rank{world.rank}.jsonl", "a") as handle:
        handle.write(json.dumps(line) + "\n")


def run_case(case: Case, config: Config, dataset: data.Data, world: World,
             folder: Path) -> tuple[dict[str, Any], loop.Checkpoint]:
    """Train, evaluate and summarise one case (resuming its checkpoint); its row and checkpoint (on every rank)."""
    hyper = loop.Hyper(**config.hyper)
    case_id = case.case_id(config.dataset, config.model)
    total = hyper.epochs * loop.steps_per_epoch(len(dataset.train), hyper, world)
    options = config.method_options(case.spec)
    _seed_everything(case.seed)
    model = models.build(config.model, dataset.shape, dataset.classes, case.seed).to(world.device)
    method = registry.make_method(case.spec.method, sparsity=case.sparsity, total_steps=total, seed=case.seed,
                                  impl=config.impl, **options)
    model = method.prepare(model)
    signature = {"case_id": case_id, "config": config.comparable(), "world_size": world.size}
    checkpoint = loop.Checkpoint(folder / "checkpoints" / f"{_slug(case_id)}.pt", config.checkpoint_every, signature)
    outcome = loop.train(model, method, dataset.train, hyper, world, seed=case.seed, checkpoint=checkpoint,
                         desc=f"{case.spec.label} s={case.sparsity:g} seed={case.seed}")
    start = time.perf_counter()
    predictions, labels = loop.predict(model, dataset.test, EVAL_BATCH, world, hyper.workers)
    eval_time = time.perf_counter() - start
    example = loop.example_batch(dataset.test, 2, world.device)
    summary = method.summary(model, example)
    _dump_fingerprint(case_id, method, model, world)
    fast, gap = _inference_model(method, model, example)
    timed = _time_inference(fast, case, config, dataset, world) if config.timing and fast is not None and world.is_main else {}
    return {
        "suite": NAME,
        "case_id": case_id,
        "dataset": config.dataset,
        "model": config.model,
        "method": case.spec.label,
        "base_method": case.spec.method,
        "options": options,
        "sparsity": case.sparsity,
        "seed": case.seed,
        "top1": (predictions == labels).double().mean().item(),
        **_write_predictions(folder, case_id, predictions, labels, world.is_main),
        "sparsity_achieved": summary["sparsity"],
        "params": summary["params"],
        "flops": summary["flops"],
        "impl": loop.training_impl(model, method),
        "inference_format": method.inference_format,
        "inference_max_abs_diff": gap,
        **timed,
        "train_time_s": outcome.train_time_s,
        "eval_time_s": eval_time,
        "steps": outcome.steps,
        "epochs": outcome.epochs,
        "final_loss": outcome.final_loss,
        "resumed_from_step": outcome.resumed_from,
        **{k: v for k, v in config.hyper.items() if k != "workers"},
        "device": world.device.type,
        "threads": config.threads,
        "world_size": world.size,
        "train_size": len(dataset.train),
        "test_size": len(dataset.test),
    }, checkpoint


def _speedup_cell(row: dict[str, Any], label: str) -> str:
    value, lo, hi = (row.get(records.timed_column(name, label)) for name in
                     ("speedup_vs_dense", "speedup_vs_dense_lo", "speedup_vs_dense_hi"))
    return fmt_ratio_ci(value, lo, hi)


def summary_table(rows: list[dict[str, Any]]) -> str:
    """One line per case: method variant, sparsity, seed, top-1 %, achieved sparsity, params, FLOPs, time, and
    the inference speedup over dense of the same model at batch 1 and at the evaluation batch, with 95% intervals."""
    return format_table(rows, [
        Column("method", "method"),
        Column("sparsity", lambda r: f"{r['sparsity']:g}", ">"),
        Column("seed", "seed", ">"),
        Column("top-1 %", lambda r: f"{100 * r['top1']:.2f}", ">"),
        Column("achieved", lambda r: f"{r['sparsity_achieved']:.3f}", ">"),
        Column("params", lambda r: f"{r['params']:,.0f}", ">"),
        Column("MFLOPs", lambda r: f"{r['flops'] / 1e6:.3f}", ">"),
        Column("impl", "impl"),
        Column("train s", lambda r: f"{r['train_time_s']:.1f}", ">"),
        Column("steps", "steps", ">"),
        Column("vs dense b1 [95% CI]", lambda r: _speedup_cell(r, "b1"), ">"),
        Column(f"vs dense b{EVAL_BATCH} [95% CI]", lambda r: _speedup_cell(r, "beval"), ">"),
    ])


def check_methods_fit(config: Config, dataset: data.Data) -> None:
    """Prepare every method spec once on the run's model, so that a method that cannot sparsify it
    (e.g. DynaDiag, Linear layers only, on a ResNet whose only Linear is the head) fails before any training."""
    for spec in config.specs():
        model = models.build(config.model, dataset.shape, dataset.classes, seed=0)
        method = registry.make_method(spec.method, sparsity=max(config.sparsities), total_steps=1, impl=config.impl,
                                      **config.method_options(spec))
        try:
            method.prepare(model)
        except UserError as exc:
            raise UserError(f"--methods {spec.label} cannot train {config.model}: {exc} "
                            f"(as an option: --option {spec.method}.KEY=VALUE)") from None


def run(args: argparse.Namespace) -> int:
    """``dstbench run --suite accuracy``: validate, load data, join torchrun's group if any, train every pending case."""
    config = resolve_config(args)
    dataset = data.load(config.dataset, config.data_dir, config.image_size)
    check_methods_fit(config, dataset)
    folder = dict(config=asdict(config), threads=config.threads, may_change=RESUMABLE, new_segment=args.new_segment)
    records.check_folder(Path(config.out), NAME, **folder)  # on every rank, before any of them starts
    world = distributed.init(torch.device(config.device))
    try:
        with records.RunStore(Path(config.out), NAME, **folder) if world.is_main else contextlib.nullcontext() as store:
            return _run(config, dataset, world, store)
    finally:
        distributed.shutdown(world)


def _run(config: Config, dataset: data.Data, world: World, store: records.RunStore | None) -> int:
    """Train every case ``store`` (rank 0's; None on the other ranks) has not recorded."""
    if world.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    done = distributed.broadcast_object(sorted(store.done) if store else None, world)
    cases = config.cases()
    ids = [c.case_id(config.dataset, config.model) for c in cases]
    pending = [c for c, case_id in zip(cases, ids) if case_id not in done]
    if world.is_main and len(pending) < len(cases):
        print(f"dstbench: resuming {config.out}: {len(cases) - len(pending)} of {len(cases)} cases already recorded",
              file=sys.stderr)
    start = time.perf_counter()
    for number, case in enumerate(pending, start=1):
        if world.is_main:
            print(f"[{number}/{len(pending)}] {case.case_id(config.dataset, config.model)}", file=sys.stderr)
        row, checkpoint = run_case(case, config, dataset, world, Path(config.out))
        if store is not None:
            store.append(row)
            checkpoint.delete()
        distributed.barrier(world)
    if store is None:
        return 0
    store.finish()
    checkpoints = Path(config.out) / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    by_id = {row["case_id"]: row for row in store.rows}
    print(summary_table([by_id[i] for i in ids if i in by_id]))
    print(f"{len(pending)} cases trained in {time.perf_counter() - start:.1f} s on {world.size} process(es); "
          f"records in {config.out}")
    return 0


SUITE = register_suite(NAME)(
    base.Suite(NAME, "train and evaluate each method (top-1, sparsity, FLOPs)", add_arguments, run,
               required=("method", "sparsity", "seed", "top1"), report=reporting.accuracy_sections,
               references=(base.Reference(DENSE, "dense"), base.Reference(RIGL, "RigL", same_sparsity=True))))
