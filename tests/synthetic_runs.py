"""Synthetic run folders with the records schema of the inference, training and accuracy suites, for fast tests.

Timings are drawn, not measured: each round has a shared drift factor (the
machine getting slower or faster for every method alike) and each sample
its own log-normal noise, like interleaved rounds on a noisy machine.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dstbench import records, stats

SPEEDUPS = {"dense": 1.0, "rigl": 1.5, "srigl": 3.0, "dynadiag": 4.0}
IMPLS = {"dense": "mkl", "rigl": "mkl-csr", "srigl": "cpu", "dynadiag": "cpu"}
CASES = {"b16-fc1": (768, 3072), "b16-proj": (768, 768)}
ENV = {
    "git_sha": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": False,
    "python": "3.12.0",
    "torch": "2.14.1",
    "cuda": "12.8",
    "cupy": None,
    "cpu_model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
    "cpu_count": 2,
    "gpu_name": None,
    "threads": 2,
    "argv": ["/usr/bin/dstbench", "run", "--suite", "synthetic"],
}
#: test samples of a synthetic accuracy run (digits: 450)
TEST_SIZE = 450


def write_run(path: Path, suite: str, rows: Iterable[dict[str, Any]], **env: Any) -> Path:
    """A run folder at ``path`` holding ``rows``; ``env`` overrides fields of the synthetic environment."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"schema": 1, "suite": suite, "config": {}, "env": {**ENV, **env},
            "started_at": "2025-01-01T00:00:00+0000", "finished_at": "2025-01-01T00:01:00+0000"}
    (path / "run.json").write_text(json.dumps(meta, indent=2))
    rows = list(rows)
    (path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_predictions(path, [row for row in rows if "predictions" in row])
    return path


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    """The files an accuracy row names: labels (10 classes) and predictions right on round(top1 * N) samples.

    Which samples a case gets right is drawn from a generator seeded by its case id.
    """
    if not rows:
        return
    labels = (np.arange(TEST_SIZE) % 10).astype(np.int16)
    (path / "predictions").mkdir(exist_ok=True)
    np.save(path / rows[0]["labels"], labels)
    for row in rows:
        rng = np.random.default_rng(zlib.crc32(row["case_id"].encode()))
        wrong = rng.permutation(TEST_SIZE)[:TEST_SIZE - round(row["top1"] * TEST_SIZE)]
        predictions = labels.copy()
        predictions[wrong] = (labels[wrong] + 1) % 10
        np.save(path / row["predictions"], predictions)


def _burst(rng: np.random.Generator, rounds: int, burst: float) -> np.ndarray:
    """Per-round slowdown factors: 1, except in a random contiguous half of the rounds, uniform in [1, burst]."""
    factors = np.ones(rounds)
    if burst > 1.0:
        span = (rounds + 1) // 2
        start = int(rng.integers(0, rounds - span + 1))
        factors[start:start + span] = rng.uniform(1.0, burst, span)
    return factors


def _ratio(prefix: str, baseline: np.ndarray | None, own: np.ndarray) -> dict[str, float | None]:
    if baseline is None:
        return {prefix: None, f"{prefix}_lo": None, f"{prefix}_hi": None}
    ci = stats.ratio_of_medians(baseline, own, paired=True, n_boot=200)
    return {prefix: ci.ratio, f"{prefix}_lo": ci.lo, f"{prefix}_hi": ci.hi}


def inference_rows(
    *,
    speedups: dict[str, float] | None = None,
    cases: dict[str, tuple[int, int]] | None = None,
    sparsities: tuple[float, ...] = (0.9,),
    batches: tuple[int, ...] = (1, 256),
    rounds: int = 7,
    noise: float = 0.02,
    drift: float = 0.05,
    slow: dict[str, float] | None = None,
    impls: dict[str, str] | None = None,
    burst: float = 1.0,
    dense: dict[str, float] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Inference-suite rows: every method of every (case, sparsity, batch) group, timed in ``rounds`` rounds.

    ``speedups`` gives each method's true speedup over dense (scaled up with
    the density at other sparsities than 0.9); ``slow`` multiplies a method's
    times (2.0 = a kernel made twice as slow); ``noise`` and ``drift`` are the
    log-normal sigmas of the per-sample and per-round factors. ``burst`` > 1
    makes the machine busy for a contiguous half of each group's rounds: every
    sample taken then is slowed by its own factor drawn from [1, burst], as
    when another job takes the cores now and then.

    ``dense`` adds dense implementations besides torch's, as the suite
    records them: impl -> its speed over torch's dense (2.0 = twice as fast).
    Each is a row of method "dense" named ``dense-<impl>`` (``slow`` takes
    that name); every row then carries ``speedup_vs_dense`` against the
    fastest dense (``dense_impl``), ``speedup_vs_torch_dense``,
    ``torch_dense_impl`` and ``dense_impls``.
    """
    speedups = speedups or SPEEDUPS
    cases = cases or CASES
    slow = slow or {}
    impls = {**IMPLS, **(impls or {})}
    variants = {f"dense-{impl}": speed for impl, speed in (dense or {}).items()}
    variants_impl = {f"dense-{impl}": impl for impl in dense or {}}
    rng = np.random.default_rng(seed)
    rows = []
    for case, (fin, fout) in cases.items():
        for batch in batches:
            for sparsity in sparsities:
                dense_s = 2e-9 * fin * fout * max(batch, 8) ** 0.8
                round_factor = rng.lognormal(0.0, drift, rounds)
                times = {}
                for name, speedup in {**speedups, **variants}.items():
                    gain = (speedup if name in variants else 1.0 if name == "dense"
                            else speedup * (0.1 / (1.0 - sparsity)) ** 0.5)
                    base = dense_s / gain * slow.get(name, 1.0)
                    times[name] = base * round_factor * rng.lognormal(0.0, noise, rounds) * _burst(rng, rounds, burst)
                fastest = min(["dense", *variants], key=lambda n: float(np.median(times[n])))
                group_id = f"{case}/{fin}x{fout}/s{sparsity:g}/b{batch}/float32/cpu/t2/l2-warm"
                for name, own in times.items():
                    method = "dense" if name in variants else name
                    pct = stats.percentiles(own)
                    rows.append({
                        "suite": "inference", "case_id": f"{group_id}/{name}", "group_id": group_id,
                        "method": method, "impl": variants_impl.get(name, impls[method]), "case": case, "e2e": False,
                        "in_features": fin, "out_features": fout, "sparsity": sparsity, "batch": batch,
                        "dtype": "float32", "device": "cpu", "threads": 2, "l2": "warm",
                        "nnz": fin * fout if method == "dense" else round(fin * fout * (1 - sparsity)),
                        "n": rounds, "n_inner": 100, "p50_s": pct[50], "p90_s": pct[90], "p99_s": pct[99],
                        **_ratio("speedup_vs_dense", times[fastest], own),
                        **_ratio("speedup_vs_csr", times.get("rigl"), own),
                        "samples_s": own.tolist(),
                        **({"dense_impl": variants_impl.get(fastest, impls["dense"]), "torch_dense_impl": impls["dense"],
                            "dense_impls": [impls["dense"], *dense], **_ratio("speedup_vs_torch_dense", times["dense"], own)}
                           if dense else {}),
                    })
    return rows


def training_rows(*, models: tuple[str, ...] = ("mlp", "vit_tiny"), sparsities: tuple[float, ...] = (0.9, 0.99),
                  batch: int = 128, steps: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """Training-suite rows: step times of every method per (model, sparsity), with speedups over dense and RigL."""
    rng = np.random.default_rng(seed)
    gains = {"dense": 1.0, "rigl": 0.8, "srigl": 1.4, "dynadiag": 1.9}
    rows = []
    for model in models:
        for sparsity in sparsities:
            step = 0.05 if model == "mlp" else 0.2
            times = {m: step / g * rng.lognormal(0.0, 0.05, steps) for m, g in gains.items()}
            for method, own in times.items():
                case_id = f"{model}/s{sparsity:g}/b{batch}/{method}"
                rows.append({
                    "suite": "training", "case_id": case_id, "method": method, "model": model, "sparsity": sparsity,
                    "batch": batch, "dtype": "float32", "device": "cpu", "threads": 2,
                    "samples_per_s": batch / float(np.median(own)),
                    **_ratio("speedup_vs_dense", times["dense"], own),
                    **_ratio("speedup_vs_rigl", times["rigl"], own),
                    "samples_s": own.tolist(),
                })
    return rows


def _same_model_timing(rng: np.random.Generator, method: str, sparsity: float, rounds: int = 5) -> dict[str, Any]:
    """The timing columns of an accuracy row: the model against dense at batch 1 (speedup / 2) and 256."""
    columns: dict[str, Any] = {"inference_impl": IMPLS[method], "dense_inference_impl": IMPLS["dense"]}
    for label, batch, dense_s, scale in (("b1", 1, 5e-5, 0.5), ("beval", 256, 3e-4, 1.0)):
        gain = 1.0 if method == "dense" else scale * SPEEDUPS[method] * (0.1 / (1.0 - sparsity)) ** 0.5
        drift = rng.lognormal(0.0, 0.05, rounds)
        dense = dense_s * drift * rng.lognormal(0.0, 0.02, rounds)
        own = dense_s / gain * drift * rng.lognormal(0.0, 0.02, rounds)
        values = {"batch": batch, "n": rounds, "p50_s": float(np.median(own)), "dense_p50_s": float(np.median(dense)),
                  **_ratio("speedup_vs_dense", dense, own), "samples_s": own.tolist(),
                  "dense_samples_s": dense.tolist()}
        columns.update({records.timed_column(name, label): value for name, value in values.items()})
    return columns


def accuracy_rows(*, sparsities: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99), seeds: tuple[int, ...] = (0, 1, 2),
                  dataset: str = "digits", model: str = "mlp", timed: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """Accuracy-suite rows: top-1 (a multiple of 1 / TEST_SIZE) of every (method, sparsity, seed), the names of its
    prediction files (``write_run`` writes them) and, if ``timed``, its model's speedups over dense; dense is
    recorded at sparsity 0."""
    rng = np.random.default_rng(seed)
    drops = {"rigl": 1.0, "srigl": 1.3, "dynadiag": 1.8}
    rows = []

    def row(method: str, sparsity: float, s: int, top1: float) -> dict[str, Any]:
        case_id = f"{dataset}/{model}/{method}/s{sparsity:g}/seed{s}"
        return {"suite": "accuracy", "case_id": case_id, "method": method,
                "sparsity": sparsity, "seed": s, "dataset": dataset, "model": model,
                "top1": round(top1 * TEST_SIZE) / TEST_SIZE, "sparsity_achieved": sparsity,
                "params": int(70_000 * (1 - sparsity)), "flops": int(140_000 * (1 - sparsity)),
                "predictions": f"predictions/{case_id.replace('/', '_')}.npy", "labels": "predictions/labels.npy",
                **(_same_model_timing(rng, method, sparsity) if timed else {})}

    for s in seeds:
        rows.append(row("dense", 0.0, s, 0.975 + rng.normal(0, 0.003)))
        for method, drop in drops.items():
            for sparsity in sparsities:
                loss = drop * 0.01 * (sparsity / (1 - sparsity)) ** 0.5
                rows.append(row(method, sparsity, s, 0.97 - loss + rng.normal(0, 0.004)))
    return rows
