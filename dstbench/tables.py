"""Report tables: built from run DataFrames, written as Markdown and as LaTeX (booktabs).

A ``Table`` holds formatted cell strings; Unicode symbols in them (×, ±,
→, µ) become LaTeX math in ``to_latex``. The builders take the DataFrames
that ``dstbench.report`` assembles (one row per record, plus a ``machine``
column for the timed suites).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from dstbench import records, registry, significance, stats

if TYPE_CHECKING:
    from dstbench.suites.base import Reference

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"×": r"$\times$", "±": r"$\pm$", "→": r"$\rightarrow$", "µ": r"$\mu$", "–": "--"}


@dataclass
class Table:
    """Formatted cells with their headers; ``align`` holds "l" or "r" per column."""

    headers: list[str]
    align: list[str]
    rows: list[list[str]]
    caption: str = ""

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

        rule = "|" + "|".join("---:" if a == "r" else "---" for a in self.align) + "|"
        return "\n".join([line(self.headers), rule, *(line(row) for row in self.rows)]) + "\n"

    def to_latex(self, label: str = "") -> str:
        """A booktabs ``table`` environment with the caption and ``label``."""
        body = [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in self.rows]
        lines = [r"\begin{table}[t]", r"\centering", r"\small"]
        if self.caption:
            lines.append(rf"\caption{{{latex_escape(self.caption)}}}")
        if label:
            lines.append(rf"\label{{{label}}}")
        lines += [rf"\begin{{tabular}}{{{''.join(self.align)}}}", r"\toprule",
                  " & ".join(latex_escape(h) for h in self.headers) + r" \\", r"\midrule", *body,
                  r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and ×, ±, →, µ as math."""
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol, latex in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, latex)
    return out


def method_key(method: str) -> tuple[int, bool, str]:
    """Sort key of a row's method label: its registered method's declared ``order``, the plain method before its
    variants (``srigl:ablation=false``) and its implementations' series (``dense@mkl``), then by label; labels of
    no registered method last."""
    base = method.split(":")[0].split("@")[0]
    order = registry.method_class(base).order if base in registry.list_methods() else sys.maxsize
    return (order, method != base, method)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _with_interval(value: float | None, lo: float | None, hi: float | None, spec: str, unit: str = "") -> str:
    """``value`` formatted by ``spec`` with ``unit``, then ' [lo, hi]' when both bounds exist; '–' if missing."""
    if _missing(value):
        return "–"
    if _missing(lo) or _missing(hi):
        return f"{value:{spec}}{unit}"
    return f"{value:{spec}}{unit} [{lo:{spec}}, {hi:{spec}}]"


def fmt_speedup(value: float | None, lo: float | None = None, hi: float | None = None) -> str:
    """'3.10× [2.95, 3.22]', or '3.10×' without an interval, '–' if missing."""
    return _with_interval(value, lo, hi, ".2f", "×")


def fmt_seconds(seconds: float) -> str:
    """A duration in µs or ms with three significant digits."""
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_sparsity(sparsity: float) -> str:
    """0.9 -> '90%', 0.995 -> '99.5%'."""
    return f"{sparsity * 100:g}%"


def fmt_count(value: float | None) -> str:
    """12345678 -> '12.3M'; '–' if missing."""
    if _missing(value):
        return "–"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def shape_of(row: pd.Series) -> str:
    """'768→3072' for a layer case, 'model' for an end-to-end case."""
    if _missing(row.get("in_features")):
        return "model"
    return f"{int(row['in_features'])}→{int(row['out_features'])}"


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``frame`` sorted by ``keys`` (those present), then by method in the canonical order."""
    frame = frame.assign(_method=frame["method"].map(method_key))
    return frame.sort_values([k for k in keys if k in frame and k != "method"] + ["_method"], kind="stable")


def inference_table(frame: pd.DataFrame, machines: bool) -> Table:
    """Every inference row: latency p50 and speedups vs the fastest dense (named), vs torch's dense and vs CSR; and,
    where the rows recorded it, the core round trip probed before and after the row's group (``core_rtt_ns``)."""
    probed = "core_rtt_ns" in frame and bool(frame["core_rtt_ns"].map(_probes).any())
    headers = (["machine"] if machines else []) + ["case", "shape", "batch", "sparsity", "method", "kernel", "n",
                                                   "p50", "vs dense [95% CI]", "dense", "vs torch dense",
                                                   "vs CSR [95% CI]"] + (["threads apart"] if probed else [])
    rows = []
    for _, r in _sorted(frame, ["machine", "case", "batch", "sparsity"]).iterrows():
        rows.append(([r["machine"]] if machines else []) + [
            str(r["case"]), shape_of(r), str(int(r["batch"])), fmt_sparsity(r["sparsity"]), r["method"], str(r["impl"]),
            str(int(r.get("n", len(r["samples_s"])))), fmt_seconds(r["p50_s"]),
            fmt_speedup(r["speedup_vs_dense"], r.get("speedup_vs_dense_lo"), r.get("speedup_vs_dense_hi")),
            "–" if _missing(r.get("dense_impl")) else str(r["dense_impl"]), fmt_speedup(r.get("speedup_vs_torch_dense")),
            fmt_speedup(r.get("speedup_vs_csr"), r.get("speedup_vs_csr_lo"), r.get("speedup_vs_csr_hi")),
        ] + ([_fmt_round_trips(r.get("core_rtt_ns"))] if probed else []))
    align = (["l"] if machines else []) + ["l", "l", "r", "r", "l", "l", "r", "r", "r", "l", "r", "r"] + (
        ["r"] if probed else [])
    caption = ("Inference latency (median) and speedups with 95% bootstrap intervals: vs dense is against the fastest "
               "dense library of the case (named), vs torch dense against torch's default.")
    if probed:
        caption += (" Threads apart: the round trip of a cache line between two of the kernels' threads, probed "
                    "before / after the row's group (a VM whose host moves its vCPUs apart slows batch-1 calls).")
    return Table(headers, align, rows, caption)


def _probes(value: object) -> bool:
    """Whether a row's ``core_rtt_ns`` holds probes (a [before, after] pair), not None or NaN."""
    return isinstance(value, (list, tuple)) and len(value) > 0


def _fmt_round_trips(value: object) -> str:
    """'120 / 536 ns' for a [before, after] pair of probes, '–' without one."""
    return " / ".join(f"{ns:.0f}" for ns in value) + " ns" if _probes(value) else "–"


def speedup_pivot(frame: pd.DataFrame, machines: bool, baseline: str) -> Table:
    """Speedup vs dense of the methods other than ``baseline``: one row per (case, batch, method), one column per
    sparsity."""
    sparse = frame[frame["method"] != baseline]
    sparsities = sorted(sparse["sparsity"].unique())
    keys = (["machine"] if machines else []) + ["case", "batch", "method"]
    headers = (["machine"] if machines else []) + ["case", "batch", "method"] + [fmt_sparsity(s) for s in sparsities]
    rows = []
    ordered = _sorted(sparse, keys)
    for key, group in ordered.groupby(keys, sort=False):
        by_sparsity = dict(zip(group["sparsity"], group["speedup_vs_dense"]))
        named = dict(zip(keys, key))
        rows.append(([named["machine"]] if machines else []) + [
            str(named["case"]), str(int(named["batch"])), named["method"],
            *(fmt_speedup(by_sparsity.get(s)) for s in sparsities)])
    align = (["l"] if machines else []) + ["l", "r", "l"] + ["r"] * len(sparsities)
    return Table(headers, align, rows, "Inference speedup over dense (median of interleaved rounds) by sparsity.")


def _phase_step(row: pd.Series, phase: str) -> str:
    value = row.get(f"{phase}_p50_s")
    return "–" if _missing(value) else fmt_seconds(value)


def _text(value: object) -> str:
    return "–" if _missing(value) else str(value)


def training_table(frame: pd.DataFrame, machines: bool) -> Table:
    """Training throughput and speedups vs the fastest dense step (named), vs torch's eager dense step and vs RigL;
    with ``--phase schedule``, each phase's step too."""
    headers = (["machine"] if machines else []) + ["model", "batch", "sparsity", "method", "kernel", "dynamic step",
                                                   "settled step", "samples/s", "vs dense [95% CI]", "dense",
                                                   "vs torch dense", "vs RigL [95% CI]", "dynamic vs dense",
                                                   "settled vs dense"]
    rows = []
    for _, r in _sorted(frame, ["machine", "model", "batch", "sparsity"]).iterrows():
        rows.append(([r["machine"]] if machines else []) + [
            str(r["model"]), str(int(r["batch"])), fmt_sparsity(r["sparsity"]), r["method"], _text(r.get("impl")),
            _phase_step(r, "dynamic"), _phase_step(r, "settled"), f"{r['samples_per_s']:.4g}",
            fmt_speedup(r["speedup_vs_dense"], r.get("speedup_vs_dense_lo"), r.get("speedup_vs_dense_hi")),
            _text(r.get("dense_impl")), fmt_speedup(r.get("speedup_vs_torch_dense")),
            fmt_speedup(r.get("speedup_vs_rigl"), r.get("speedup_vs_rigl_lo"), r.get("speedup_vs_rigl_hi")),
            fmt_speedup(r.get("speedup_vs_dense_dynamic")), fmt_speedup(r.get("speedup_vs_dense_settled")),
        ])
    align = (["l"] if machines else []) + ["l", "r", "r", "l", "l", "r", "r", "r", "r", "l", "r", "r", "r", "r"]
    return Table(headers, align, rows, "Training throughput over the whole schedule (dynamic and settled phases weighted "
                                       "by the method's share of each, topology updates amortized) and speedups: vs "
                                       "dense is against the fastest dense step of the case (named), vs torch dense "
                                       "against torch's eager step.")


def accuracy_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd of top-1 in percent over seeds per (dataset, model, method, sparsity), means of the rest.

    ``top1`` may be recorded as a fraction (all values <= 1) or in percent.
    """
    frame = frame.assign(top1=significance.top1_percent(frame))
    for column in ("dataset", "model"):
        if column not in frame:
            frame[column] = "-"
    keys = ["dataset", "model", "method", "sparsity"]
    agg = {"top1_mean": ("top1", "mean"), "top1_sd": ("top1", "std"), "seeds": ("seed", "nunique")}
    for column in ("sparsity_achieved", "params", "flops"):
        if column in frame:
            agg[column] = (column, "mean")
    summary = frame.groupby(keys, sort=False).agg(**agg).reset_index()
    summary["top1_sd"] = summary["top1_sd"].fillna(0.0)
    return _sorted(summary, ["dataset", "model", "sparsity"]).drop(columns="_method").reset_index(drop=True)


def accuracy_table(summary: pd.DataFrame) -> Table:
    """Top-1 mean ± sd over seeds, achieved sparsity, non-zero parameters and FLOPs, from ``accuracy_summary``."""
    headers = ["dataset", "model", "method", "sparsity", "top-1 (%)", "seeds", "achieved", "params", "FLOPs"]
    rows = []
    for _, r in summary.iterrows():
        rows.append([str(r["dataset"]), str(r["model"]), r["method"], fmt_sparsity(r["sparsity"]),
                     f"{r['top1_mean']:.2f} ± {r['top1_sd']:.2f}", str(int(r["seeds"])),
                     "–" if _missing(r.get("sparsity_achieved")) else fmt_sparsity(round(r["sparsity_achieved"], 4)),
                     fmt_count(r.get("params")), fmt_count(r.get("flops"))])
    return Table(headers, ["l", "l", "l", "r", "r", "r", "r", "r", "r"], rows,
                 "Top-1 accuracy, mean ± sample standard deviation over seeds.")


def fmt_difference(value: float | None, lo: float | None = None, hi: float | None = None) -> str:
    """A signed difference in percentage points with its interval, '-1.23 [-2.01, -0.45]'; '–' if missing."""
    return _with_interval(value, lo, hi, "+.2f")


def fmt_p(p: float | None) -> str:
    """A p-value, 'n.s. (0.41)' when not significant (p >= ``significance.ALPHA``); '–' if missing."""
    if _missing(p):
        return "–"
    text = "< 0.001" if p < 1e-3 else f"{p:.2g}"
    return f"n.s. ({text})" if p >= significance.ALPHA else text


def significance_table(summary: pd.DataFrame, differences: pd.DataFrame, references: Sequence[Reference]) -> Table:
    """Top-1 of every method and sparsity with its difference from each reference (e.g. dense, RigL).

    Args:
        summary: ``accuracy_summary`` rows.
        differences: ``significance.differences`` rows of the same runs and ``references``.
        references: the suite's references, one pair of columns each.
    """
    keys = significance.KEYS
    found = {(*(r[k] for k in keys[:3]), round(r["sparsity"], 6), r["baseline"]): r for _, r in differences.iterrows()}
    rows = []
    for _, r in summary.iterrows():
        cells = [str(r["dataset"]), str(r["model"]), r["method"], fmt_sparsity(r["sparsity"]),
                 f"{r['top1_mean']:.2f} ± {r['top1_sd']:.2f}"]
        for ref in references:
            d = found.get((r["dataset"], r["model"], r["method"], round(r["sparsity"], 6), ref.method))
            cells += ["–", "–"] if d is None else [fmt_difference(d["diff"], d["diff_lo"], d["diff_hi"]), fmt_p(d["p"])]
        rows.append(cells)
    headers = ["dataset", "model", "method", "sparsity", "top-1 (%)"]
    for ref in references:
        headers += [f"Δ vs {ref.label} (pp) [95% CI]", "McNemar p"]
    against = " and ".join(ref.label + (" at the same sparsity" if ref.same_sparsity else "") for ref in references)
    return Table(headers, ["l", "l", "l", "r", "r"] + ["r", "r"] * len(references), rows,
                 f"Top-1 accuracy against {against}: mean over seeds of the paired "
                 "difference (percentage points) with its 95% t-interval, and McNemar's test on the per-sample "
                 f"predictions pooled over seeds (exact below {stats.MCNEMAR_EXACT_BELOW} discordant samples, "
                 f"chi-square otherwise); n.s.: not significant at p < {significance.ALPHA}.")


def same_model_speedups(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """The inference speedup over dense of the trained models themselves at the timed batch ``label``.

    Each accuracy row timed its own converted model against a dense model of
    the same architecture (``suites/model_timing.py``). Per (machine, dataset,
    model, method, sparsity), the per-round samples of its seeds are pooled:
    the speedup is the ratio of the medians of all dense and all model rounds,
    with a paired bootstrap 95% interval (rounds stay paired with the dense
    round they were measured beside).

    Args:
        frame: accuracy rows (a ``machine`` column is kept as a key if present).
        label: one of ``records.TIMED_BATCHES``.
    Returns:
        The keys, ``batch``, ``kernels``, ``dense`` (the fastest dense model of each seed's timing: the speedup is
        against it; "dense", torch's default, for runs that timed only that), ``seeds``, ``p50_s`` and
        ``dense_p50_s`` (seconds per call, pooled medians), ``speedup``, ``speedup_lo``, ``speedup_hi``; no rows if
        none was timed at ``label``.
    """
    def col(name: str) -> str:
        return records.timed_column(name, label)

    keys = (["machine"] if "machine" in frame else []) + significance.KEYS
    columns = keys + ["batch", "kernels", "dense", "seeds", "p50_s", "dense_p50_s", "speedup", "speedup_lo", "speedup_hi"]
    if col("speedup_vs_dense") not in frame:
        return pd.DataFrame(columns=columns)
    out = []
    for key, rows in frame[frame[col("speedup_vs_dense")].notna()].groupby(keys, sort=False):
        own = np.concatenate(rows[col("samples_s")].tolist())
        dense = np.concatenate(rows[col("dense_samples_s")].tolist())
        ci = stats.ratio_of_medians(dense, own, paired=True)
        out.append({**dict(zip(keys, key)), "batch": int(rows[col("batch")].max()),
                    "kernels": ", ".join(sorted(set(rows["inference_impl"]))),
                    "dense": ", ".join(sorted(set(rows[col("dense_impl")]))) if col("dense_impl") in rows else "dense",
                    "seeds": rows["seed"].nunique(),
                    "p50_s": float(np.median(own)), "dense_p50_s": float(np.median(dense)),
                    "speedup": ci.ratio, "speedup_lo": ci.lo, "speedup_hi": ci.hi})
    result = pd.DataFrame(out, columns=columns)
    return _sorted(result, keys).drop(columns="_method").reset_index(drop=True) if out else result


def same_model_table(frame: pd.DataFrame, machines: bool) -> Table:
    """Every trained model's inference latency and speedup over dense of the same architecture, per timed batch."""
    speeds = pd.concat([same_model_speedups(frame, label) for label in records.TIMED_BATCHES], ignore_index=True)
    headers = (["machine"] if machines else []) + ["dataset", "model", "method", "sparsity", "batch", "kernels",
                                                   "dense", "seeds", "p50", "dense p50", "vs dense [95% CI]"]
    rows = []
    for _, r in _sorted(speeds, ["machine", "dataset", "model", "sparsity", "batch"]).iterrows():
        rows.append(([r["machine"]] if machines else []) + [
            str(r["dataset"]), str(r["model"]), r["method"], fmt_sparsity(r["sparsity"]), str(int(r["batch"])),
            r["kernels"], r["dense"], str(int(r["seeds"])), fmt_seconds(r["p50_s"]), fmt_seconds(r["dense_p50_s"]),
            fmt_speedup(r["speedup"], r["speedup_lo"], r["speedup_hi"])])
    align = (["l"] if machines else []) + ["l", "l", "l", "r", "r", "l", "l", "r", "r", "r", "r"]
    return Table(headers, align, rows,
                 "Latency of the trained models themselves (converted with to_inference), timed interleaved with "
                 "dense models of the same architecture in each dense library: median per call and speedup over "
                 "the fastest dense model (named under dense), rounds of all seeds pooled, with 95% paired bootstrap "
                 "intervals.")
