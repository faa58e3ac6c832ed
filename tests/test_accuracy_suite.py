"""The accuracy suite end to end on digits with tiny epochs: rows, method options, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dstbench import records
from dstbench.cli import main
from dstbench.suites import accuracy, dense_baselines, loop, model_timing

TINY = ["--epochs", "2", "--delta-t", "5", "--threads", "1", "--timing-rounds", "3", "--timing-min-time", "0.002"]
TIMED = {f"{name}_{label}" for label in records.TIMED_BATCHES for name in (
    "batch", "n", "p50_s", "p90_s", "p99_s", "dispersion", "dense_impl", "dense_p50_s", "speedup_vs_dense",
    "speedup_vs_dense_lo", "speedup_vs_dense_hi", "speedup_vs_torch_dense", "speedup_vs_torch_dense_lo",
    "speedup_vs_torch_dense_hi", "samples_s", "dense_samples_s")}
COLUMNS = {"suite", "case_id", "dataset", "model", "method", "base_method", "options", "sparsity", "seed", "top1",
           "sparsity_achieved", "params", "flops", "impl", "train_time_s", "steps", "epochs", "device",
           "world_size", "inference_max_abs_diff", "resumed_from_step", "batch_size", "lr", "optimizer",
           "predictions", "labels", "inference_impl", "dense_inference_impl", "dense_impls"} | TIMED


def run(out: Path, *extra: str) -> int:
    return main(["run", "--suite", "accuracy", *TINY, "--out", str(out), *extra])


def rows(out: Path) -> dict[str, dict]:
    return {row["case_id"]: row for row in records.read_rows(out)}


def _shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if hasattr(m, "in_features")]


def test_every_method_trains_and_records_its_row(tmp_path, monkeypatch):
    methods = "dense,rigl,srigl,srigl:ablation=false,dynadiag"
    timed, real = [], model_timing.time_against_dense
    monkeypatch.setattr(model_timing, "time_against_dense", lambda *a, **k: timed.append(a) or real(*a, **k))
    assert run(tmp_path, "--methods", methods, "--sparsity", "0.8", "--option", "srigl.gamma_sal=0.5") == 0
    got = rows(tmp_path)
    for fast, denses, inputs in timed:  # every trained model is timed against dense ones of the same shapes
        assert list(denses) == dense_baselines.candidates("cpu", torch.float32)
        for dense in denses.values():
            assert _shapes(fast) == _shapes(dense) == [(64, 256), (256, 256), (256, 10)]
        dense = denses["dense"]
        assert all(m.weight.count_nonzero() == m.weight.numel() for m in dense.modules() if hasattr(m, "in_features"))
        assert {label: len(x) for label, x in inputs.items()} == {"b1": 1, "beval": 256}
    assert list(got) == [f"digits/mlp/{m}/s{0 if m == 'dense' else 0.8}/seed0" for m in methods.split(",")]
    for row in got.values():
        assert COLUMNS <= set(row)
        assert 0.0 <= row["top1"] <= 1.0
        assert row["steps"] == 2 * 22 and row["epochs"] == 2  # 1347 digits / batch 64 -> 22 steps per epoch
        assert row["inference_max_abs_diff"] < 1e-3
        assert (row["batch_b1"], row["batch_beval"], row["n_b1"], row["n_beval"]) == (1, 256, 3, 3)
        assert row["dense_impls"] == dense_baselines.candidates("cpu", torch.float32)
        for label in records.TIMED_BATCHES:
            ratio = np.median(row[f"dense_samples_s_{label}"]) / np.median(row[f"samples_s_{label}"])
            assert row[f"speedup_vs_dense_{label}"] == pytest.approx(ratio)
            assert row[f"speedup_vs_dense_lo_{label}"] <= ratio <= row[f"speedup_vs_dense_hi_{label}"]
            # against the fastest dense model, so never more than against torch's own
            assert row[f"dense_impl_{label}"] in row["dense_impls"]
            assert row[f"speedup_vs_dense_{label}"] <= row[f"speedup_vs_torch_dense_{label}"]
        predictions, labels = np.load(tmp_path / row["predictions"]), np.load(tmp_path / row["labels"])
        assert predictions.dtype == labels.dtype == np.int16 and predictions.shape == (row["test_size"],) == (450,)
        assert (predictions == labels).mean() == pytest.approx(row["top1"])
    dense, rigl = got["digits/mlp/dense/s0/seed0"], got["digits/mlp/rigl/s0.8/seed0"]
    assert dense["top1"] > 0.8  # two epochs already learn digits
    assert dense["sparsity_achieved"] == 0.0 and dense["impl"] == "dense"
    assert rigl["sparsity_achieved"] == pytest.approx(0.8, abs=0.01) and rigl["impl"] == "masked-dense"
    assert rigl["params"] < 0.4 * dense["params"] and rigl["flops"] < 0.4 * dense["flops"]
    assert dense["inference_impl"] == dense["dense_inference_impl"] != rigl["inference_impl"]
    assert len({row["predictions"] for row in got.values()}) == len(got)
    plain, ablated = got["digits/mlp/srigl/s0.8/seed0"], got["digits/mlp/srigl:ablation=false/s0.8/seed0"]
    assert plain["options"]["gamma_sal"] == 0.5 and "ablation" not in plain["options"]
    assert ablated["options"]["ablation"] is False and ablated["base_method"] == "srigl"
    assert got["digits/mlp/dynadiag/s0.8/seed0"]["impl"] in ("cpu", "reference")
    assert not (tmp_path / "checkpoints").exists()


def test_no_timing_keeps_the_predictions(tmp_path):
    assert run(tmp_path, "--methods", "rigl", "--epochs", "1", "--no-timing") == 0
    row, = rows(tmp_path).values()
    assert not TIMED & set(row) and "inference_impl" not in row
    assert np.load(tmp_path / row["predictions"]).shape == (450,)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out, "--methods", "rigl:ablation=false") == 2
    assert run(out, "--dataset", "cifar10") == 2
    assert run(out, "--batch-size", "0") == 2
    assert run(out, "--timing-rounds", "1") == 2
    assert run(out, "--timing-min-time", "0") == 2
    err = capsys.readouterr().err
    assert "has no option(s) ablation" in err and "needs --data-dir" in err and "--batch-size must be >= 1" in err
    assert "--timing-rounds must be >= 2" in err and "--timing-min-time must be a positive" in err
    assert not out.exists()


def _interrupt_after_save(monkeypatch: pytest.MonkeyPatch, at_call: int) -> list[int]:
    """Make the ``at_call``-th checkpoint save raise KeyboardInterrupt right after writing; returns the saved steps."""
    saved: list[int] = []
    real = loop.save_checkpoint

    def save(checkpoint: loop.Checkpoint, state: dict) -> None:
        real(checkpoint, state)
        saved.append(state["step"])
        if len(saved) == at_call:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save)
    return saved


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    options = ["--methods", "dense,rigl", "--epochs", "3", "--checkpoint-every", "20"]
    fingerprints = tmp_path / "fp"
    fingerprints.mkdir()
    monkeypatch.setenv(accuracy.FINGERPRINT_ENV, str(fingerprints))
    out = tmp_path / "run"
    saved = _interrupt_after_save(monkeypatch, at_call=4)  # dense saves at 20, 40, 60; rigl's first save stops it
    assert run(out, *options) == 130
    assert saved == [20, 40, 60, 20]
    assert list(rows(out)) == ["digits/mlp/dense/s0/seed0"]
    checkpoint = out / "checkpoints" / "digits_mlp_rigl_s0.9_seed0.pt"
    assert torch.load(checkpoint, weights_only=False)["step"] == 20

    monkeypatch.undo()
    monkeypatch.setenv(accuracy.FINGERPRINT_ENV, str(fingerprints))
    trained: list[str] = []
    real_case = accuracy.run_case
    monkeypatch.setattr(accuracy, "run_case", lambda case, *a: trained.append(case.spec.label) or real_case(case, *a))
    assert run(out, *options) == 0
    assert trained == ["rigl"]  # dense is not redone
    rigl = rows(out)["digits/mlp/rigl/s0.9/seed0"]
    assert rigl["resumed_from_step"] == 20 and rigl["steps"] == 66
    assert not checkpoint.exists()

    straight = tmp_path / "straight"
    assert run(straight, *options, "--methods", "rigl") == 0
    lines = [json.loads(line) for line in (fingerprints / "rank0.jsonl").read_text().splitlines()]
    resumed, uninterrupted = [line for line in lines if line["case_id"] == rigl["case_id"]]
    assert resumed["params"] == uninterrupted["params"] and resumed["topology"] == uninterrupted["topology"]
    assert rows(straight)[rigl["case_id"]]["top1"] == rigl["top1"]


def test_a_checkpoint_of_other_options_is_not_resumed(tmp_path):
    checkpoint = loop.Checkpoint(tmp_path / "c.pt", 10, {"case_id": "a", "config": {"lr": 1}})
    checkpoint.save({"step": 3})
    assert checkpoint.load()["step"] == 3
    with pytest.warns(UserWarning, match="other options"):
        assert loop.Checkpoint(tmp_path / "c.pt", 10, {"case_id": "a", "config": {"lr": 2}}).load() is None
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    checkpoint.delete()
    assert checkpoint.load() is None


def test_rerun_with_other_options_is_refused(tmp_path, capsys):
    assert run(tmp_path, "--methods", "dense", "--epochs", "1") == 0
    assert run(tmp_path, "--methods", "dense", "--epochs", "1", "--threads", "2") == 0  # threads may change
    assert run(tmp_path, "--methods", "dense", "--epochs", "2") == 2
    assert "options.hyper.epochs 1 -> 2" in capsys.readouterr().err


def test_cifar10_and_imagenet_folders_train_end_to_end(tmp_path):
    from test_data import write_cifar, write_image_folder  # noqa: PLC0415

    write_cifar(tmp_path / "cifar", per_batch=4, test=4)
    write_image_folder(tmp_path / "imagenet", {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    common = ["--model", "mlp", "--methods", "dense,rigl", "--batch-size", "4", "--workers", "0", "--epochs", "1"]
    assert run(tmp_path / "c", "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), *common) == 0
    assert run(tmp_path / "i", "--dataset", "imagenet", "--data-dir", str(tmp_path / "imagenet"), "--image-size", "16",
               *common) == 0
    cifar, imagenet = records.read_rows(tmp_path / "c"), records.read_rows(tmp_path / "i")
    assert [(r["dataset"], r["steps"], r["test_size"]) for r in cifar] == [("cifar10", 5, 4)] * 2
    assert [(r["dataset"], r["steps"], r["test_size"]) for r in imagenet] == [("imagenet", 1, 4)] * 2
    assert imagenet[0]["params"] == 3 * 16 * 16 * 256 + 256 + 256 * 256 + 256 + 256 * 2 + 2  # the MLP saw 16x16 crops


def test_a_method_that_cannot_sparsify_the_model_fails_before_training(tmp_path, capsys):
    from test_data import write_cifar  # noqa: PLC0415

    write_cifar(tmp_path / "cifar")
    out = tmp_path / "run"
    assert run(out, "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--model", "resnet18",
               "--methods", "dense,dynadiag") == 2
    assert "dynadiag cannot train resnet18" in capsys.readouterr().err
    assert not out.exists()
