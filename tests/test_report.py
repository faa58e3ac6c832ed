"""dstbench report: figures (PDF with TrueType fonts + PNG) and tables per suite present, index.md, provenance.json,
same-model Pareto points, significance of accuracy differences, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import synthetic_runs as syn
from dstbench import plots, records, registry, report, significance, tables
from dstbench.cli import main
from dstbench.errors import UserError

ONE_CASE = {"b16-fc1": (768, 3072)}
ACCURACY_REFERENCES = registry.get_suite("accuracy").references


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
                              "accuracy-digits-mlp", "pareto-digits-mlp-b1", "pareto-digits-mlp-b256"}
    for stem in stems(figures):
        pdf = (figures / f"{stem}.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf, stem  # TrueType (fonttype 42), not Type 3
        width, height = Image.open(figures / f"{stem}.png").size
        assert width == round(plots.COLUMN_WIDTH * plots.PNG_DPI) and 300 < height < 700, stem
    for stem in ("inference", "inference-speedup", "training", "accuracy", "accuracy-significance", "accuracy-speedup"):
        assert (out / "tables" / f"{stem}.md").read_text().startswith("| ")
        tex = (out / "tables" / f"{stem}.tex").read_text()
        assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    index = (out / "index.md").read_text()
    for text in ("## Runs", "Intel(R) Xeon(R) Platinum 8481C", "2.14.1", "0123456789", "## Inference latency and speedup",
                 "## Training throughput", "## Accuracy", "## Accuracy against speedup of the same model",
                 "](figures/pareto-digits-mlp-b1.png)", "](figures/pareto-digits-mlp-b256.pdf)", "(tables/accuracy.tex)",
                 "Table `accuracy-significance`", "[provenance.json](provenance.json)"):
        assert text in index, text


def test_figures_only_for_suites_present(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "acc"
    assert main(["report", str(runs["accuracy"]), "--out", str(out)]) == 0
    assert stems(out / "figures") == {"accuracy-digits-mlp", "pareto-digits-mlp-b1", "pareto-digits-mlp-b256"}
    index = (out / "index.md").read_text()
    assert "## Accuracy" in index and "Inference" not in index and "Training" not in index
    assert not (out / "tables" / "inference.md").exists()


def test_runs_from_two_machines_are_labelled_by_machine(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "two"
    assert main(["report", str(runs["inference"]), str(runs["inference-gpu"]), str(runs["accuracy"]),
                 "--out", str(out)]) == 0
    names = stems(out / "figures")
    assert {"speedup-intel-xeon-platinum-8481c-2-threads-b16-fc1", "speedup-nvidia-h100-80gb-hbm3-b16-fc1",
            "pareto-digits-mlp-b1", "pareto-digits-mlp-b256"} <= names
    table = (out / "tables" / "inference.md").read_text()
    assert table.startswith("| machine |") and "| NVIDIA H100 80GB HBM3 |" in table
    index = (out / "index.md").read_text()
    assert "### NVIDIA H100 80GB HBM3" in index and "fedcba9876" in index


def test_eager_and_graph_launches_get_their_own_figures_and_tables(tmp_path: Path) -> None:
    """A GPU run timed in both launch modes: no figure or table mixes a graph row with an eager one."""
    rows = [{**row, "device": "cuda", "impl": "cuda", "launch": launch}
            for launch in ("eager", "graph")
            for row in syn.inference_rows(cases=ONE_CASE, sparsities=(0.9,), batches=(1,), seed=6)]
    for row in rows:
        if row["launch"] == "graph":
            row["case_id"] += "/graph"
    run = syn.write_run(tmp_path / "gpu", "inference", rows, gpu_name="NVIDIA H200")
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert {"speedup-b16-fc1", "speedup-b16-fc1-graph", "latency-b16-fc1-b1", "latency-b16-fc1-graph-b1"} <= stems(
        out / "figures")
    for stem in ("inference-speedup", "inference-speedup-graph", "inference", "inference-graph"):
        assert (out / "tables" / f"{stem}.md").exists(), stem
    assert "Speedup over dense, b16-fc1 (768→3072), CUDA-graph replay" in (out / "index.md").read_text()


def test_rerun_replaces_an_earlier_report(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["report", str(runs["inference"]), str(runs["accuracy"]), "--out", str(out)]) == 0
    assert main(["report", str(runs["training"]), "--out", str(out)]) == 0
    assert stems(out / "figures") == {"training-mlp-b128"}
    assert set(json.loads((out / "provenance.json").read_text())["artifacts"]) == {
        "figures/training-mlp-b128", "tables/training", "index.md"}


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
    ]
    for argv, message in cases:
        assert main(["report", *argv]) == 2, argv
        assert message in one_error_line(capsys), argv
    assert (busy / "paper.tex").read_text() == "mine"


def test_every_figure_uses_the_method_style() -> None:
    frame = pd.DataFrame(syn.inference_rows(cases=ONE_CASE, sparsities=(0.9, 0.99), batches=(1,)))
    fig = plots.speedup_figure(frame, "t", "dense")
    colors = {bars.get_label(): bars.lines[0].get_color() for bars in fig.axes[0].containers}
    for method in ("rigl", "srigl", "dynadiag"):
        cls = registry.method_class(method)
        assert plots.style(method) == plots.MethodStyle(cls.color, cls.marker, cls.display_name)
        assert colors[cls.display_name] == cls.color
    declared = {plots.style(m).color for m in registry.list_methods()}
    assert len(declared) == len(registry.list_methods()), "every registered method has a colour of its own"
    assert plots.style("my-method") == plots.style("my-method")
    assert plots.style("my-method").color not in declared


def test_tables_and_legends_follow_the_declared_order() -> None:
    labels = ["dynadiag", "srigl:ablation=false", "zzz", "srigl", "dense", "rigl"]
    assert plots.ordered_methods(labels)[:5] == ["dense", "rigl", "srigl", "srigl:ablation=false", "dynadiag"]
    assert plots.ordered_methods(labels)[-1] == "zzz"


def test_every_figure_and_table_has_provenance(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    given = [str(runs[name]) for name in ("inference", "inference-gpu", "training", "accuracy")]
    assert main(["report", *given, "--out", str(out)]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["report"]["command"] == " ".join(["dstbench", "report", *given, "--out", str(out)])
    artifacts = provenance["artifacts"]
    written = {str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()} - {"provenance.json"}
    assert written == {name for artifact in artifacts.values() for name in artifact["files"]}
    for name, artifact in artifacts.items():
        assert artifact["caption"] and artifact["sources"], name
        for source in artifact["sources"]:
            assert source["run"] in given and source["segment"] == 0, name
            assert source["commit"]["git_sha"] and source["machine"]["label"] and source["machine"]["cpu_model"], name
            assert source["command"] == "/usr/bin/dstbench run --suite synthetic", name
    def runs_of(name: str) -> set[str]:
        return {source["run"] for source in artifacts[name]["sources"]}

    assert runs_of("figures/pareto-digits-mlp-b1") == runs_of("tables/accuracy-significance") == {str(runs["accuracy"])}
    assert runs_of("figures/speedup-nvidia-h100-80gb-hbm3-b16-fc1") == {str(runs["inference-gpu"])}
    gpu, = artifacts["figures/speedup-nvidia-h100-80gb-hbm3-b16-fc1"]["sources"]
    assert gpu["commit"]["git_sha"] == "fedcba9876543210" and gpu["machine"]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert runs_of("tables/inference") == {str(runs["inference"]), str(runs["inference-gpu"])}
    assert runs_of("index.md") == set(given)


def _accuracy_frame(path: Path, **options: object) -> pd.DataFrame:
    run = syn.write_run(path, "accuracy", syn.accuracy_rows(**options))
    return pd.DataFrame(records.read_rows(run)).assign(run=str(run), machine="m")


def test_pareto_points_are_the_trained_models_own_timings(tmp_path: Path) -> None:
    frame = _accuracy_frame(tmp_path / "acc", sparsities=(0.9, 0.99), seeds=(0, 1))
    points = report.pareto_points(frame, "b1")
    assert sorted(zip(points["method"], points["sparsity"])) == [
        ("dense", 0.0), *sorted((m, s) for m in ("dynadiag", "rigl", "srigl") for s in (0.9, 0.99))]
    rigl = frame[(frame["method"] == "rigl") & (frame["sparsity"] == 0.9)]
    pooled = np.median(np.concatenate(rigl["dense_samples_s_b1"].tolist())) / np.median(
        np.concatenate(rigl["samples_s_b1"].tolist()))  # both seeds' rounds, dense over model
    point = points[(points["method"] == "rigl") & (points["sparsity"] == 0.9)].iloc[0]
    assert point["speedup"] == pytest.approx(pooled) and point["speedup_lo"] <= pooled <= point["speedup_hi"]
    assert point["top1_mean"] == pytest.approx(100 * rigl["top1"].mean()) and point["batch"] == 1
    assert points.loc[points["method"] == "dense", "speedup"].item() == pytest.approx(1.0, abs=0.1)  # timed too
    untimed = _accuracy_frame(tmp_path / "untimed", timed=False)
    assert report.pareto_points(untimed, "b1").empty


def test_a_pareto_point_cannot_pair_two_models(runs: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    mlp = _accuracy_frame(tmp_path / "mlp", sparsities=(0.9,), seeds=(0,))
    layers = pd.DataFrame(syn.inference_rows(cases=ONE_CASE, batches=(1,))).assign(run="inference", machine="m")
    with pytest.raises(ValueError, match="only rows that record both can give both"):
        report.pareto_points(pd.concat([mlp, layers], ignore_index=True), "b1")  # digits MLP accuracy, ViT layer speed
    vit = _accuracy_frame(tmp_path / "vit", sparsities=(0.9,), seeds=(0,), model="vit_tiny")
    with pytest.raises(ValueError, match="one model on one machine; got 2"):
        report.pareto_points(pd.concat([mlp, vit], ignore_index=True), "b1")

    drawn = []
    real = plots.pareto_figure
    monkeypatch.setattr(plots, "pareto_figure", lambda points, title, xlabel, baseline: drawn.append((points, xlabel)) or
                        real(points, title, xlabel, baseline))
    assert main(["report", str(runs["inference"]), str(runs["accuracy"]), "--out", str(tmp_path / "r")]) == 0
    assert [xlabel for _, xlabel in drawn] == ["speedup over dense of the same mlp, batch 1",
                                               "speedup over dense of the same mlp, batch 256"]
    accuracy = pd.DataFrame(records.read_rows(runs["accuracy"])).assign(run=str(runs["accuracy"]), machine="m")
    for (points, _), label in zip(drawn, ("b1", "beval")):  # the inference run changes nothing
        expected = report.pareto_points(accuracy, label)
        assert points["speedup"].tolist() == pytest.approx(expected["speedup"].tolist())
    untimed = syn.write_run(tmp_path / "untimed", "accuracy", syn.accuracy_rows(timed=False))
    assert main(["report", str(runs["inference"]), str(untimed), "--out", str(tmp_path / "u")]) == 0
    assert not list((tmp_path / "u" / "figures").glob("pareto-*"))  # no timed model: no Pareto figure at all


def _predictions_run(folder: Path, correct: dict[tuple[str, float, int], np.ndarray],
                     labels: np.ndarray | None = None) -> pd.DataFrame:
    """Accuracy rows (digits, mlp) whose prediction files hold the given per-sample outcomes."""
    labels = np.zeros(100, np.int16) if labels is None else labels
    (folder / "predictions").mkdir(parents=True)
    np.save(folder / "predictions" / "labels.npy", labels)
    rows = []
    for (method, sparsity, seed), right in correct.items():
        name = f"predictions/{method}-{sparsity}-{seed}.npy"
        np.save(folder / name, np.where(right, labels, labels + 1).astype(np.int16))
        rows.append({"suite": "accuracy", "case_id": f"{method}/{sparsity}/{seed}", "dataset": "digits", "model": "mlp",
                     "method": method, "sparsity": sparsity, "seed": seed, "top1": float(right.mean()),
                     "predictions": name, "labels": "predictions/labels.npy", "run": str(folder)})
    return pd.DataFrame(rows)


def _wrong_at(*indices: int) -> np.ndarray:
    right = np.ones(100, bool)
    right[list(indices)] = False
    return right


def test_differences_against_dense_and_rigl(tmp_path: Path) -> None:
    frame = _predictions_run(tmp_path / "run", {
        ("dense", 0.0, 0): _wrong_at(), ("dense", 0.0, 1): _wrong_at(),
        ("rigl", 0.9, 0): _wrong_at(*range(10)), ("rigl", 0.9, 1): _wrong_at(*range(6)),
        ("srigl", 0.9, 0): _wrong_at(*range(1, 11)), ("srigl", 0.9, 1): _wrong_at(*range(7)),
    })
    found = significance.differences(frame, ACCURACY_REFERENCES).set_index(["method", "baseline"])
    assert sorted(found.index) == [("rigl", "dense"), ("srigl", "dense"), ("srigl", "rigl")]
    rigl = found.loc[("rigl", "dense")]
    half = 12.706204736174707 * 2.0  # t(0.975, 1) * sd / sqrt(2), differences -10 and -6 percentage points
    assert (rigl["seeds"], rigl["diff"]) == (2, -8.0)
    assert (rigl["diff_lo"], rigl["diff_hi"]) == pytest.approx((-8.0 - half, -8.0 + half))
    assert (rigl["b"], rigl["c"], rigl["exact"]) == (0, 16, True)  # rigl right where dense is wrong: never
    assert rigl["p"] == pytest.approx(2 * 0.5 ** 16)  # two-sided exact binomial, 0 of 16
    srigl = found.loc[("srigl", "rigl")]  # seed 0: srigl misses 10, rigl 0 (1 each way); seed 1: one more miss
    assert (srigl["b"], srigl["c"], srigl["diff"]) == (1, 2, -0.5)
    assert srigl["p"] == pytest.approx(1.0) and tables.fmt_p(srigl["p"]) == "n.s. (1)"
    summary = tables.accuracy_summary(frame)
    table = tables.significance_table(summary, significance.differences(frame, ACCURACY_REFERENCES),
                                   ACCURACY_REFERENCES).to_markdown()
    assert "| digits | mlp | srigl | 90% | 91.50 ± 2.12 | -8.50 [-27.56, +10.56] | < 0.001 | -0.50 [-6.85, +5.85] | n.s. (1) |" in table
    assert "| digits | mlp | dense | 0% | 100.00 ± 0.00 | – | – | – | – |" in table


def test_differences_refuse_other_test_sets_and_skip_missing_predictions(tmp_path: Path) -> None:
    one = _predictions_run(tmp_path / "a", {("dense", 0.0, 0): _wrong_at()})
    other = _predictions_run(tmp_path / "b", {("rigl", 0.9, 0): _wrong_at(3)}, labels=np.ones(100, np.int16))
    with pytest.raises(UserError, match="different test sets"):
        significance.differences(pd.concat([one, other], ignore_index=True), ACCURACY_REFERENCES)
    old = pd.concat([one, other], ignore_index=True).drop(columns=["predictions"])  # rows recorded before predictions
    diff = significance.differences(old, ACCURACY_REFERENCES).iloc[0]
    assert diff["diff"] == -1.0 and math.isnan(diff["p"]) and math.isnan(diff["diff_lo"])
    (tmp_path / "a" / "predictions" / "labels.npy").unlink()
    with pytest.raises(UserError, match="labels.npy is missing"):
        significance.differences(one.assign(method="rigl", sparsity=0.9).pipe(lambda f: pd.concat([one, f])),
                                 ACCURACY_REFERENCES)


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


def test_several_dense_libraries_get_their_own_boxes_and_columns() -> None:
    frame = pd.DataFrame(syn.inference_rows(cases=ONE_CASE, sparsities=(0.9,), batches=(1,), dense={"openblas": 1.2}))
    fig = plots.latency_figure(frame, "t", "dense")
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert "Dense (mkl)" in labels and "Dense (openblas)" in labels
    table = tables.inference_table(frame, machines=False)
    assert "dense" in table.headers and "vs torch dense" in table.headers


def test_point_labels_overlap_neither_each_other_nor_markers() -> None:
    """Twenty labels around a clump of points: every label is placed clear of the others and of every marker."""
    rng = np.random.default_rng(0)
    points = np.column_stack([1 + rng.normal(0, 0.03, 20), 97 + rng.normal(0, 0.4, 20)])
    with plots.paper_style():
        fig = plots._figure(2.6)
        ax = fig.subplots()
        ax.scatter(points[:, 0], points[:, 1], s=9)
        ax.set_xlim(0.7, 1.3)
        ax.set_ylim(95, 99)
        notes = plots.place_labels(fig, ax, [(x, y, f"{i}", "k") for i, (x, y) in enumerate(points)], points)
        renderer = fig.canvas.get_renderer()
        boxes = [plots.text_box(note, renderer) for note in notes]
        centers = ax.transData.transform(points)
    assert len(boxes) == 20
    overlaps = [(i, j) for i in range(20) for j in range(i) if plots._overlap(boxes[i], boxes[j]) > 0]
    assert overlaps == []
    assert [(i, k) for i, box in enumerate(boxes) for k, (x, y) in enumerate(centers) if box.contains(x, y)] == []


def test_a_variant_keeps_its_methods_colour_with_its_own_marker_and_hatch() -> None:
    base, variant = plots.style("dynadiag"), plots.style("dynadiag:selection=topk")
    assert variant.color == base.color and variant.marker != base.marker and variant.hatch
    assert variant.label == f"{base.label}, selection=topk"
    assert plots.style("dynadiag:selection=topk") == variant  # stable


def test_the_training_figure_draws_the_fastest_dense_step() -> None:
    rows = [{"method": "dense", "impl": impl, "sparsity": 0.9, "batch": 16, "samples_per_s": rate,
             "samples_s": [16 / rate] * 3} for impl, rate in (("dense", 100.0), ("inductor", 150.0), ("onednn", 80.0))]
    rows.append({"method": "rigl", "impl": "masked-dense", "sparsity": 0.9, "batch": 16, "samples_per_s": 90.0,
                 "samples_s": [16 / 90] * 3})
    fig = plots.training_figure(pd.DataFrame(rows), "t", "dense")
    line = fig.axes[0].lines[0]
    assert line.get_ydata()[0] == 150.0 and "inductor" in line.get_label()


def test_the_legend_order_is_the_declared_one_in_every_figure() -> None:
    """Dense first everywhere: as a line in the speedup figure and as its libraries' boxes in the latency figure."""
    frame = pd.DataFrame(syn.inference_rows(cases=ONE_CASE, sparsities=(0.9,), batches=(1,), dense={"openblas": 1.2}))
    speed = [t.get_text() for t in plots.speedup_figure(frame, "t", "dense").legends[0].get_texts()]
    boxes = [t.get_text() for t in plots.latency_figure(frame, "t", "dense").legends[0].get_texts()]
    assert boxes[:2] == ["Dense (mkl)", "Dense (openblas)"] and speed[0] == "Dense (1×)"
    assert [b for b in boxes if not b.startswith("Dense")] == speed[1:]


def test_the_full_inference_table_shows_the_core_round_trips_where_rows_have_them() -> None:
    rows = syn.inference_rows(cases=ONE_CASE, sparsities=(0.9,), batches=(1, 256))
    probed = [{**row, "core_rtt_ns": [120.4, 536.0] if row["batch"] == 1 else [118.0, 119.0]} for row in rows]
    table = tables.inference_table(pd.DataFrame(probed), machines=False)
    apart = table.headers.index("threads apart")
    batch = table.headers.index("batch")
    assert {(row[batch], row[apart]) for row in table.rows} == {("1", "120 / 536 ns"), ("256", "118 / 119 ns")}
    mixed = probed[:len(probed) // 2] + [{**row, "core_rtt_ns": None} for row in probed[len(probed) // 2:]]
    assert "–" in {row[apart] for row in tables.inference_table(pd.DataFrame(mixed), machines=False).rows}
    assert "threads apart" not in tables.inference_table(pd.DataFrame(rows), machines=False).headers
