"""The training suite on tiny models: rows, interleaved samples, the timed update step, the dense steps, resume
(correctness only)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from dstbench import records, registry, tables
from dstbench.cli import main
from dstbench.registry import make_method
from dstbench.suites import dense_training, models, training

TINY = ["--batch-size", "4", "--rounds", "3", "--min-time", "0.001", "--delta-t", "6", "--threads", "1", "--dense", "eager"]
COLUMNS = {"suite", "case_id", "method", "impl", "model", "sparsity", "batch", "phase", "delta_t", "device", "dtype",
           "threads", "n", "n_inner", "p50_s", "p90_s", "p99_s", "samples_per_s", "samples_s", "regular_samples_s",
           "update_samples_s", "speedup_vs_dense", "speedup_vs_dense_lo", "speedup_vs_dense_hi", "speedup_vs_rigl",
           "speedup_vs_rigl_lo", "speedup_vs_rigl_hi", "sparsity_achieved", "params", "flops", "dense_impl",
           "torch_dense_impl", "dense_impls", "speedup_vs_torch_dense", "compile_s"}


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
    assert run(tmp_path / "d", "--dense", "eager,jit") == 2
    err = capsys.readouterr().err
    assert "--models takes names among" in err and "--rounds must be >= 2" in err and "--delta-t must be >= 3" in err
    assert "dstbench: error: --dense takes names among eager, compiled, onednn, got 'eager,jit'\n" in err
    assert not any((tmp_path / name).exists() for name in "abcd")


def _config(*argv: str) -> training.Config:
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    return training.resolve_config(parser.parse_args(list(argv)))


def test_dense_steps_of_the_full_and_the_quick_run():
    assert _config().dense == ["dense", "dense-compiled", "dense-onednn"]
    quick = _config("--quick")
    assert quick.dense == ["dense"]  # --quick keeps its rows (and their ids): no compile in the quick run
    assert quick.names() == quick.methods and quick.methods[:2] == ["dense", "rigl"]  # the rows timed before
    assert _config("--dense", "compiled").dense == ["dense", "dense-compiled"]  # eager is always timed


def _trainee(dense: str, model: torch.nn.Module) -> training.Trainee:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn((4, *training.IMAGE), generator=gen), torch.randint(0, 10, (4,), generator=gen)
    return training.Trainee(make_method("dense"), model, x, y, dense=dense)


@pytest.mark.parametrize("dense, model", [pytest.param(dense_training.COMPILED, "mlp", marks=pytest.mark.slow),
                                          (dense_training.ONEDNN, "mlp"), (dense_training.ONEDNN, "vit_tiny")])
def test_each_dense_step_trains_as_eager_does(dense, model):
    torch.manual_seed(0)
    eager = _trainee(dense_training.EAGER, training.MODELS[model]())
    torch.manual_seed(0)
    other = _trainee(dense, training.MODELS[model]())
    from torch._dynamo.utils import counters
    ref_losses, losses = eager.steps_from(0, 3), other.steps_from(0, training.CHECK_STEPS)
    graphs = counters["stats"]["unique_graphs"]  # the compiled step compiles in its first steps, never again
    losses += other.steps_from(training.CHECK_STEPS, 3 - training.CHECK_STEPS)
    assert counters["stats"]["unique_graphs"] == graphs and (graphs > 0 or dense != dense_training.COMPILED)
    assert len(set(float(v) for v in ref_losses)) == 3  # the steps do train
    torch.testing.assert_close(torch.stack(losses), torch.stack(ref_losses), rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(eager.model.named_parameters(), other.model.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=f"{name} gradient")
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert dense_training.mismatch(eager.model, other.model, ref_losses, losses) is None
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    assert "differs" in dense_training.mismatch(eager.model, other.model, ref_losses, losses)


@pytest.mark.slow  # compiles (from inductor's cache after the test above)
def test_dense_rows_are_labelled_and_the_fastest_is_the_reference(tmp_path, capsys):
    assert run(tmp_path, "--models", "mlp", "--methods", "rigl", "--phase", "settled",
               "--dense", "eager,compiled,onednn") == 0
    rows = {r["case_id"].rsplit("/", 1)[1]: r for r in records.read_rows(tmp_path)}
    assert list(rows) == ["dense", "dense-compiled", "dense-onednn", "rigl"]
    dense = {name: rows[name] for name in ("dense", "dense-compiled", "dense-onednn")}
    assert {r["method"] for r in dense.values()} == {"dense"}
    assert [r["impl"] for r in dense.values()] == ["dense", "inductor", "onednn"]
    fastest = min(dense.values(), key=lambda r: r["p50_s"])
    assert fastest["speedup_vs_dense"] == 1.0 and dense["dense"]["speedup_vs_torch_dense"] == 1.0
    for row in rows.values():
        assert row["dense_impl"] == fastest["impl"] and row["torch_dense_impl"] == "dense"
        assert row["dense_impls"] == ["dense", "inductor", "onednn"]
    assert rows["rigl"]["speedup_vs_dense"] == pytest.approx(
        rows["rigl"]["speedup_vs_torch_dense"] * fastest["p50_s"] / dense["dense"]["p50_s"])
    assert dense["dense-compiled"]["compile_s"] > 0 and dense["dense"]["compile_s"] is None
    table = tables.training_table(records.load(tmp_path), machines=False)
    kernel, named = table.headers.index("kernel"), table.headers.index("dense")
    assert [(row[kernel], row[named]) for row in table.rows] == [
        (impl, fastest["impl"]) for impl in ("dense", "inductor", "onednn", "masked-dense")]
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 0  # each ratio pairs with its own dense row
    assert "vs torch dense" in capsys.readouterr().out


def test_a_dense_step_that_does_not_train_as_eager_is_left_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dense_training, "mismatch", lambda *a: "loss differs (max abs difference 1)")
    assert run(tmp_path, "--models", "mlp", "--methods", "rigl", "--phase", "settled", "--dense", "eager,onednn") == 0
    assert "dense step dense-onednn left out of mlp/s0.9/b4/settled/dt6/cpu/t1: loss differs" in capsys.readouterr().err
    rows = records.read_rows(tmp_path)
    assert [r["case_id"].rsplit("/", 1)[1] for r in rows] == ["dense", "rigl"]
    assert all(r["dense_impls"] == ["dense"] and r["dense_impl"] == "dense" for r in rows)


def test_method_variants_are_timed_side_by_side(tmp_path):
    assert run(tmp_path, "--models", "mlp", "--methods", "dynadiag,dynadiag:selection=topk", "--phase", "dynamic") == 0
    rows = {r["method"]: r for r in records.read_rows(tmp_path)}
    assert list(rows) == ["dense", "rigl", "dynadiag", "dynadiag:selection=topk"]
    assert rows["dynadiag"]["case_id"] != rows["dynadiag:selection=topk"]["case_id"]
    assert all(len(r["samples_s"]) == 3 for r in rows.values())


def test_a_dense_step_that_cannot_run_is_left_out(tmp_path, monkeypatch, capsys):
    def no_compiler():
        def fail(*args):
            raise RuntimeError("InductorError: no C++ compiler found\nmore detail")
        return fail

    monkeypatch.setattr(dense_training, "compiled_loss", no_compiler)
    assert run(tmp_path, "--models", "mlp", "--methods", "rigl", "--phase", "settled", "--dense", "compiled") == 0
    assert "dense step dense-compiled left out of mlp/s0.9/b4/settled/dt6/cpu/t1: it cannot run (InductorError: no C++ " \
           "compiler found)\n" in capsys.readouterr().err
    assert [r["case_id"].rsplit("/", 1)[1] for r in records.read_rows(tmp_path)] == ["dense", "rigl"]
