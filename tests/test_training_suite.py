"""The training suite on tiny models: rows, interleaved samples, the timed update step, resume (correctness only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dstbench import records, registry
from dstbench.cli import main
from dstbench.registry import make_method
from dstbench.suites import models, training

TINY = ["--batch-size", "4", "--rounds", "3", "--min-time", "0.001", "--delta-t", "6", "--threads", "1"]
COLUMNS = {"suite", "case_id", "method", "impl", "model", "sparsity", "batch", "phase", "delta_t", "device", "dtype",
           "threads", "n", "n_inner", "p50_s", "p90_s", "p99_s", "samples_per_s", "samples_s", "regular_samples_s",
           "update_samples_s", "speedup_vs_dense", "speedup_vs_dense_lo", "speedup_vs_dense_hi", "speedup_vs_rigl",
           "speedup_vs_rigl_lo", "speedup_vs_rigl_hi", "sparsity_achieved", "params", "flops"}


@pytest.fixture(autouse=True)
def _tiny_models(monkeypatch):
    monkeypatch.setitem(training.MODELS, "mlp", lambda: models.mlp(3072, 10, hidden=(48, 32)))
    monkeypatch.setitem(training.MODELS, "vit_tiny",
                        lambda: models.vit(training.IMAGE, 10, dim=32, depth=1, heads=2, mlp_dim=64, patch=8))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(out: Path, *extra: str) -> int:
    return main(["run", "--suite", "training", *TINY, "--out", str(out), *extra])


def test_rows_of_every_method_and_model(tmp_path):
    assert run(tmp_path, "--models", "mlp,vit_tiny", "--sparsity", "0.75") == 0
    got = {(r["model"], r["method"]): r for r in records.read_rows(tmp_path)}
    assert set(got) == {(m, x) for m in ("mlp", "vit_tiny") for x in registry.list_methods()}
    for row in got.values():
        assert COLUMNS <= set(row)
        assert len(row["samples_s"]) == len(row["update_samples_s"]) == 3
        assert row["p50_s"] > 0 and row["samples_per_s"] == pytest.approx(4 / row["p50_s"])
        assert row["speedup_vs_dense_lo"] <= row["speedup_vs_dense"] <= row["speedup_vs_dense_hi"]
        assert row["phase"] == "schedule" and row["delta_t"] == 6
    for model in ("mlp", "vit_tiny"):
        assert got[model, "dense"]["speedup_vs_dense"] == 1.0 and got[model, "rigl"]["speedup_vs_rigl"] == 1.0
        assert got[model, "rigl"]["impl"] == "masked-dense" and got[model, "dense"]["impl"] == "dense"
        assert got[model, "dynadiag"]["impl"] in ("cpu", "reference")
        assert got[model, "srigl"]["sparsity_achieved"] > 0.6
    mlp = got["mlp", "rigl"]
    amortized = [r + (u - r) / 6 for r, u in zip(mlp["regular_samples_s"], mlp["update_samples_s"])]
    assert mlp["dynamic_samples_s"] == pytest.approx(amortized)
    whole = [0.75 * d + 0.25 * s for d, s in zip(mlp["dynamic_samples_s"], mlp["settled_samples_s"])]
    assert mlp["dynamic_fraction"] == 0.75 and mlp["samples_s"] == pytest.approx(whole)
    dyn = got["mlp", "dynadiag"]
    assert dyn["dynamic_fraction"] == 0.3 and dyn["settled_p50_s"] > 0 and dyn["speedup_vs_dense_settled"] > 0
    assert dyn["samples_s"] == pytest.approx([0.3 * d + 0.7 * s for d, s in zip(dyn["dynamic_samples_s"],
                                                                                 dyn["settled_samples_s"])])


def test_dynamic_phase_alone_amortizes_the_update(tmp_path):
    assert run(tmp_path, "--models", "mlp", "--methods", "rigl", "--phase", "dynamic") == 0
    for row in records.read_rows(tmp_path):
        amortized = [r + (u - r) / 6 for r, u in zip(row["regular_samples_s"], row["update_samples_s"])]
        assert row["samples_s"] == pytest.approx(amortized) and "settled_p50_s" not in row


def test_the_timed_update_step_updates_and_the_regular_block_does_not():
    group = training.Group("mlp", 0.8, 4, "dynamic", 6, "cpu", 1)
    total, start, before_update = training.positions(group.phase, group.delta_t)
    method = make_method("rigl", sparsity=0.8, total_steps=total, delta_t=6)
    x, y = torch.randn(4, *training.IMAGE), torch.randint(0, 10, (4,))
    trainee = training.Trainee(method, training.MODELS["mlp"](), x, y)
    masks = [mw.mask.clone() for mw in method.masked.values()]
    trainee.steps_from(start, group.delta_t - 2)  # the largest regular block
    assert all(torch.equal(a, mw.mask) for a, mw in zip(masks, method.masked.values()))
    trainee.steps_from(before_update, 1)
    assert any(not torch.equal(a, mw.mask) for a, mw in zip(masks, method.masked.values()))


def test_settled_phase_and_resume(tmp_path, monkeypatch):
    assert run(tmp_path, "--models", "mlp", "--methods", "dynadiag", "--phase", "settled") == 0
    rows = records.read_rows(tmp_path)
    assert [r["method"] for r in rows] == ["dense", "rigl", "dynadiag"]
    assert all(r["update_samples_s"] == r["regular_samples_s"] for r in rows)  # no topology update once settled
    timed = []
    monkeypatch.setattr(training, "measure_group", lambda group, *a, **k: timed.append(group))
    assert run(tmp_path, "--models", "mlp", "--methods", "dynadiag", "--phase", "settled") == 0
    assert timed == []


def test_bad_options_are_user_errors(tmp_path, capsys):
    assert run(tmp_path / "a", "--models", "resnet") == 2
    assert run(tmp_path / "b", "--rounds", "1") == 2
    assert run(tmp_path / "c", "--delta-t", "2") == 2
    err = capsys.readouterr().err
    assert "--models takes names among" in err and "--rounds must be >= 2" in err and "--delta-t must be >= 3" in err


def test_method_variants_are_timed_side_by_side(tmp_path):
    assert run(tmp_path, "--models", "mlp", "--methods", "dynadiag,dynadiag:selection=topk", "--phase", "dynamic") == 0
    rows = {r["method"]: r for r in records.read_rows(tmp_path)}
    assert list(rows) == ["dense", "rigl", "dynadiag", "dynadiag:selection=topk"]
    assert rows["dynadiag"]["case_id"] != rows["dynadiag:selection=topk"]["case_id"]
    assert all(len(r["samples_s"]) == 3 for r in rows.values())
