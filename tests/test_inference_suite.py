"""The inference suite run in-process on tiny shapes: rows, ratios, resume, e2e conversion (correctness only)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from dstbench import records, registry, timing
from dstbench.cli import main
from dstbench.kernels import ops
from dstbench.suites import dense_baselines, inference, vit_e2e

TINY = ["--cases", "32x48", "--sparsity", "0.5", "--batch", "2", "--rounds", "3", "--min-time", "0.001",
        "--no-e2e", "--threads", "1"]
COLUMNS = {"suite", "method", "impl", "case", "in_features", "out_features", "sparsity", "batch", "dtype", "device",
           "threads", "n", "p50_s", "p90_s", "p99_s", "speedup_vs_dense", "speedup_vs_csr", "case_id", "n_inner",
           "samples_s", "l2", "nnz", "speedup_vs_dense_lo", "speedup_vs_dense_hi", "speedup_vs_csr_lo",
           "speedup_vs_csr_hi", "speedup_vs_torch_dense", "speedup_vs_torch_dense_lo", "speedup_vs_torch_dense_hi",
           "dense_impl", "torch_dense_impl", "dense_impls"}

#: the methods a run times by default: the dense and CSR baselines first, then every other registered method
TIMED = list(dict.fromkeys(["dense", "rigl", *registry.list_methods()]))
#: the dense implementations of a float32 CPU layer group (torch's default first), and all the group's rows
DENSE = dense_baselines.candidates("cpu", torch.float32)
ROWS = DENSE + TIMED[1:]


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
    assert re.split(r"\s{2,}", header.strip())[-4:] == ["vs dense [95% CI]", "dense", "vs torch dense [95% CI]",
                                                         "vs CSR [95% CI]"]
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
    dense = dense_baselines.candidates("cpu", torch.float16)
    assert "dense-openblas" not in dense and names(frame) == [*dense, "srigl"]
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
    assert len(full.groups()) == 5 * 4 * 3 + 4
    assert full.out.startswith("results/inference-")


def test_case_names_and_shapes() -> None:
    assert inference.parse_cases("b16-qkv, 64x128,l16-fc1") == {"b16-qkv": (768, 2304), "64x128": (64, 128),
                                                                 "l16-fc1": (1024, 4096)}


def tiny_vit(seed: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=10)
    return vit_e2e.with_linear_qkv(model).to(device=device, dtype=dtype).eval()


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


def test_vit_b16_has_linear_qkv_in_every_block() -> None:
    model = vit_e2e.vit_b16(0, torch.device("cpu"), torch.float32)
    blocks = list(model.encoder.layers)
    assert len(blocks) == 12
    assert all(isinstance(b.self_attention, vit_e2e.LinearQKVAttention) for b in blocks)
    assert blocks[0].self_attention.qkv.weight.shape == (2304, 768)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and vit_e2e.is_encoder_linear(n, m)]
    assert len(linears) == 48


def test_e2e_rows_with_a_tiny_vit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vit_e2e, "vit_b16", tiny_vit)
    monkeypatch.setattr(vit_e2e, "IMAGE_SHAPE", (1, 3, 32, 32))
    out = tmp_path / "r"
    argv = ["run", "--suite", "inference", "--cases", "", "--sparsity", "0.5,0.9", "--rounds", "2",
            "--min-time", "0.001", "--threads", "1", "--methods", "dense,srigl", "--out", str(out)]
    assert main(argv) == 0
    frame = records.load(out)
    assert len(frame) == 2 * 3 and set(frame["case"]) == {"vit_b16"} and frame["e2e"].all()
    assert set(frame["batch"]) == {1} and frame["in_features"].isna().all()
    dense = frame[frame["method"] == "dense"]
    assert len(dense) == 2 and set(dense["nnz"]) == {2 * (16 * 48 + 16 * 16 + 16 * 32 + 32 * 16)}
    # end to end, torch's dense only (the rows say so); both ratios are against it
    assert set(frame["dense_impls"].map(tuple)) == {(dense["impl"].iloc[0],)}
    assert (frame["speedup_vs_dense"] == frame["speedup_vs_torch_dense"]).all()
    sparse = frame[frame["method"] == "srigl"].set_index("sparsity")
    assert sparse.loc[0.9, "nnz"] < sparse.loc[0.5, "nnz"] < dense["nnz"].iloc[0]
