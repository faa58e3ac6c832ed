"""The inference suite run in-process on tiny shapes: rows, ratios, resume, e2e conversion, cold caches, the token
stack, bytes and bandwidth, the roofline figure (correctness only, no timing assertions)."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer

from dstbench import bandwidth, core_latency, cuda_graphs, records, registry, timing
from dstbench.cli import main
from dstbench.errors import UserError
from dstbench.kernels import ops
from dstbench.kernels.formats import CondensedWeight, DiagonalWeight
from dstbench.kernels.layers import CondensedLinear, CSRLinear, DenseLinear, DiagonalLinear
from dstbench.suites import dense_baselines, inference, token_stack, traffic, vit_e2e
from vit_harness import tiny_vit, use_tiny_vit

TINY = ["--cases", "32x48", "--sparsity", "0.5", "--batch", "2", "--rounds", "3", "--min-time", "0.001",
        "--no-e2e", "--threads", "1", "--l2", "warm"]
COLUMNS = {"suite", "method", "impl", "case", "in_features", "out_features", "sparsity", "batch", "dtype", "device",
           "threads", "n", "p50_s", "p90_s", "p99_s", "speedup_vs_dense", "speedup_vs_csr", "case_id", "n_inner",
           "samples_s", "l2", "nnz", "speedup_vs_dense_lo", "speedup_vs_dense_hi", "speedup_vs_csr_lo",
           "speedup_vs_csr_hi", "speedup_vs_torch_dense", "speedup_vs_torch_dense_lo", "speedup_vs_torch_dense_hi",
           "dense_impl", "torch_dense_impl", "dense_impls", "bytes", "gbps", "ceiling_gbps", "limit_frac", "bw_probe",
           "launch", "evict_bytes", "core_rtt_ns"}

#: the methods a run times by default: the dense and CSR baselines first, then every other registered method
TIMED = list(dict.fromkeys(["dense", "rigl", *registry.list_methods()]))
#: the dense implementations of a float32 CPU layer group (torch's default first), and all the group's rows
DENSE = dense_baselines.candidates("cpu", torch.float32)
ROWS = DENSE + TIMED[1:]
CPU = torch.device("cpu")
#: the machine's own last-level cache reader (the fixture below replaces it by a small one)
MACHINE_LLC = timing.llc_bytes
#: the "last-level cache" of these tests, so that the eviction buffer and the probe stay small
SMALL_LLC = 4 * 2**20


@pytest.fixture(autouse=True)
def small_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(timing, "llc_bytes", lambda device=CPU: (SMALL_LLC, "test"))
    timing._evictor.cache_clear()
    yield
    timing._evictor.cache_clear()


def names(frame) -> list[str]:  # noqa: ANN001
    """The row names (the last part of the case ids) of a records frame."""
    return [case_id.rsplit("/", 1)[1] for case_id in frame["case_id"]]


def run(out: Path, *extra: str) -> int:
    return main(["run", "--suite", "inference", *TINY, "--out", str(out), *extra])


def count_groups(monkeypatch: pytest.MonkeyPatch, fail_on: int | None = None) -> list[str]:
    """Wrap measure_group to record the groups it times; raise KeyboardInterrupt on call number ``fail_on``."""
    seen: list[str] = []
    real = inference.measure_group

    def wrapped(group, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen.append(group.group_id)
        if fail_on is not None and len(seen) == fail_on:
            raise KeyboardInterrupt
        return real(group, *args, **kwargs)

    monkeypatch.setattr(inference, "measure_group", wrapped)
    return seen


def test_rows_columns_and_ratios(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(tmp_path / "r") == 0
    frame = records.load(tmp_path / "r")
    assert COLUMNS <= set(frame.columns)
    frame = frame.set_index(pd.Index(names(frame)))
    assert list(frame.index) == ROWS
    assert list(frame["method"]) == ["dense"] * len(DENSE) + TIMED[1:]
    assert frame["case_id"].is_unique and frame["group_id"].nunique() == 1
    assert set(frame["l2"]) == {"warm"} and set(frame["threads"]) == {1} and set(frame["n"]) == {3}
    dense = frame.loc[DENSE]
    fastest = dense["p50_s"].idxmin()
    torch_p50, csr_p50 = frame.loc["dense", "p50_s"], frame.loc["rigl", "p50_s"]
    for _, row in frame.iterrows():
        assert len(row["samples_s"]) == 3
        assert row["p50_s"] == pytest.approx(np.median(row["samples_s"]))
        assert row["p50_s"] <= row["p90_s"] <= row["p99_s"] <= max(row["samples_s"])
        assert row["speedup_vs_dense"] == pytest.approx(dense["p50_s"].min() / row["p50_s"])
        assert row["speedup_vs_torch_dense"] == pytest.approx(torch_p50 / row["p50_s"])
        assert row["speedup_vs_csr"] == pytest.approx(csr_p50 / row["p50_s"])
        for name in ("speedup_vs_dense", "speedup_vs_torch_dense", "speedup_vs_csr"):
            assert row[f"{name}_lo"] <= row[name] <= row[f"{name}_hi"]
        assert row["dense_impl"] == frame.loc[fastest, "impl"] and row["torch_dense_impl"] == frame.loc["dense", "impl"]
        assert row["dense_impls"] == list(dense["impl"])
    assert frame.loc[fastest, "speedup_vs_dense"] == 1.0 and frame.loc["dense", "speedup_vs_torch_dense"] == 1.0
    assert frame.loc["rigl", "speedup_vs_csr"] == 1.0
    assert list(dense["impl"]) == [frame.loc["dense", "impl"], *(b.impl for n, b in dense_baselines.BUILDERS.items()
                                                                  if n in DENSE)]
    assert (dense["nnz"] == 32 * 48).all()
    assert (frame.drop(index=DENSE)["nnz"] == 768).all()
    assert frame.loc["rigl", "impl"] in ("mkl-csr", "aten-csr")
    fast = ops.select_impl("cpu", torch.float32)
    assert frame.loc["srigl", "impl"] == frame.loc["dynadiag", "impl"] == fast
    table = capsys.readouterr().out
    header, _, *lines = table.splitlines()[:2 + len(ROWS)]
    assert re.split(r"\s{2,}", header.strip())[-6:] == ["vs dense [95% CI]", "dense", "vs torch dense [95% CI]",
                                                         "vs CSR [95% CI]", "GB/s", "limit"]
    assert [line.split()[0] for line in lines] == list(frame["method"])
    assert [line.split()[4] for line in lines] == list(frame["impl"])
    assert {line.split("]")[1].split()[0] for line in lines} == {frame.loc[fastest, "impl"]}  # the dense column
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def fake_interleaved(times: dict[str, float]):  # noqa: ANN201
    """A stand-in for timing.interleaved: ``times[name]`` seconds per call (5e-4 for other names), wobbling by round."""

    def interleaved(fns, *, rounds: int, **_) -> dict[str, timing.Samples]:  # noqa: ANN001, ANN003
        return {name: timing.Samples(1, [times.get(name, 5e-4) * (1 + 0.01 * (r % 3)) for r in range(rounds)])
                for name in fns}

    return interleaved


def test_speedups_are_against_the_fastest_dense_and_torch_dense_keeps_its_column(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense_baselines, "candidates", lambda device, dtype: list(dense_baselines.NAMES))
    monkeypatch.setattr(timing, "interleaved", fake_interleaved({"dense": 4e-4, "dense-onednn": 3e-4,
                                                                 "dense-openblas": 1e-4, "srigl": 2e-4}))
    assert run(tmp_path / "r", "--methods", "srigl", "--impl", "reference") == 0
    frame = records.load(tmp_path / "r")
    frame = frame.set_index(pd.Index(names(frame)))
    assert set(frame["dense_impl"]) == {"openblas"}
    assert frame["speedup_vs_dense"].to_dict() == pytest.approx(
        {"dense": 0.25, "dense-onednn": 1 / 3, "dense-openblas": 1.0, "rigl": 0.2, "srigl": 0.5})
    assert frame["speedup_vs_torch_dense"].to_dict() == pytest.approx(
        {"dense": 1.0, "dense-onednn": 4 / 3, "dense-openblas": 4.0, "rigl": 0.8, "srigl": 2.0})


def test_a_dense_baseline_that_cannot_run_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    def broken(linear: nn.Linear) -> nn.Module:
        raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(dense_baselines, "candidates", lambda device, dtype: list(dense_baselines.NAMES))
    monkeypatch.setitem(dense_baselines.BUILDERS, dense_baselines.ONEDNN, broken)
    assert run(tmp_path / "r", "--methods", "dense") == 0
    assert ("warning: dense baseline dense-onednn cannot run in float32 on cpu (no oneDNN kernel for this CPU); "
            "leaving it out") in capsys.readouterr().err
    frame = records.load(tmp_path / "r")
    assert names(frame) == ["dense", "dense-openblas", "rigl"]
    assert set(frame["dense_impls"].map(tuple)) == {(frame["impl"].iloc[0], "openblas")}
    assert records.read_meta(tmp_path / "r")["config"]["dense"] == ["dense", "dense-openblas"]


def test_requested_impl_is_recorded_and_quick_leaves_out_slow_e2e(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [a for a in TINY if a != "--no-e2e"]
    assert main(["run", "--suite", "inference", *argv, "--impl", "reference", "--methods", "srigl", "--quick",
                 "--out", str(tmp_path / "r")]) == 0
    frame = records.load(tmp_path / "r")
    assert list(frame["method"]) == ["dense"] * len(DENSE) + ["rigl", "srigl"]  # the baselines are always timed
    assert frame.set_index("method").loc["srigl", "impl"] == "reference"
    assert "left out of --quick" in capsys.readouterr().out
    assert records.read_meta(tmp_path / "r")["config"]["e2e"] is False


def test_resume_skips_recorded_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r"
    assert run(out) == 0
    seen = count_groups(monkeypatch)
    assert run(out) == 0
    methods = len(ROWS)
    assert seen == [] and len(records.read_rows(out)) == methods
    assert "resuming" in capsys.readouterr().err
    assert run(out, "--batch", "2,3") == 2  # other options: refused, nothing measured
    assert seen == [] and "options.batches [2] -> [2, 3]" in capsys.readouterr().err
    assert run(out, "--batch", "2,3", "--new-segment") == 0
    assert len(seen) == 1 and "/b3/" in seen[0]
    assert [row["segment"] for row in records.read_rows(out)] == [0] * methods + [1] * methods


def test_interrupted_run_keeps_whole_groups_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r"
    count_groups(monkeypatch, fail_on=2)
    methods = len(ROWS)
    assert run(out, "--batch", "2,3") == 130
    assert len(records.read_rows(out)) == methods
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    seen = count_groups(monkeypatch)
    assert run(out, "--batch", "2,3") == 0
    assert len(seen) == 1 and len(records.read_rows(out)) == 2 * methods


def test_method_without_dtype_support(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """CPU CSR has no float16 kernel: an error when named in --methods, a dropped baseline otherwise."""
    assert run(tmp_path / "a", "--dtype", "float16", "--methods", "rigl") == 2
    assert not (tmp_path / "a").exists()
    assert "rigl cannot run in float16" in capsys.readouterr().err.splitlines()[-1]
    assert run(tmp_path / "b", "--dtype", "float16", "--methods", "dense,srigl", "--impl", "reference") == 0
    frame = records.load(tmp_path / "b")
    dense = dense_baselines.candidates("cpu", torch.float16)  # oneDNN float16 needs AVX512-FP16 (else dropped)
    assert "dense-openblas" not in dense and names(frame)[0] == "dense" and names(frame)[-1] == "srigl"
    assert set(names(frame)[:-1]) <= set(dense)
    assert frame["speedup_vs_csr"].isna().all() and set(frame["dtype"]) == {"float16"}


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    inference.add_arguments(parser)
    return parser.parse_args(argv)


def test_quick_presets_and_overrides() -> None:
    quick = inference.resolve_config(_parse("--quick", "--threads", "1"))
    assert list(quick.cases) == ["b16-fc1"] and quick.cases["b16-fc1"] == (768, 3072)
    assert quick.sparsities == [0.9] and quick.batches == [1, 256] and quick.e2e
    assert quick.e2e_rounds == inference.QUICK_E2E_ROUNDS and quick.methods == TIMED
    custom = inference.resolve_config(_parse("--quick", "--batch", "4", "--rounds", "5", "--threads", "1"))
    assert custom.batches == [4] and custom.rounds == custom.e2e_rounds == 5
    full = inference.resolve_config(_parse("--threads", "1"))
    assert list(full.cases) == ["b16-qkv", "b16-proj", "b16-fc1", "b16-fc2", "b16-stack"]
    assert full.l2 == ["warm", "cold"]
    # 4 layer shapes x 4 sparsities x 3 batches and the stack at batch 1 x 4 sparsities, warm and cold; e2e warm
    assert len(full.groups()) == (4 * 4 * 3 + 4) * 2 + 4
    assert {g.batch for g in full.groups() if g.stack} == {1}
    assert {g.l2 for g in full.groups() if g.e2e} == {"warm"}
    assert full.out.startswith("results/inference-")
    chosen = inference.resolve_config(_parse("--quick", "--l2", "cold,warm", "--threads", "1"))
    assert chosen.l2 == ["cold", "warm"]


def test_cold_groups_take_three_times_the_rounds_unless_told() -> None:
    full = inference.resolve_config(_parse("--threads", "1"))
    assert (full.rounds, full.cold_rounds, full.e2e_rounds) == (10, 30, 10)
    by_mode = {(g.l2, g.e2e): full.rounds_of(g) for g in full.groups()}
    assert by_mode == {("warm", False): 10, ("cold", False): 30, ("warm", True): 10}
    assert inference.resolve_config(_parse("--rounds", "4", "--threads", "1")).cold_rounds == 12
    assert inference.resolve_config(_parse("--rounds", "4", "--cold-rounds", "5", "--threads", "1")).cold_rounds == 5
    with pytest.raises(UserError, match="--cold-rounds must be >= 2"):
        inference.resolve_config(_parse("--cold-rounds", "1", "--threads", "1"))


def test_quick_row_ids_are_unchanged() -> None:
    """CI compares --quick runs against a committed baseline by case id: warm only, the ids they always had."""
    quick = inference.resolve_config(_parse("--quick", "--threads", "2"))
    assert quick.l2 == ["warm"]
    assert [g.group_id for g in quick.groups()] == [
        "b16-fc1/768x3072/s0.9/b1/float32/cpu/t2/l2-warm", "b16-fc1/768x3072/s0.9/b256/float32/cpu/t2/l2-warm",
        "vit_b16/e2e/s0.9/b1/float32/cpu/t2/l2-warm"]


def test_case_names_and_shapes() -> None:
    assert inference.parse_cases("b16-qkv, 64x128,l16-fc1") == {"b16-qkv": (768, 2304), "64x128": (64, 128),
                                                                 "l16-fc1": (1024, 4096)}
    assert inference.parse_cases("l16,h14-fc2,b16-stack") == {
        "l16-qkv": (1024, 3072), "l16-proj": (1024, 1024), "l16-fc1": (1024, 4096), "l16-fc2": (4096, 1024),
        "h14-fc2": (5120, 1280), "b16-stack": (768, 768)}
    assert list(inference.parse_cases("h14")) == ["h14-qkv", "h14-proj", "h14-fc1", "h14-fc2"]
    assert inference.parse_cases("h14")["h14-fc1"] == (1280, 5120) and inference.parse_cases("h14-qkv") == {
        "h14-qkv": (1280, 3840)}


def test_launch_modes_and_their_group_ids() -> None:
    """Eager groups keep the ids they always had; graph groups (CUDA only) get their own, end to end too."""
    assert inference.resolve_config(_parse("--quick", "--threads", "1")).launch == ["eager"]
    with pytest.raises(UserError, match="--launch graph replays CUDA graphs; use it with --device cuda"):
        inference.resolve_config(_parse("--quick", "--launch", "graph", "--threads", "1"))
    with pytest.raises(UserError, match="--launch takes a comma-separated list of eager, graph"):
        inference.parse_launch("eager,replay", torch.device("cuda"))
    config = inference.resolve_config(_parse("--quick", "--threads", "1"))
    config.launch = inference.parse_launch("eager,graph", torch.device("cuda"))
    ids = [g.group_id for g in config.groups()]
    assert ids[:2] == ["b16-fc1/768x3072/s0.9/b1/float32/cpu/t1/l2-warm",
                       "b16-fc1/768x3072/s0.9/b1/float32/cpu/t1/l2-warm/graph"]
    assert ids[-1] == "vit_b16/e2e/s0.9/b1/float32/cpu/t1/l2-warm/graph" and len(set(ids)) == len(ids) == 6


@pytest.mark.parametrize("failing, timed", [("rigl", ["srigl", "dynadiag"]), ("dense", [])])
def test_a_row_that_cannot_be_captured_is_left_out_with_a_note(failing: str, timed: list[str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    """Graph mode (faked on the CPU): a sparse row that cannot be captured drops out of its group, which is timed
    without it; a dense one drops the group, whose reference it is. Either way the run goes on and says so."""
    monkeypatch.setattr(inference, "parse_launch", lambda text, device: ["graph"])

    def fake_capture(fn, device, name):
        if name == failing:
            raise cuda_graphs.CaptureError(f"{name} cannot be captured in a CUDA graph (stand-in)")
        return fn

    monkeypatch.setattr(cuda_graphs, "captured", fake_capture)
    assert run(tmp_path / "r", "--methods", "srigl,dynadiag") == 0
    rows = records.load(tmp_path / "r") if timed else None
    out = capsys.readouterr().out
    assert f"{failing} cannot be captured in a CUDA graph (stand-in)" in out and "not timed" in out
    if timed:
        timed_names = names(rows)
        assert "rigl" not in timed_names and timed_names[0] == "dense" and timed_names[-2:] == timed
        assert set(rows["launch"]) == {"graph"} and rows["speedup_vs_csr"].isna().all()


@pytest.mark.parametrize("text", ["hot", "", "warm,flushed"])
def test_unknown_cache_mode_is_refused(text: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(tmp_path / "r", "--l2", text) == 2
    assert "--l2 takes a comma-separated list of warm, cold" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_evict_factor_sizes_the_cold_eviction_and_the_probe(tmp_path: Path) -> None:
    assert run(tmp_path / "r", "--l2", "warm,cold", "--evict-factor", "3") == 0
    frame = records.load(tmp_path / "r")
    assert (frame[frame["l2"] == "cold"]["evict_bytes"] == 3 * SMALL_LLC).all()
    assert frame[frame["l2"] == "warm"]["evict_bytes"].isna().all()
    assert {p["bytes"][-1] for p in frame["bw_probe"]} == {3 * SMALL_LLC}  # the probe's beyond-cache buffer
    assert timing.evictor(CPU, 3).nbytes == 3 * SMALL_LLC
    assert json.loads((tmp_path / "r" / "run.json").read_text())["segments"][-1]["config"]["evict_factor"] == 3.0


def test_cold_rows_of_other_eviction_buffers_are_not_compared(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(tmp_path / "a", "--l2", "warm,cold") == 0
    assert run(tmp_path / "b", "--l2", "warm,cold", "--evict-factor", "2") == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json"]) in (0, 1)
    comparisons = json.loads(capsys.readouterr().out)["comparisons"]
    cold = [c for c in comparisons if "l2=cold" in c["case"]]
    assert cold and {c["status"] for c in cold} == {"not comparable"}
    assert all(f"evict_bytes {int(1.5 * SMALL_LLC)} -> {2 * SMALL_LLC}" in c["note"] for c in cold)
    assert {c["status"] for c in comparisons if "l2=cold" not in c["case"]} != {"not comparable"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--evict-factor", "0.5"], "--evict-factor must be between 1 (the last-level cache itself) and 64, got 0.5"),
    (["--evict-factor", "100"], "--evict-factor must be between 1 (the last-level cache itself) and 64, got 100"),
])
def test_bad_evict_factor_is_refused(extra: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    assert run(tmp_path / "r", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_evict_factor_is_cpu_only() -> None:
    with pytest.raises(UserError, match="--evict-factor sizes the CPU's eviction buffer; on cuda"):
        inference._evict_factor(2.0, torch.device("cuda"))


def test_linear_qkv_attention_equals_multihead_attention() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    attn = vit_e2e.LinearQKVAttention.from_mha(mha).eval()
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(attn(x, x, x)[0], mha(x, x, x, need_weights=False)[0])
    torch.manual_seed(1)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    images = torch.randn(2, 3, 32, 32)
    expected = model(images)
    torch.testing.assert_close(vit_e2e.with_linear_qkv(model)(images), expected)


def test_convert_replaces_encoder_linears_only() -> None:
    from dstbench.registry import make_method

    model = tiny_vit(0, torch.device("cpu"), torch.float32)
    sparse = vit_e2e.convert(model, make_method("rigl", sparsity=0.5))
    layers = vit_e2e.converted_layers(sparse)
    assert len(layers) == 2 * 4 and all(layer.impl in ("mkl-csr", "aten-csr") for layer in layers)
    assert type(sparse.heads.head) is nn.Linear
    assert vit_e2e.converted_layers(model) == []  # the source model is untouched
    assert sparse(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", [n for n in dense_baselines.candidates("cpu", torch.float32) if n in dense_baselines.BUILDERS])
def test_dense_vit_in_each_dense_library_computes_the_same_model(name: str) -> None:
    model = tiny_vit(0, torch.device("cpu"), torch.float32)
    dense = vit_e2e.with_encoder_linears(model, dense_baselines.BUILDERS[name])
    layers = vit_e2e.converted_layers(dense)
    assert len(layers) == 2 * 4 and {layer.impl for layer in layers} == {dense_baselines.BUILDERS[name].impl}
    assert type(dense.heads.head) is nn.Linear and vit_e2e.converted_layers(model) == []  # the source is untouched
    images = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(dense(images), model(images), rtol=1e-4, atol=1e-5)


def test_vit_b16_has_linear_qkv_in_every_block() -> None:
    model = vit_e2e.vit_b16(0, torch.device("cpu"), torch.float32)
    blocks = list(model.encoder.layers)
    assert len(blocks) == 12
    assert all(isinstance(b.self_attention, vit_e2e.LinearQKVAttention) for b in blocks)
    assert blocks[0].self_attention.qkv.weight.shape == (2304, 768)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and vit_e2e.is_encoder_linear(n, m)]
    assert len(linears) == 48


def test_e2e_rows_with_a_tiny_vit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_tiny_vit(monkeypatch)
    out = tmp_path / "r"
    argv = ["run", "--suite", "inference", "--cases", "", "--sparsity", "0.5,0.9", "--rounds", "2",
            "--min-time", "0.001", "--threads", "1", "--methods", "dense,srigl", "--out", str(out)]
    assert main(argv) == 0
    frame = records.load(out)
    impls = dense_baselines.candidates("cpu", torch.float32)
    assert len(frame) == 2 * (len(impls) + 2) and set(frame["case"]) == {"vit_b16"} and frame["e2e"].all()
    assert set(frame["batch"]) == {1} and frame["in_features"].isna().all()
    dense = frame[frame["method"] == "dense"]
    assert len(dense) == 2 * len(impls) and set(dense["nnz"]) == {2 * (16 * 48 + 16 * 16 + 16 * 32 + 32 * 16)}
    # end to end too, every dense implementation is a row (each encoder linear in it) and the ratios are against
    # the fastest of them
    assert set(frame["dense_impls"].map(tuple)) == {tuple(dense["impl"].iloc[: len(impls)])}
    assert len(set(dense["impl"])) == len(impls)
    for _, group in frame.groupby("sparsity"):
        fastest = group[group["method"] == "dense"].sort_values("p50_s").iloc[0]
        assert (group["dense_impl"] == fastest["impl"]).all()
        assert fastest["speedup_vs_dense"] == 1.0
    sparse = frame[frame["method"] == "srigl"].set_index("sparsity")
    assert sparse.loc[0.9, "nnz"] < sparse.loc[0.5, "nnz"] < dense["nnz"].iloc[0]


# --- cold caches ---------------------------------------------------------------------------------------------------


def test_cold_rows_exist_and_are_labelled(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(tmp_path / "r", "--l2", "warm,cold") == 0
    frame = records.load(tmp_path / "r")
    assert list(frame["l2"]) == ["warm"] * len(ROWS) + ["cold"] * len(ROWS)
    assert frame["case_id"].is_unique and frame["group_id"].nunique() == 2
    for l2, rows in frame.groupby("l2"):
        assert names(rows) == ROWS
        assert set(rows["group_id"]) == {f"32x48/32x48/s0.5/b2/float32/cpu/t1/l2-{l2}"}
        assert set(rows["speedup_vs_dense"]) >= {1.0}  # each mode has its own fastest dense
    warm, cold = (frame[frame["l2"] == m].set_index(pd.Index(names(frame[frame["l2"] == m]))) for m in ("warm", "cold"))
    assert (warm["bytes"] == cold["bytes"]).all()  # the same modules, timed in both modes
    assert set(warm["n"]) == {3} and set(cold["n"]) == {9}  # TINY's --rounds 3, three times that when cold
    table = capsys.readouterr().out
    assert re.split(r"\s{2,}", table.splitlines()[0].strip())[4] == "l2"
    assert [line.split()[4] for line in table.splitlines()[2:2 + 2 * len(ROWS)]] == list(frame["l2"])


def test_eviction_buffer_exceeds_the_machines_last_level_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "llc_bytes", MACHINE_LLC)
    llc, source = timing.llc_bytes(CPU)
    assert llc > 0 and source in ("sysfs", "sysconf", "fallback")
    assert timing.evict_bytes(CPU) >= timing.EVICT_FACTOR * llc > llc


def test_last_level_cache_is_read_from_sysfs_or_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "64K"), (2, "Unified", "2048K"),
                                                 (3, "Unified", "491520K")]):
        folder = tmp_path / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    monkeypatch.setattr(timing, "CPU_CACHES", tmp_path / "cache")
    assert MACHINE_LLC(CPU) == (480 * 2**20, "sysfs")
    monkeypatch.setattr(timing, "CPU_CACHES", tmp_path / "missing")

    def no_sysconf(name: str) -> int:
        raise ValueError(name)

    monkeypatch.setattr(timing.os, "sysconf", no_sysconf)
    assert MACHINE_LLC(CPU) == (timing.FALLBACK_LLC_BYTES, "fallback")
    monkeypatch.setattr(timing, "llc_bytes", MACHINE_LLC)
    assert timing.evict_bytes(CPU) > timing.FALLBACK_LLC_BYTES


def test_eviction_buffer_is_written_and_read_by_each_eviction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Filled with ones (not the zero page), its size the evict_bytes of the (test) cache, and read per eviction."""
    evict = timing.evictor(CPU)
    assert evict.nbytes == timing.evict_bytes(CPU) > SMALL_LLC
    assert float(evict.buffer.sum()) == evict.buffer.numel()
    reads = []
    monkeypatch.setattr(timing.threadpools, "wait_quiet", lambda: reads.append("quiet"))
    real_sum = torch.Tensor.sum
    monkeypatch.setattr(torch.Tensor, "sum", lambda self, *a, **k: reads.append(self.numel()) or real_sum(self, *a, **k))
    evict()
    assert reads == [evict.buffer.numel(), "quiet"]


def test_cold_block_times_the_calls_not_the_evictions_nor_the_primers(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock: an eviction takes 10 s, a primer 5 s, a call 1 s; the block is 3 s and its wall time 48 s."""
    clock, log = [0.0], []

    def tick(seconds: float, what: str) -> None:
        clock[0] += seconds
        log.append(what)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    block = timing.CPUColdBlockTimer(lambda: tick(1, "call"), threads=1, device=CPU, primer=lambda: tick(5, "primer"))
    block.evict = lambda: tick(10, "evict")
    assert block(3) == 3 and block.last_wall_s == 48
    assert log == ["evict", "primer", "call"] * 3
    assert block.wall(2) == 32
    n = timing.calibrate(block.wall, min_time=50)  # cold blocks are calibrated on their wall time
    assert n * 16 >= 50 > n * 1


def test_cold_groups_prime_each_call_with_a_twin_of_its_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def interleaved(fns, *, rounds: int, l2: str = "warm", primers=None, **_):  # noqa: ANN001, ANN003
        if "dense" in fns:  # a group, not the bandwidth probe
            seen[l2] = primers
        return {name: timing.Samples(1, [1e-4] * rounds) for name in fns}

    monkeypatch.setattr(timing, "interleaved", interleaved)
    assert run(tmp_path / "r", "--l2", "warm,cold") == 0
    assert seen["warm"] is None and list(seen["cold"]) == ROWS
    config = inference.resolve_config(_parse(*TINY))
    workloads = inference.Workloads(config)
    group = inference.Group("32x48", 32, 48, 0.5, 2, "float32", "cpu", 1, "cold")
    modules, twins = workloads.modules(group, ROWS), workloads.twins(group, ROWS)
    x = workloads.input(group)
    for name in ROWS:
        module, twin = modules[name], twins[name]
        assert type(twin) is type(module) and twin.impl == module.impl and twin is not module
        assert twin(x).shape == module(x).shape == (2, 48)
        assert not torch.equal(twin(x), module(x))  # other weights: priming leaves the timed layer's data cold
        assert workloads.modules(group, [name])[name] is module  # built once, shared with the warm group


# --- the token stack -------------------------------------------------------------------------------------------------

STACK = (16, 32, 2)  # width, MLP width, blocks: a tiny stack of 8 linears


def dense_weights(layer: nn.Module, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (out, in), bias (out,)) of any layer, read off its outputs on the unit vectors and on zero."""
    with torch.inference_mode():
        zero = layer(torch.zeros(1, in_features))
        return (layer(torch.eye(in_features)) - zero).T, zero[0]


def reference_chain(x: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> torch.Tensor:
    """Each block: x + proj(v), v the value part of qkv(x) (one token attends only to itself); x + fc2(gelu(fc1(x)))."""
    for i in range(0, len(weights), 4):
        (wq, bq), (wp, bp), (w1, b1), (w2, b2) = weights[i:i + 4]
        x = x + F.linear(F.linear(x, wq, bq)[:, 2 * width:], wp, bp)
        x = x + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    return x


def test_token_stack_has_vit_b16_shapes() -> None:
    width, mlp, blocks = token_stack.STACKS["b16-stack"]
    shapes = [(width, 3 * width), (width, width), (width, mlp), (mlp, width)] * blocks
    assert (width, mlp, blocks) == (768, 3072, 12) and len(shapes) == 48
    assert sum(fin * fout for fin, fout in shapes) * 4 == pytest.approx(340e6, rel=0.01)  # ~340 MB of float32 weights


@pytest.mark.parametrize("name", ROWS)
def test_token_stack_output_equals_the_dense_reference_chain(name: str) -> None:
    linears = token_stack.source_linears(*STACK, seed=0, device=CPU, dtype=torch.float32)
    if name in dense_baselines.BUILDERS:
        layers = [dense_baselines.BUILDERS[name](linear) for linear in linears]
    else:
        layers = inference.build_layers(name, linears, 0.5, "auto")
    stack = token_stack.TokenStack(layers)
    assert stack.in_features == stack.out_features == 16 and len(stack.layers) == 8
    assert stack.nnz == sum(layer.nnz for layer in layers)
    x = torch.randn(1, 16)
    weights = [dense_weights(layer, linear.in_features) for layer, linear in zip(layers, linears)]
    with torch.inference_mode():
        torch.testing.assert_close(stack(x), reference_chain(x, weights, 16), rtol=1e-5, atol=1e-5)
    if name not in dense_baselines.NAMES:  # a sparse stack drops weights; its chain is not dense's
        assert sum(int((w != 0).sum()) for w, _ in weights) < sum(linear.weight.numel() for linear in linears)


def test_stack_case_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(token_stack.STACKS, "b16-stack", STACK)
    monkeypatch.setitem(inference.STACK_CASES, "b16-stack", (16, 16))
    out = tmp_path / "r"
    assert main(["run", "--suite", "inference", "--cases", "b16-stack", "--sparsity", "0.5", "--batch", "4,8",
                 "--rounds", "2", "--min-time", "0.001", "--no-e2e", "--threads", "1", "--l2", "warm,cold",
                 "--out", str(out)]) == 0
    frame = records.load(out)
    assert len(frame) == 2 * len(ROWS) and set(frame["case"]) == {"b16-stack"}
    assert set(frame["batch"]) == {1}  # one token, whatever --batch says
    assert set(frame["group_id"]) == {f"b16-stack/16x16/s0.5/b1/float32/cpu/t1/l2-{m}" for m in ("warm", "cold")}
    shapes = [(16, 48), (16, 16), (16, 32), (32, 16)] * 2
    dense = frame[frame["method"] == "dense"]
    assert set(dense["nnz"]) == {sum(i * o for i, o in shapes)}
    # torch's dense stack: weights and biases, plus each linear's input and output of one token
    torch_dense = frame[names(frame) == np.array("dense")]
    assert set(torch_dense["bytes"]) == {sum((i * o + o) * 4 + (i + o) * 4 for i, o in shapes)}
    assert (frame.loc[frame["method"] != "dense", "nnz"] < dense["nnz"].iloc[0]).all()
    group = inference.Group("b16-stack", 16, 16, 0.5, 1, "float32", "cpu", 1, "cold")
    twins = inference.Workloads(inference.resolve_config(_parse(*TINY))).twins(group, ROWS)
    assert {len(twin.layers) for twin in twins.values()} == {4}  # a stack's twin is one block


# --- bytes, bandwidth and limit ------------------------------------------------------------------------------------


def test_bytes_of_each_format_from_known_small_layers() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(32, 48)  # in 32, out 48
    act = 3 * (32 + 48)  # x and y elements at batch 3
    dense = 48 * 32 * 4 + 48 * 4
    assert traffic.call_bytes(DenseLinear.from_linear(linear), 3, 4) == dense + act * 4
    assert traffic.call_bytes(dense_baselines.OpenBLASLinear(linear), 3, 4) == dense + act * 4  # one view counted once
    assert traffic.call_bytes(dense_baselines.OneDNNLinear(linear), 3, 4) == dense + act * 4
    mask = torch.rand(48, 32) < 0.25
    nnz = int(mask.sum())
    csr = CSRLinear(linear.weight.detach() * mask, linear.bias)
    # row pointers (out + 1) and column indices int32, values and bias float32
    assert traffic.call_bytes(csr, 3, 4) == (48 + 1) * 4 + nnz * 4 + nnz * 4 + 48 * 4 + act * 4
    condensed = CondensedLinear(CondensedWeight(torch.randn(40, 6), torch.randint(0, 32, (40, 6), dtype=torch.int16),
                                                torch.arange(40), 48, 32, linear.bias.detach()))
    # values float32, column indices int16, active row ids int64, bias
    assert traffic.call_bytes(condensed, 3, 4) == 40 * 6 * 4 + 40 * 6 * 2 + 40 * 8 + 48 * 4 + act * 4
    diagonal = DiagonalLinear(DiagonalWeight(torch.tensor([0, 5, 9]), torch.randn(3, 32, dtype=torch.bfloat16), 48, 32,
                                             linear.bias.detach().to(torch.bfloat16)))
    # offsets int64, values and bias bfloat16; x and y in bfloat16
    assert traffic.call_bytes(diagonal, 3, 2) == 3 * 8 + 3 * 32 * 2 + 48 * 2 + act * 2
    assert traffic.stored_bytes(diagonal) == 3 * 8 + 3 * 32 * 2 + 48 * 2


def test_bandwidth_probe_returns_positive_bandwidths_per_size() -> None:
    bw = bandwidth.probe(CPU, threads=1, rounds=2, min_time=1e-3)
    beyond = timing.evict_bytes(CPU)
    assert list(bw.sizes) == [s for s in bandwidth.SIZES if s < beyond] + [beyond]
    assert beyond > SMALL_LLC == bw.llc_bytes and bw.llc_source == "test"
    assert len(bw.gbps) == len(bw.sizes) and all(g > 0 and math.isfinite(g) for g in bw.gbps)
    assert len(bw.cold_gbps) == len(bw.sizes) - 1 and all(g > 0 and math.isfinite(g) for g in bw.cold_gbps)
    assert bandwidth.Bandwidth.from_record(json.loads(json.dumps(bw.record()))) == bw


def test_the_cold_probe_reads_each_buffer_after_an_eviction_and_its_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = timing.interleaved

    def interleaved(fns, **kwargs):  # noqa: ANN001, ANN003
        seen.append((kwargs.get("l2", "warm"), sorted(fns), sorted(kwargs.get("primers") or {})))
        return real(fns, **kwargs)

    monkeypatch.setattr(timing, "interleaved", interleaved)
    bw = bandwidth.probe(CPU, threads=1, rounds=2, min_time=1e-3)
    below = sorted(str(size) for size in bw.sizes[:-1])
    assert seen == [("warm", sorted(str(size) for size in bw.sizes), []), ("cold", below, below)]


def test_bandwidth_ceiling_interpolates_warm_and_takes_beyond_cache_when_cold() -> None:
    bw = bandwidth.Bandwidth((2**20, 2**22, 2**30), (100.0, 50.0, 10.0), 2**28, "test")
    assert bw.ceiling(2**20, "warm") == 100.0 and bw.ceiling(2**22, "warm") == 50.0
    assert bw.ceiling(2**21, "warm") == pytest.approx(75.0)  # halfway in log size
    assert bw.ceiling(10, "warm") == 100.0 and bw.ceiling(2**40, "warm") == 10.0  # clamped
    assert bw.ceiling(2**20, "cold") == bw.ceiling(2**22, "cold") == 10.0  # a record without the cold curve
    cold = bandwidth.Bandwidth((2**20, 2**22, 2**30), (100.0, 50.0, 10.0), 2**28, "test", cold_gbps=(4.0, 16.0))
    assert cold.ceiling(2**20, "cold") == 4.0 and cold.ceiling(2**21, "cold") == pytest.approx(10.0)
    assert cold.ceiling(10, "cold") == 4.0 and cold.ceiling(2**40, "cold") == 16.0  # clamped to the cold curve
    assert cold.ceiling(2**21, "warm") == pytest.approx(75.0)


def test_rows_carry_bytes_gbps_and_limit_against_the_runs_probe(tmp_path: Path) -> None:
    assert run(tmp_path / "r", "--l2", "warm,cold") == 0
    frame = records.load(tmp_path / "r")
    frame = frame.set_index(pd.Index([f"{n}/{l2}" for n, l2 in zip(names(frame), frame["l2"])]))
    assert len({json.dumps(p) for p in frame["bw_probe"]}) == 1  # one probe per run
    probe = bandwidth.Bandwidth.from_record(frame["bw_probe"].iloc[0])
    for _, row in frame.iterrows():
        assert row["gbps"] == pytest.approx(row["bytes"] / row["p50_s"] / 1e9)
        assert row["ceiling_gbps"] == pytest.approx(probe.ceiling(row["bytes"], row["l2"]))
        assert row["limit_frac"] == pytest.approx(row["gbps"] / row["ceiling_gbps"])
    assert probe.cold_gbps is not None  # cold rows are held against the cold curve
    for name in DENSE:  # 32x48 at batch 2: weight, bias, x, y in float32
        assert frame.loc[f"{name}/warm", "bytes"] == (48 * 32 + 48 + 2 * (32 + 48)) * 4


def test_e2e_rows_leave_bytes_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_tiny_vit(monkeypatch)
    assert main(["run", "--suite", "inference", "--cases", "32x48", "--batch", "2", "--sparsity", "0.5", "--rounds",
                 "2", "--min-time", "0.001", "--threads", "1", "--methods", "dense", "--l2", "warm",
                 "--out", str(tmp_path / "r")]) == 0
    frame = records.load(tmp_path / "r")
    assert frame.loc[frame["e2e"], ["bytes", "gbps", "limit_frac"]].isna().all().all()
    assert frame.loc[~frame["e2e"], ["bytes", "gbps", "limit_frac"]].notna().all().all()


# --- the report ------------------------------------------------------------------------------------------------------


def test_report_draws_the_roofline_and_splits_cold_from_warm(tmp_path: Path) -> None:
    assert run(tmp_path / "r", "--l2", "warm,cold") == 0
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "r"), "--out", str(out)]) == 0
    for stem in ("roofline-b2", "speedup-32x48", "speedup-32x48-cold", "latency-32x48-b2", "latency-32x48-cold-b2"):
        assert (out / "figures" / f"{stem}.pdf").stat().st_size > 0 and (out / "figures" / f"{stem}.png").exists()
    for stem in ("inference", "inference-cold", "inference-speedup", "inference-speedup-cold"):
        assert (out / "tables" / f"{stem}.md").exists()
    assert "| 32x48 | 2 | " in (out / "tables" / "inference-speedup-cold.md").read_text()
    provenance = json.loads((out / "provenance.json").read_text())["artifacts"]["figures/roofline-b2"]
    assert provenance["files"] == ["figures/roofline-b2.pdf", "figures/roofline-b2.png"]
    assert [s["run"] for s in provenance["sources"]] == [str(tmp_path / "r")]
    assert provenance["sources"][0]["command"] and provenance["sources"][0]["commit"]["git_sha"]
    assert "figures/roofline-b2.png" in (out / "index.md").read_text()


def test_report_of_rows_without_bytes_draws_no_roofline(tmp_path: Path) -> None:
    assert run(tmp_path / "r") == 0
    rows = [{k: v for k, v in row.items() if k not in ("bytes", "gbps", "ceiling_gbps", "limit_frac", "bw_probe")}
            for row in records.read_rows(tmp_path / "r")]
    (tmp_path / "r" / records.ROWS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "report")]) == 0
    figures = {p.name for p in (tmp_path / "report" / "figures").iterdir()}
    assert "speedup-32x48.pdf" in figures and not [f for f in figures if f.startswith("roofline")]


def test_rows_carry_the_core_round_trips_probed_around_their_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    probes = iter([120.0, 530.0, 110.0, 118.0])
    seen: list[int] = []

    def probe(threads: int) -> float:
        seen.append(threads)
        return next(probes)

    monkeypatch.setattr(core_latency, "probe", probe)
    assert run(tmp_path / "r", "--threads", "2", "--batch", "1,2") == 0
    frame = records.load(tmp_path / "r")
    assert seen == [2, 2, 2, 2]
    assert list(frame.groupby("group_id", sort=False)["core_rtt_ns"].first()) == [[120.0, 530.0], [110.0, 118.0]]
    assert frame.groupby("group_id")["core_rtt_ns"].apply(lambda s: len({tuple(v) for v in s})).eq(1).all()
    assert "probed around each group: 110-530 ns" in capsys.readouterr().out


def test_one_thread_records_no_core_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(tmp_path / "r") == 0
    assert records.load(tmp_path / "r")["core_rtt_ns"].isna().all()
    assert "core round trip" not in capsys.readouterr().out
