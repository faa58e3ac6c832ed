"""dstbench report: figures (PDF with TrueType fonts + PNG) and tables per suite present, index.md, bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import synthetic_runs as syn
from dstbench import plots, report, tables
from dstbench.cli import main

ONE_CASE = {"b16-fc1": (768, 3072)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "inference": syn.write_run(root / "inference", "inference",
                                   syn.inference_rows(cases=ONE_CASE, sparsities=(0.9, 0.99), batches=(1, 256))),
        "training": syn.write_run(root / "training", "training", syn.training_rows(models=("mlp",))),
        "accuracy": syn.write_run(root / "accuracy", "accuracy", syn.accuracy_rows(sparsities=(0.9, 0.99))),
        "inference-gpu": syn.write_run(
            root / "inference-gpu", "inference",
            [{**row, "device": "cuda", "impl": "cuda"} for row in
             syn.inference_rows(cases=ONE_CASE, sparsities=(0.9,), batches=(256,), seed=5)],
            gpu_name="NVIDIA H100 80GB HBM3", git_sha="fedcba9876543210"),
    }


def stems(folder: Path) -> set[str]:
    return {path.stem for path in folder.glob("*.pdf")}


def test_full_report(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["report", str(runs["inference"]), str(runs["training"]), str(runs["accuracy"]), "--out", str(out)]) == 0
    assert "report written to" in capsys.readouterr().out
    figures = out / "figures"
    assert stems(figures) == {"speedup-b16-fc1", "latency-b16-fc1-b1", "latency-b16-fc1-b256", "training-mlp-b128",
                              "accuracy-digits-mlp", "pareto-digits-mlp"}
    for stem in stems(figures):
        pdf = (figures / f"{stem}.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf, stem  # TrueType (fonttype 42), not Type 3
        width, height = Image.open(figures / f"{stem}.png").size
        assert width == round(plots.COLUMN_WIDTH * plots.PNG_DPI) and 300 < height < 700, stem
    for stem in ("inference", "inference-speedup", "training", "accuracy"):
        assert (out / "tables" / f"{stem}.md").read_text().startswith("| ")
        tex = (out / "tables" / f"{stem}.tex").read_text()
        assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    index = (out / "index.md").read_text()
    for text in ("## Runs", "Intel(R) Xeon(R) Platinum 8481C", "2.14.1", "0123456789", "## Inference latency and speedup",
                 "## Training throughput", "## Accuracy", "## Accuracy against speedup", "`b16-fc1` at batch 256",
                 "](figures/pareto-digits-mlp.png)", "](figures/pareto-digits-mlp.pdf)", "(tables/accuracy.tex)"):
        assert text in index, text


def test_figures_only_for_suites_present(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "acc"
    assert main(["report", str(runs["accuracy"]), "--out", str(out)]) == 0
    assert stems(out / "figures") == {"accuracy-digits-mlp"}
    index = (out / "index.md").read_text()
    assert "## Accuracy" in index and "Inference" not in index and "Training" not in index
    assert not (out / "tables" / "inference.md").exists()


def test_runs_from_two_machines_are_labelled_by_machine(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "two"
    assert main(["report", str(runs["inference"]), str(runs["inference-gpu"]), str(runs["accuracy"]),
                 "--out", str(out), "--pareto-case", "b16-fc1", "--pareto-batch", "256"]) == 0
    names = stems(out / "figures")
    assert {"speedup-intel-xeon-platinum-8481c-2-threads-b16-fc1", "speedup-nvidia-h100-80gb-hbm3-b16-fc1",
            "pareto-nvidia-h100-80gb-hbm3-digits-mlp", "pareto-intel-xeon-platinum-8481c-2-threads-digits-mlp"} <= names
    table = (out / "tables" / "inference.md").read_text()
    assert table.startswith("| machine |") and "| NVIDIA H100 80GB HBM3 |" in table
    index = (out / "index.md").read_text()
    assert "### NVIDIA H100 80GB HBM3" in index and "fedcba9876" in index


def test_rerun_replaces_an_earlier_report(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["report", str(runs["inference"]), str(runs["accuracy"]), "--out", str(out)]) == 0
    assert main(["report", str(runs["accuracy"]), "--out", str(out)]) == 0
    assert stems(out / "figures") == {"accuracy-digits-mlp"}


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dstbench: error: ")
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = syn.write_run(tmp_path / "empty", "inference", [])
    corrupt = syn.write_run(tmp_path / "corrupt", "accuracy", syn.accuracy_rows(seeds=(0,)))
    (corrupt / "run.json").write_text("{not json")
    incomplete = syn.write_run(tmp_path / "incomplete", "training",
                               [{k: v for k, v in row.items() if k != "samples_per_s"} for row in syn.training_rows()])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "paper.tex").write_text("mine")
    out = str(tmp_path / "out")
    cases = [
        ([str(tmp_path / "missing"), "--out", out], "does not exist"),
        ([str(foreign), "--out", out], "no run.json"),
        ([str(empty), "--out", out], "no recorded cases"),
        ([str(corrupt), "--out", out], "is corrupt"),
        ([str(incomplete), "--out", out], "lacks samples_per_s"),
        ([str(runs["accuracy"]), str(runs["accuracy"]), "--out", out], "given twice"),
        ([str(runs["accuracy"]), "--out", str(runs["inference"])], "is a run folder"),
        ([str(runs["accuracy"]), "--out", str(busy)], "not empty"),
        ([str(runs["inference"]), str(runs["accuracy"]), "--out", out, "--pareto-case", "nope"], "--pareto-case"),
        ([str(runs["inference"]), str(runs["accuracy"]), "--out", out, "--pareto-batch", "7"], "--pareto-batch 7"),
        ([str(runs["accuracy"]), "--out", out, "--pareto-batch", "7"], "need an inference run"),
    ]
    for argv, message in cases:
        assert main(["report", *argv]) == 2, argv
        assert message in one_error_line(capsys), argv
    assert (busy / "paper.tex").read_text() == "mine"


def test_every_figure_uses_the_method_style() -> None:
    frame = pd.DataFrame(syn.inference_rows(cases=ONE_CASE, sparsities=(0.9, 0.99), batches=(1,)))
    fig = plots.speedup_figure(frame, "t")
    colors = {bars.get_label(): bars.lines[0].get_color() for bars in fig.axes[0].containers}
    for method in ("rigl", "srigl", "dynadiag"):
        assert colors[plots.STYLES[method].label] == plots.STYLES[method].color
    assert plots.style("my-method") == plots.style("my-method")
    assert plots.style("my-method").color not in {s.color for s in plots.STYLES.values()}


def test_pareto_join_matches_method_and_sparsity() -> None:
    summary = tables.accuracy_summary(pd.DataFrame(syn.accuracy_rows(sparsities=(0.9, 0.99), seeds=(0, 1))))
    speed = pd.DataFrame(syn.inference_rows(cases=ONE_CASE, batches=(256,), sparsities=(0.9 + 1e-12, 0.95)))
    points = report.pareto_points(summary, speed)
    assert sorted(zip(points["method"], points["sparsity"])) == [
        ("dense", 0.0), ("dynadiag", 0.9), ("rigl", 0.9), ("srigl", 0.9)]
    assert points.loc[points["method"] == "dense", "speedup"].item() == 1.0
    assert points.loc[points["method"] == "dynadiag", "speedup"].item() > 3


def test_pareto_front() -> None:
    speed = [1.0, 2.0, 3.0, 2.5, 4.0]
    acc = [95.0, 94.0, 90.0, 89.0, 91.0]
    assert plots.pareto_front(speed, acc) == [0, 1, 4]


def test_accuracy_summary_mean_and_sd_in_percent() -> None:
    rows = [{"method": "rigl", "sparsity": 0.9, "seed": s, "top1": t, "dataset": "d", "model": "m"}
            for s, t in enumerate((0.90, 0.92, 0.94))]
    summary = tables.accuracy_summary(pd.DataFrame(rows))
    assert summary["top1_mean"].item() == pytest.approx(92.0)
    assert summary["top1_sd"].item() == pytest.approx(2.0)
    assert summary["seeds"].item() == 3


def test_latex_escaping_and_symbols() -> None:
    assert tables.latex_escape("a_b 90% 3.1× ± 2 µs & #") == r"a\_b 90\% 3.1$\times$ $\pm$ 2 $\mu$s \& \#"
    table = tables.Table(["x|y", "n"], ["l", "r"], [["a|b", "1"]], caption="c")
    assert table.to_markdown() == "| x\\|y | n |\n|---|---:|\n| a\\|b | 1 |\n"
    assert r"\begin{tabular}{lr}" in table.to_latex("tab:x") and r"\label{tab:x}" in table.to_latex("tab:x")
