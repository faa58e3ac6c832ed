"""``dstbench report RUN... --out reports/NAME``: figures (PDF + PNG), tables (Markdown + LaTeX) and an index.md.

Runs of any suites, from any machines, are combined; inference and
training runs are labelled by machine (``dstbench.runs.machine_label``).
Figures are drawn only for the suites present:

* inference: speedup over dense against sparsity per case (a panel per
  batch, 95% intervals, the y = 1 dense line); latency box plots per case
  and batch;
* training: throughput per model and batch;
* accuracy: top-1 (mean ± sd over seeds) against sparsity with the dense
  band, per dataset and model;
* accuracy and inference together: accuracy against speedup (Pareto), joining
  method and sparsity, at one inference case and batch (``--pareto-case``,
  ``--pareto-batch``; by default the end-to-end model if timed, else the
  first layer case, at its largest batch).

The output folder holds ``index.md``, ``figures/`` and ``tables/``; an
earlier report there is replaced, any other non-empty folder is refused.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from dstbench import plots, records, tables
from dstbench.errors import OneLineParser, UserError
from dstbench.runs import Run, load_run, machine_label

INDEX = "index.md"


def slug(text: str) -> str:
    """A file-name-safe lower-case form of ``text``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


@dataclass
class Section:
    """Part of index.md: a heading and Markdown blocks."""

    title: str
    blocks: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What has been written so far, to be tied together in index.md."""

    out: Path
    sections: list[Section] = field(default_factory=list)
    figures: int = 0
    tables: int = 0

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def figure(self, section: Section, fig: Any, stem: str, caption: str) -> None:
        plots.save(fig, self.out / "figures", stem)
        self.figures += 1
        section.blocks.append(f"![{caption}](figures/{stem}.png)\n\n*{caption}* ([PDF](figures/{stem}.pdf))")

    def table(self, section: Section, table: tables.Table, stem: str, inline: bool = True) -> None:
        folder = self.out / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        markdown = table.to_markdown()
        (folder / f"{stem}.md").write_text(markdown)
        (folder / f"{stem}.tex").write_text(table.to_latex(label=f"tab:{stem}"))
        self.tables += 1
        links = f"Table `{stem}`: [Markdown](tables/{stem}.md), [LaTeX](tables/{stem}.tex)"
        section.blocks.append(f"{links}. {table.caption}\n\n{markdown}" if inline else f"{links}. {table.caption}")


def _labels(runs: Sequence[Run]) -> dict[Path, str]:
    """Run path -> machine label, made unique within each suite with ' (2)', ' (3)', ..."""
    labels, seen = {}, {}
    for run in runs:
        label = machine_label(run)
        count = seen.setdefault(run.suite, {}).get(label, 0) + 1
        seen[run.suite][label] = count
        labels[run.path] = label if count == 1 else f"{label} ({count})"
    return labels


def frame_of(runs: Sequence[Run], suite: str, labels: dict[Path, str]) -> pd.DataFrame:
    """The rows of the ``suite`` runs as one DataFrame with ``machine`` and ``run`` columns (empty if none)."""
    frames = [pd.DataFrame(run.rows).assign(machine=labels[run.path], run=str(run.path))
              for run in runs if run.suite == suite]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _case_title(rows: pd.DataFrame, case: str) -> str:
    shape = tables.shape_of(rows.iloc[0])
    return f"{case} ({'end to end' if shape == 'model' else shape})"


def _with_machine(title: str, machine: str, several: bool) -> str:
    return f"{title}, {machine}" if several else title


def inference_section(report: Report, frame: pd.DataFrame) -> None:
    """Speedup and latency figures per machine and case, the speedup pivot and the full table."""
    section = report.section("Inference latency and speedup")
    several = frame["machine"].nunique() > 1
    section.blocks.append(
        "Speedups are ratios of medians of per-round latencies timed interleaved with dense (and CSR) in the same "
        "process, with 95% bootstrap intervals; the dashed line is dense (1×). Boxes span the quartiles of the "
        "per-round latencies, whiskers their range.")
    for machine, rows in frame.groupby("machine", sort=False):
        prefix = f"{slug(machine)}-" if several else ""
        section.blocks.append(f"### {machine}")
        for case, case_rows in rows.groupby("case", sort=False):
            title = _with_machine(_case_title(case_rows, case), machine, several)
            report.figure(section, plots.speedup_figure(case_rows, title), f"speedup-{prefix}{slug(case)}",
                          f"Speedup over dense, {title}")
            for batch, batch_rows in case_rows.groupby("batch", sort=True):
                report.figure(section, plots.latency_figure(batch_rows, f"{title}, batch {batch}"),
                              f"latency-{prefix}{slug(case)}-b{batch}", f"Latency per call, {title}, batch {batch}")
    report.table(section, tables.speedup_pivot(frame, several), "inference-speedup")
    report.table(section, tables.inference_table(frame, several), "inference", inline=False)


def training_section(report: Report, frame: pd.DataFrame) -> None:
    """Throughput figures per machine, model and batch, and the training table."""
    section = report.section("Training throughput")
    several = frame["machine"].nunique() > 1
    section.blocks.append("Samples per second of a full training step (forward, backward, optimizer, topology "
                          "update amortized); bars are medians, error bars the interquartile range over steps, "
                          "the dashed line is dense.")
    for (machine, model, batch), rows in frame.groupby(["machine", "model", "batch"], sort=False):
        prefix = f"{slug(machine)}-" if several else ""
        title = _with_machine(f"{model}, batch {batch}", machine, several)
        report.figure(section, plots.training_figure(rows, title), f"training-{prefix}{slug(str(model))}-b{batch}",
                      f"Training throughput, {title}")
    report.table(section, tables.training_table(frame, several), "training")


def accuracy_section(report: Report, summary: pd.DataFrame) -> None:
    """Accuracy against sparsity per dataset and model, and the accuracy table."""
    section = report.section("Accuracy")
    section.blocks.append("Top-1 accuracy, mean ± sample standard deviation over seeds; the grey band is dense "
                          "(mean ± sd).")
    for (dataset, model), rows in summary.groupby(["dataset", "model"], sort=False):
        title = f"{dataset}, {model}"
        report.figure(section, plots.accuracy_figure(rows, title), f"accuracy-{slug(str(dataset))}-{slug(str(model))}",
                      f"Top-1 accuracy against sparsity, {title}")
    report.table(section, tables.accuracy_table(summary), "accuracy")


def pareto_choice(inference: pd.DataFrame, case: str | None, batch: int | None) -> tuple[str, int]:
    """The inference case and batch of the Pareto plot: the given ones, or the defaults (module docstring)."""
    cases = list(dict.fromkeys(inference["case"]))
    if case is None:
        e2e = inference[inference["e2e"] == True]["case"] if "e2e" in inference else pd.Series(dtype=str)  # noqa: E712
        case = e2e.iloc[0] if len(e2e) else cases[0]
    elif case not in cases:
        raise UserError(f"--pareto-case {case!r} is not in the inference runs; choose one of {', '.join(map(str, cases))}")
    batches = sorted(inference[inference["case"] == case]["batch"].unique())
    if batch is None:
        batch = int(batches[-1])
    elif batch not in batches:
        raise UserError(f"--pareto-batch {batch} was not timed for {case}; choose one of {', '.join(map(str, batches))}")
    return case, batch


def pareto_points(summary: pd.DataFrame, speed: pd.DataFrame) -> pd.DataFrame:
    """Accuracy rows (one dataset and model) joined with speedups (one machine, case, batch) by method and sparsity.

    Dense joins at speedup 1 whatever its recorded sparsity; methods or sparsities
    missing on either side are left out.
    """
    speed = speed[["method", "sparsity", "speedup_vs_dense", "speedup_vs_dense_lo", "speedup_vs_dense_hi"]].rename(
        columns={"speedup_vs_dense": "speedup", "speedup_vs_dense_lo": "speedup_lo", "speedup_vs_dense_hi": "speedup_hi"})
    speed = speed[speed["method"] != "dense"].assign(key=lambda f: f["sparsity"].round(6))
    acc = summary.assign(key=summary["sparsity"].round(6))
    joined = acc[acc["method"] != "dense"].merge(speed.drop(columns="sparsity"), on=["method", "key"])
    dense = acc[acc["method"] == "dense"].assign(speedup=1.0, speedup_lo=1.0, speedup_hi=1.0)
    return pd.concat([dense, joined], ignore_index=True).drop(columns="key")


def pareto_section(report: Report, summary: pd.DataFrame, inference: pd.DataFrame, case: str, batch: int) -> None:
    """Accuracy against speedup for every (machine, dataset, model), at the inference ``case`` and ``batch``."""
    section = report.section("Accuracy against speedup")
    section.blocks.append(
        f"Accuracy runs joined with the inference speedups of `{case}` at batch {batch} by method and sparsity "
        "(change with `--pareto-case` / `--pareto-batch`). Error bars: sd over seeds and the 95% interval of the "
        "speedup; numbers next to the points are sparsities (%); the dotted line is the Pareto front.")
    timed = inference[(inference["case"] == case) & (inference["batch"] == batch)]
    several = timed["machine"].nunique() > 1
    for machine, speed in timed.groupby("machine", sort=False):
        for (dataset, model), acc in summary.groupby(["dataset", "model"], sort=False):
            points = pareto_points(acc, speed)
            if (points["method"] != "dense").sum() == 0:
                section.blocks.append(f"No method and sparsity of {dataset}/{model} was timed on {machine}.")
                continue
            title = _with_machine(f"{dataset}, {model}", machine, several)
            stem = f"pareto-{f'{slug(machine)}-' if several else ''}{slug(str(dataset))}-{slug(str(model))}"
            report.figure(section, plots.pareto_figure(points, title, f"speedup over dense ({case}, batch {batch})"),
                          stem, f"Top-1 accuracy against inference speedup, {title}")


def _env_table(runs: Sequence[Run], labels: dict[Path, str]) -> tables.Table:
    rows = []
    for run in runs:
        env = run.env
        sha = (env.get("git_sha") or "unknown")[:10] + ("+dirty" if env.get("git_dirty") else "")
        rows.append([labels[run.path] if run.suite != "accuracy" else "–", run.suite, str(run.path),
                     str(env.get("cpu_model") or "–"), str(env.get("gpu_name") or "–"), str(env.get("torch") or "–"),
                     str(env.get("cuda") or "–"), str(env.get("threads") or "–"), sha,
                     str(run.meta.get("finished_at") or "unfinished")])
    return tables.Table(["machine", "suite", "run", "CPU", "GPU", "torch", "CUDA", "threads", "git", "finished"],
                        ["l"] * 10, rows)


def write_index(report: Report, runs: Sequence[Run], labels: dict[Path, str], argv: Sequence[str]) -> Path:
    """index.md: the command, the runs' environments, then every section."""
    lines = ["# dstbench report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `dstbench report {' '.join(argv)}`. "
             "Figures are vector PDF (TrueType fonts) and PNG, one paper column (3.4 in) wide.", "",
             "## Runs", "", _env_table(runs, labels).to_markdown()]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [block, ""]
    path = report.out / INDEX
    records.atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def prepare_out(out: Path, runs: Sequence[Run]) -> None:
    """Check the output folder and clear an earlier report in it; UserError for anything else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder such as reports/NAME")
    if any(out.resolve() == run.path.resolve() for run in runs) or (out / records.RUN_FILE).exists():
        raise UserError(f"--out {out} is a run folder; write the report to another folder such as reports/NAME")
    if out.is_dir() and any(out.iterdir()):
        if not (out / INDEX).exists():
            raise UserError(f"--out {out} is not empty and holds no earlier report; choose a new folder")
        for sub in ("figures", "tables"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def build(paths: Sequence[str], out: Path, pareto_case: str | None = None, pareto_batch: int | None = None,
          argv: Sequence[str] = ()) -> Report:
    """Load the runs and write the whole report into ``out``."""
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise UserError("a run folder is given twice; give each run once")
    runs = [load_run(p) for p in paths]
    labels = _labels(runs)
    inference = frame_of(runs, "inference", labels)
    training = frame_of(runs, "training", labels)
    accuracy = frame_of(runs, "accuracy", labels)
    if (pareto_case or pareto_batch) and inference.empty:
        raise UserError("--pareto-case/--pareto-batch need an inference run among the runs")
    if not inference.empty:
        pareto_case, pareto_batch = pareto_choice(inference, pareto_case, pareto_batch)
    prepare_out(out, runs)
    report = Report(out)
    if not inference.empty:
        inference_section(report, inference)
    if not training.empty:
        training_section(report, training)
    if not accuracy.empty:
        summary = tables.accuracy_summary(accuracy)
        accuracy_section(report, summary)
        if not inference.empty:
            pareto_section(report, summary, inference, pareto_case, pareto_batch)
    write_index(report, runs, labels, argv)
    return report


def main(argv: Sequence[str]) -> int:
    """``dstbench report RUN... --out reports/NAME``."""
    parser = OneLineParser(
        prog="dstbench report",
        description="Figures (PDF + PNG) and tables (Markdown + LaTeX) for papers from one or more run folders, "
                    "tied together in OUT/index.md.")
    parser.add_argument("runs", nargs="+", help="run folders of any suites, from one or several machines")
    parser.add_argument("--out", type=Path, help="report folder (default reports/report-<timestamp>)")
    parser.add_argument("--pareto-case", help="inference case of the accuracy-vs-speedup plot "
                                              "(default: the end-to-end model if timed, else the first layer case)")
    parser.add_argument("--pareto-batch", type=int, help="batch of that case (default: its largest)")
    args = parser.parse_args(argv)
    out = args.out or Path("reports") / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
    report = build(args.runs, out, args.pareto_case, args.pareto_batch, argv)
    print(f"report written to {out / INDEX}: {report.figures} figures (PDF + PNG), {report.tables} tables "
          "(Markdown + LaTeX)")
    return 0
