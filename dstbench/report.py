"""``dstbench report RUN... --out reports/NAME``: figures (PDF + PNG), tables (Markdown + LaTeX), index.md, provenance.json.

Runs of any suites, from any machines, are combined; inference and
training runs are labelled by machine (``dstbench.runs.machine_label``).
Figures are drawn only for the suites present:

* inference: speedup over dense against sparsity per case and cache mode
  (a panel per batch, 95% intervals, the y = 1 dense line); latency box
  plots per case, cache mode and batch; achieved bandwidth against bytes
  per call per batch, warm and cold panels, under the run's measured read
  bandwidth (for rows that record bytes); the tables per cache mode (cold
  ones suffixed ``-cold``);
* training: throughput per model and batch;
* accuracy: top-1 (mean ± sd over seeds) against sparsity with the dense
  band, per dataset and model; tables of top-1, of its differences from
  dense and from RigL with their significance (``dstbench.significance``)
  and of the trained models' own inference speedups;
* accuracy against speedup (Pareto), per machine, dataset and model and per
  timed batch: both coordinates come from the accuracy rows alone, each of
  which timed the model it trained against a dense model of the same
  architecture (``pareto_points``). Inference runs, which time other
  layers and models, never enter it.

The output folder holds ``index.md``, ``figures/``, ``tables/`` and
``provenance.json``, which names for every figure and table the runs (and
their segments), commits, machines and commands behind it. An earlier
report there is replaced, any other non-empty folder is refused.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from dstbench import env as envinfo
from dstbench import plots, records, registry, significance, tables
from dstbench.errors import OneLineParser, UserError
from dstbench.runs import Run, load_run, machine_label

if TYPE_CHECKING:
    from dstbench.suites.base import Reference

INDEX = "index.md"
PROVENANCE = "provenance.json"


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
    """What has been written so far, to be tied together in index.md, and where each piece came from.

    ``runs`` maps a run folder (as given) to its Run and machine label;
    ``provenance`` maps each written figure or table (``figures/STEM``,
    ``tables/STEM``) to its files, caption and sources (``source``).
    """

    out: Path
    runs: dict[str, tuple[Run, str]] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: int = 0
    tables: int = 0

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def sources(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """``source`` of every (run, segment) that ``rows`` (with ``run`` and ``segment`` columns) come from."""
        pairs = sorted({(str(r), int(s)) for r, s in zip(rows["run"], rows.get("segment", pd.Series(0, rows.index)))})
        return [source(*self.runs[run], segment) for run, segment in pairs]

    def _record(self, name: str, files: list[str], caption: str, rows: pd.DataFrame) -> None:
        self.provenance[name] = {"files": files, "caption": caption, "sources": self.sources(rows)}

    def figure(self, section: Section, fig: Any, stem: str, caption: str, rows: pd.DataFrame) -> None:
        """Save ``fig`` as figures/STEM.pdf and .png, drawn from ``rows``, and show it in ``section``."""
        plots.save(fig, self.out / "figures", stem)
        self.figures += 1
        self._record(f"figures/{stem}", [f"figures/{stem}.pdf", f"figures/{stem}.png"], caption, rows)
        section.blocks.append(f"![{caption}](figures/{stem}.png)\n\n*{caption}* ([PDF](figures/{stem}.pdf))")

    def table(self, section: Section, table: tables.Table, stem: str, rows: pd.DataFrame, inline: bool = True) -> None:
        """Write ``table``, built from ``rows``, as tables/STEM.md and .tex, and show or link it in ``section``."""
        folder = self.out / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        markdown = table.to_markdown()
        (folder / f"{stem}.md").write_text(markdown)
        (folder / f"{stem}.tex").write_text(table.to_latex(label=f"tab:{stem}"))
        self.tables += 1
        self._record(f"tables/{stem}", [f"tables/{stem}.md", f"tables/{stem}.tex"], table.caption, rows)
        links = f"Table `{stem}`: [Markdown](tables/{stem}.md), [LaTeX](tables/{stem}.tex)"
        section.blocks.append(f"{links}. {table.caption}\n\n{markdown}" if inline else f"{links}. {table.caption}")


def source(run: Run, label: str, segment: int) -> dict[str, Any]:
    """Where one segment of a run was measured: folder, suite, commit, machine, command and times."""
    part = next((s for s in records.segments(run.meta) if s["segment"] == segment), run.meta)
    env = part.get("env") or run.env
    argv = env.get("argv")
    return {
        "run": str(run.path), "suite": run.suite, "segment": segment,
        "commit": {"git_sha": env.get("git_sha"), "git_dirty": env.get("git_dirty")},
        "machine": {"label": label, **{key: env.get(key) for key in
                                       ("hostname", "cpu_model", "cpu_id", "gpu_name", "threads", "torch", "cuda", "cupy")}},
        "command": " ".join(argv) if argv else None,
        "started_at": part.get("started_at"), "finished_at": part.get("finished_at"),
    }


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


def inference_section(report: Report, frame: pd.DataFrame, references: Sequence[Reference]) -> None:
    """Speedup and latency figures per machine and case, the speedup pivot and the full table."""
    baseline = references[0].method
    section = report.section("Inference latency and speedup")
    several = frame["machine"].nunique() > 1
    section.blocks.append(
        "Speedups are ratios of medians of per-round latencies timed interleaved with dense (and CSR) in the same "
        "process, with 95% bootstrap intervals; the dashed line is dense (1×). Boxes span the quartiles of the "
        "per-round latencies, whiskers their range. Figures and tables marked cold timed every call after the caches "
        "were emptied and a twin of the layer was run (neither timed), so that only the layer's own data was cold; "
        "the others are warm, each call finding the layer's data where the last one left it. "
        "The bandwidth figures hold each call's bytes (stored tensors, input and output) over its median latency "
        "against the read bandwidth measured in the same run. On CUDA, figures and tables marked graph replayed each "
        "call from a CUDA graph captured once (the device's time alone); the others launched every call from Python.")
    frame = frame.assign(l2=frame["l2"].fillna("warm") if "l2" in frame else "warm",
                         launch=frame["launch"].fillna("eager") if "launch" in frame else "eager")
    for machine, rows in frame.groupby("machine", sort=False):
        prefix = f"{slug(machine)}-" if several else ""
        section.blocks.append(f"### {machine}")
        for (case, l2, launch), case_rows in rows.groupby(["case", "l2", "launch"], sort=False):
            title = _with_machine(_case_title(case_rows, case) + _caches(l2) + _launched(launch), machine, several)
            stem = f"{prefix}{slug(case)}{_suffix(l2)}{_suffix(launch, 'eager')}"
            report.figure(section, plots.speedup_figure(case_rows, title, baseline), f"speedup-{stem}",
                          f"Speedup over dense, {title}", case_rows)
            for batch, batch_rows in case_rows.groupby("batch", sort=True):
                report.figure(section, plots.latency_figure(batch_rows, f"{title}, batch {batch}", baseline),
                              f"latency-{stem}-b{batch}", f"Latency per call, {title}, batch {batch}", batch_rows)
        for launch, launch_rows in rows.groupby("launch", sort=False):
            roofline_section(report, section, launch_rows, machine, several, launch)
    for (l2, launch), rows in frame.groupby(["l2", "launch"], sort=False):
        suffix = f"{_suffix(l2)}{_suffix(launch, 'eager')}"
        report.table(section, tables.speedup_pivot(rows, several, baseline), f"inference-speedup{suffix}", rows)
        report.table(section, tables.inference_table(rows, several), f"inference{suffix}", rows, inline=False)


def _caches(l2: str) -> str:
    """The title part of a cache mode: nothing for warm (the mode every suite times), ', cold caches' otherwise."""
    return "" if l2 == "warm" else f", {l2} caches"


def _suffix(mode: str, plain: str = "warm") -> str:
    """The file-name part of a timing mode: nothing for the ``plain`` one (warm caches, eager launches), '-cold'
    or '-graph' otherwise."""
    return "" if mode == plain else f"-{slug(mode)}"


def _launched(launch: str) -> str:
    """The title part of a launch mode: nothing for eager (every CPU run), ', CUDA-graph replay' for graph."""
    return "" if launch == "eager" else ", CUDA-graph replay"


def roofline_section(report: Report, section: Section, frame: pd.DataFrame, machine: str, several: bool,
                     launch: str = "eager") -> None:
    """Achieved bandwidth against bytes per call, one figure per batch, of the rows of one machine and launch mode
    that record it (the layer and stack cases of runs that measured bytes; nothing for older runs)."""
    if "gbps" not in frame:
        return
    rows = frame[frame["gbps"].notna() & frame["bytes"].notna()]
    prefix = f"{slug(machine)}-" if several else ""
    for batch, batch_rows in rows.groupby("batch", sort=True):
        title = _with_machine(f"batch {batch}{_launched(launch)}", machine, several)
        report.figure(section, plots.roofline_figure(batch_rows, f"Bandwidth per call, {title}"),
                      f"roofline-{prefix}b{batch}{_suffix(launch, 'eager')}",
                      f"Achieved bandwidth (bytes a call moves / median latency) against bytes per call, {title}: "
                      "every layer and stack case and sparsity; the grey line is the read bandwidth the run measured "
                      "at each working set, warm, or after an eviction, cold (beyond the last-level cache in runs "
                      "recorded before the cold probe), which limit_frac divides by",
                      batch_rows)


def training_section(report: Report, frame: pd.DataFrame, references: Sequence[Reference]) -> None:
    """Throughput figures per machine, model and batch, and the training table."""
    section = report.section("Training throughput")
    several = frame["machine"].nunique() > 1
    section.blocks.append("Samples per second of a full training step (forward, backward, optimizer, topology "
                          "update amortized); bars are medians, error bars the interquartile range over steps, "
                          "the dashed line is dense.")
    for (machine, model, batch), rows in frame.groupby(["machine", "model", "batch"], sort=False):
        prefix = f"{slug(machine)}-" if several else ""
        title = _with_machine(f"{model}, batch {batch}", machine, several)
        report.figure(section, plots.training_figure(rows, title, references[0].method), f"training-{prefix}{slug(str(model))}-b{batch}",
                      f"Training throughput, {title}", rows)
    report.table(section, tables.training_table(frame, several), "training", frame)


def accuracy_section(report: Report, frame: pd.DataFrame, references: Sequence[Reference]) -> None:
    """Accuracy against sparsity per dataset and model; the accuracy, significance and same-model speed tables."""
    section = report.section("Accuracy")
    section.blocks.append("Top-1 accuracy, mean ± sample standard deviation over seeds; the grey band is dense "
                          "(mean ± sd).")
    for (dataset, model), rows in frame.groupby(["dataset", "model"], sort=False):
        title = f"{dataset}, {model}"
        report.figure(section, plots.accuracy_figure(tables.accuracy_summary(rows), title, references[0].method),
                      f"accuracy-{slug(str(dataset))}-{slug(str(model))}", f"Top-1 accuracy against sparsity, {title}",
                      rows)
    summary = tables.accuracy_summary(frame)
    report.table(section, tables.accuracy_table(summary), "accuracy", frame)
    report.table(section, tables.significance_table(summary, significance.differences(frame, references), references), "accuracy-significance",
                 frame)
    timed = _timed(frame)
    if not timed.empty:
        report.table(section, tables.same_model_table(timed, timed["machine"].nunique() > 1), "accuracy-speedup", timed)


def _timed(frame: pd.DataFrame, label: str | None = None) -> pd.DataFrame:
    """The rows of ``frame`` whose model was timed at batch ``label`` (at any timed batch if None)."""
    columns = [records.timed_column("speedup_vs_dense", b) for b in ([label] if label else records.TIMED_BATCHES)]
    present = [c for c in columns if c in frame]
    return frame[frame[present].notna().any(axis=1)] if present else frame.iloc[:0]


def pareto_points(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """Accuracy against the speedup of the same trained models at timed batch ``label``: one point per (method, sparsity).

    Both coordinates come from the same accuracy rows: top-1 (mean ± sd over
    seeds, ``tables.accuracy_summary``) and the speedup over dense at which
    each row's own model was timed (``tables.same_model_speedups``). Rows
    not timed at ``label`` are left out.

    Raises:
        ValueError: ``frame`` holds rows without a top-1 (say, inference rows of other layers) or of more than
            one (machine, dataset, model): a point may only pair a model's accuracy with that model's speed.
    """
    untrained = frame[frame["top1"].isna()] if "top1" in frame else frame
    if not untrained.empty:
        raise ValueError(f"a Pareto point pairs a trained model's accuracy with that model's own timing; got "
                         f"{len(untrained)} {', '.join(sorted(map(str, set(untrained['suite']))))} rows without a top-1, "
                         "where only rows that record both can give both")
    keys = [key for key in ("machine", "dataset", "model") if key in frame]
    models = frame[keys].drop_duplicates()
    if len(models) > 1:
        raise ValueError(f"a Pareto figure shows one model on one machine; got {len(models)}: "
                         + "; ".join(" ".join(map(str, m)) for m in models.itertuples(index=False)))
    timed = _timed(frame, label)
    if timed.empty:
        return pd.DataFrame()
    speed = tables.same_model_speedups(timed, label).drop(columns=["machine"], errors="ignore")
    return tables.accuracy_summary(timed).merge(speed, on=significance.KEYS)


def accuracy_sections(report: Report, frame: pd.DataFrame, references: Sequence[Reference]) -> None:
    """The accuracy suite's report: accuracy figures and tables, then the same-model Pareto figures."""
    accuracy_section(report, frame, references)
    pareto_section(report, frame, references)


def pareto_section(report: Report, frame: pd.DataFrame, references: Sequence[Reference]) -> None:
    """Accuracy against same-model speedup per (machine, dataset, model) and timed batch; nothing if none was timed."""
    several = frame["machine"].nunique() > 1
    figures = []
    for (machine, dataset, model), rows in frame.groupby(["machine", "dataset", "model"], sort=False):
        for label in records.TIMED_BATCHES:
            points = pareto_points(rows, label)
            if points.empty:
                continue
            batch = int(points["batch"].iloc[0])
            title = _with_machine(f"{dataset}, {model}", machine, several)
            stem = f"pareto-{f'{slug(machine)}-' if several else ''}{slug(str(dataset))}-{slug(str(model))}-b{batch}"
            fig = plots.pareto_figure(points, title, f"speedup over dense of the same {model}, batch {batch}",
                                      references[0].method)
            figures.append((fig, stem, f"Top-1 accuracy against inference speedup, {title}, batch {batch}",
                            _timed(rows, label)))
    if not figures:
        return
    section = report.section("Accuracy against speedup of the same model")
    section.blocks.append(
        "Each point is one method and sparsity (numbers: sparsity in %): its top-1 (mean ± sd over seeds) against "
        "the inference speedup over dense of the very models that were trained and evaluated. The accuracy suite "
        "converted each with to_inference and timed it interleaved with a dense model of the same architecture, "
        "in the same process; the rounds of all seeds are pooled (95% paired bootstrap interval). Dense is timed "
        "the same way (about 1×). The dotted line is the Pareto front.")
    for fig, stem, caption, rows in figures:
        report.figure(section, fig, stem, caption, rows)


def _env_table(runs: Sequence[Run], labels: dict[Path, str]) -> tables.Table:
    rows = []
    for run in runs:
        env = run.env
        sha = (env.get("git_sha") or "unknown")[:10] + ("+dirty" if env.get("git_dirty") else "")
        rows.append([labels[run.path], run.suite, str(run.path),
                     str(env.get("cpu_model") or "–"), str(env.get("gpu_name") or "–"), str(env.get("torch") or "–"),
                     str(env.get("cuda") or "–"), str(env.get("threads") or "–"), sha,
                     str(run.meta.get("finished_at") or "unfinished")])
    return tables.Table(["machine", "suite", "run", "CPU", "GPU", "torch", "CUDA", "threads", "git", "finished"],
                        ["l"] * 10, rows)


def write_index(report: Report, runs: Sequence[Run], labels: dict[Path, str], argv: Sequence[str]) -> Path:
    """index.md: the command, the runs' environments, then every section."""
    lines = ["# dstbench report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `dstbench report {' '.join(argv)}`. "
             "Figures are vector PDF (TrueType fonts) and PNG, one paper column (3.4 in) wide. "
             f"[{PROVENANCE}]({PROVENANCE}) names the runs, commits, machines and commands behind every figure and "
             "table.", "",
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
        (out / PROVENANCE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_provenance(report: Report, argv: Sequence[str], rows: pd.DataFrame) -> Path:
    """provenance.json: the report's command, time and commit, then, per figure and table, its files, caption and
    sources (``source``); index.md's sources are all ``rows``."""
    commit = envinfo.commit()
    content = {
        "report": {"command": " ".join(["dstbench", "report", *argv]), "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "commit": commit},
        "artifacts": {**report.provenance,
                      INDEX: {"files": [INDEX], "caption": "the report", "sources": report.sources(rows)}},
    }
    path = report.out / PROVENANCE
    records.atomic_write_text(path, json.dumps(content, indent=2, default=str) + "\n")
    return path


def build(paths: Sequence[str], out: Path, argv: Sequence[str] = ()) -> Report:
    """Load the runs and write the whole report into ``out``."""
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise UserError("a run folder is given twice; give each run once")
    envinfo.commit()  # read (and cached) before any output is written: a report in a tracked folder is not a change
    runs = [load_run(p) for p in paths]
    labels = _labels(runs)
    frames = {name: frame_of(runs, name, labels) for name in registry.list_suites()}
    frames = {name: frame for name, frame in frames.items() if not frame.empty}
    prepare_out(out, runs)
    report = Report(out, runs={str(run.path): (run, labels[run.path]) for run in runs})
    for name, frame in frames.items():  # each suite writes the section it declares, in registration order
        suite = registry.get_suite(name)
        if suite.report is not None:
            suite.report(report, frame, suite.references)
    write_index(report, runs, labels, argv)
    write_provenance(report, argv, pd.concat([f[["run", "segment"]] for f in frames.values()], ignore_index=True))
    return report


def main(argv: Sequence[str]) -> int:
    """``dstbench report RUN... --out reports/NAME``."""
    parser = OneLineParser(
        prog="dstbench report",
        description="Figures (PDF + PNG) and tables (Markdown + LaTeX) for papers from one or more run folders, "
                    "tied together in OUT/index.md, with OUT/provenance.json naming the runs, commits, machines and "
                    "commands behind each.")
    parser.add_argument("runs", nargs="+", help="run folders of any suites, from one or several machines")
    parser.add_argument("--out", type=Path, help="report folder (default reports/report-<timestamp>)")
    args = parser.parse_args(argv)
    out = args.out or Path("reports") / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
    report = build(args.runs, out, argv)
    print(f"report written to {out / INDEX}: {report.figures} figures (PDF + PNG), {report.tables} tables "
          f"(Markdown + LaTeX), provenance in {out / PROVENANCE}")
    return 0
