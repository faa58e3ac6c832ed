"""Paper figures: one column of a two-column paper (3.4 in wide, 7-8 pt fonts), vector PDF with TrueType fonts and PNG.

Every figure draws each method with the colour, marker and name it declares
(``SparsityMethod.color``, ``marker``, ``display_name``; Okabe-Ito colours,
readable in greyscale and by colour-blind readers); a method variant gets a
spare style of its own.
Legends sit outside the axes, so they never cover data. The builders take
DataFrames assembled by ``dstbench.report`` and return a
``matplotlib.figure.Figure`` drawn on the Agg canvas (no pyplot, no global
state); ``save`` writes it as PDF and PNG.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Callable, Iterator, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from dstbench import registry
from dstbench.tables import method_key

#: inches; one column of a two-column paper (ICML/NeurIPS/IEEE columns are 3.25-3.5 in)
COLUMN_WIDTH = 3.4
PNG_DPI = 200
RC = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.family": "DejaVu Sans",
    "font.size": 7,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7.5,
    "figure.titlesize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "errorbar.capsize": 1.5,
    "savefig.dpi": PNG_DPI,
}


@dataclass(frozen=True)
class MethodStyle:
    """How one method looks in every figure."""

    color: str
    marker: str
    label: str


_SPARE = (("#F0E442", "h"), ("#56B4E9", "X"), ("#999999", "*"), ("#882255", "p"))


def style(method: str) -> MethodStyle:
    """The style a registered method declares; a variant or an unknown label gets a spare one by a stable hash."""
    if method in registry.list_methods():
        cls = registry.method_class(method)
        return MethodStyle(cls.color, cls.marker, cls.display_name or method)
    color, marker = _SPARE[zlib.crc32(method.encode()) % len(_SPARE)]
    return MethodStyle(color, marker, method)


@contextmanager
def paper_style() -> Iterator[None]:
    """Matplotlib rcParams of the paper figures, restored on exit."""
    with matplotlib.rc_context(RC):
        yield


def _styled(build: Callable[..., Figure]) -> Callable[..., Figure]:
    @wraps(build)
    def wrapper(*args, **kwargs) -> Figure:  # noqa: ANN002, ANN003
        with paper_style():
            return build(*args, **kwargs)

    return wrapper


def _figure(height: float) -> Figure:
    fig = Figure(figsize=(COLUMN_WIDTH, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, folder: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.pdf`` (TrueType fonts) and ``stem.png`` (200 dpi) into ``folder``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    pdf, png = folder / f"{stem}.pdf", folder / f"{stem}.png"
    with paper_style():
        fig.savefig(pdf, metadata={"CreationDate": None})
        fig.savefig(png, dpi=PNG_DPI)
    return [pdf, png]


def ordered_methods(methods: Sequence[str]) -> list[str]:
    """Distinct methods in their declared order (``tables.method_key``)."""
    return sorted(set(methods), key=method_key)


def _dodge(index: int, count: int, width: float = 0.5) -> float:
    """Horizontal offset of series ``index`` of ``count`` around a categorical position."""
    if count == 1:
        return 0.0
    return -width / 2 + width * index / (count - 1)


def _times_formatter(value: float, _pos: int) -> str:
    return f"{value:g}×"


def _plain_125(value: float, _pos: int) -> str:
    """Log-axis tick text: plain numbers at mantissas 1, 2, 3 and 5, nothing elsewhere."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** np.floor(np.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 3, 5)) else ""


def _ratio_axis(ax, values: Sequence[float], axis: str = "y") -> None:  # noqa: ANN001
    """Log base-2 scale for ratios spanning more than 4x, linear otherwise; ticks read '2×'."""
    values = [v for v in values if v > 0 and np.isfinite(v)]
    target = ax.yaxis if axis == "y" else ax.xaxis
    if values and max(values) / min(values) > 4:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log", base=2)
        target.set_major_locator(LogLocator(base=2))
        target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(FuncFormatter(_times_formatter))


def _interval(frame: pd.DataFrame, value: str, lo: str, hi: str) -> np.ndarray | None:
    """Asymmetric error bars (2, n) from interval columns, or None if absent."""
    if lo not in frame or hi not in frame or frame[lo].isna().all():
        return None
    v = frame[value].to_numpy(float)
    return np.vstack([np.clip(v - frame[lo].to_numpy(float), 0, None), np.clip(frame[hi].to_numpy(float) - v, 0, None)])


def _legend(fig: Figure, handles: list, labels: list[str]) -> None:
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 2), handlelength=1.6,
                   columnspacing=1.2)


def _sparsity_ticks(ax, sparsities: Sequence[float], label: bool = True) -> None:  # noqa: ANN001
    """Categorical sparsity positions 0..n-1, ticks in percent."""
    ax.set_xticks(range(len(sparsities)), [f"{s * 100:g}" for s in sparsities])
    ax.set_xlim(-0.6, len(sparsities) - 0.4)
    ax.grid(False, axis="x")
    if label:
        ax.set_xlabel("sparsity (%)")


@_styled
def speedup_figure(frame: pd.DataFrame, title: str, baseline: str) -> Figure:
    """Speedup over dense against sparsity, one panel per batch, with 95% intervals and the y = 1 baseline line.

    Args:
        frame: inference rows of one machine and one case (columns method, sparsity, batch,
            speedup_vs_dense, speedup_vs_dense_lo, speedup_vs_dense_hi).
        title: the figure title (case, shape, machine).
        baseline: the method the speedups are relative to (the suite's first reference), drawn as the line.
    """
    sparse = frame[frame["method"] != baseline]
    batches = sorted(frame["batch"].unique())
    sparsities = sorted(frame["sparsity"].unique())
    methods = ordered_methods(sparse["method"])
    fig = _figure(2.3 if len(batches) > 1 else 2.4)
    axes = fig.subplots(1, len(batches), sharey=True, squeeze=False)[0]
    for ax, batch in zip(axes, batches):
        ax.axhline(1.0, color=style(baseline).color, ls="--", lw=0.8, label=f"{style(baseline).label} (1×)")
        for i, method in enumerate(methods):
            rows = sparse[(sparse["batch"] == batch) & (sparse["method"] == method)].sort_values("sparsity")
            if rows.empty:
                continue
            st = style(method)
            x = [sparsities.index(s) + _dodge(i, len(methods), 0.36) for s in rows["sparsity"]]
            ax.errorbar(x, rows["speedup_vs_dense"], yerr=_interval(rows, "speedup_vs_dense", "speedup_vs_dense_lo",
                                                                    "speedup_vs_dense_hi"),
                        color=st.color, marker=st.marker, label=st.label, elinewidth=0.7)
        _sparsity_ticks(ax, sparsities, label=ax is axes[len(axes) // 2])
        ax.set_title(f"batch {batch}")
    values = [1.0, *sparse["speedup_vs_dense"], *sparse.get("speedup_vs_dense_lo", []), *sparse.get("speedup_vs_dense_hi", [])]
    _ratio_axis(axes[0], values)
    axes[0].set_ylabel("speedup over dense")
    fig.suptitle(title)
    _legend(fig, *axes[0].get_legend_handles_labels())
    return fig


def _time_unit(seconds: Sequence[float]) -> tuple[float, str]:
    median = float(np.median(seconds))
    return (1e3, "ms") if median >= 1e-3 else (1e6, "µs")


@_styled
def latency_figure(frame: pd.DataFrame, title: str, baseline: str) -> Figure:
    """Box plots of the per-round latencies (``samples_s``) of every method at each sparsity.

    Args:
        frame: inference rows of one machine, case and batch (columns method, sparsity, samples_s).
        title: the figure title.
        baseline: the suite's baseline method; where several of its implementations were timed, each is a series.
    """
    sparsities = sorted(frame["sparsity"].unique())
    series = _latency_series(frame, baseline)
    methods = ordered_methods(series)
    hatches = {label: _DENSE_HATCHES[i % len(_DENSE_HATCHES)]
               for i, label in enumerate(m for m in methods if m.startswith(f"{baseline}:"))}
    scale, unit = _time_unit([t for samples in frame["samples_s"] for t in samples])
    fig = _figure(2.2)
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        st = _series_style(method)
        rows = frame[series == method]
        for _, row in rows.iterrows():
            position = sparsities.index(row["sparsity"]) - 0.4 + width * (i + 0.5)
            ax.boxplot([np.asarray(row["samples_s"], float) * scale], positions=[position], widths=width * 0.8,
                       patch_artist=True, manage_ticks=False, whis=(0, 100),
                       boxprops={"facecolor": to_rgba(st.color, 0.35), "edgecolor": st.color,
                                 "linewidth": 0.6, "hatch": hatches.get(method, "")},
                       medianprops={"color": st.color, "linewidth": 1.2},
                       whiskerprops={"color": st.color, "linewidth": 0.6},
                       capprops={"color": st.color, "linewidth": 0.6})
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_125))
    ax.yaxis.set_minor_formatter(FuncFormatter(_plain_125))
    _sparsity_ticks(ax, sparsities)
    ax.set_ylabel(f"latency per call ({unit})")
    ax.set_title(title)
    handles = [Patch(facecolor=to_rgba(_series_style(m).color, 0.35), edgecolor=_series_style(m).color,
                     hatch=hatches.get(m, ""), label=_series_style(m).label) for m in methods]
    _legend(fig, handles, [h.get_label() for h in handles])
    return fig


_DENSE_HATCHES = ("", "////", "....", "xxxx")


def _latency_series(frame: pd.DataFrame, baseline: str) -> pd.Series:
    """The box series of each row: its method, or ``<baseline>:<impl>`` where several implementations of the
    baseline (dense libraries) were timed."""
    base = frame["method"] == baseline
    if "impl" not in frame or frame.loc[base, "impl"].nunique() < 2:
        return frame["method"]
    return frame["method"].where(~base, f"{baseline}:" + frame["impl"].astype(str))


def _series_style(label: str) -> MethodStyle:
    """A method's style; a series ``method:impl`` keeps the method's colour and names the implementation."""
    method, _, impl = label.partition(":")
    if impl:
        own = style(method)
        return MethodStyle(own.color, own.marker, f"{own.label} ({impl})")
    return style(label)


@_styled
def accuracy_figure(summary: pd.DataFrame, title: str, baseline: str) -> Figure:
    """Top-1 accuracy (mean ± sd over seeds) against sparsity, with the baseline's (dense) mean ± sd as a band.

    Args:
        summary: ``tables.accuracy_summary`` rows of one dataset and model (top1_mean, top1_sd in %).
        title: the figure title.
        baseline: the method drawn as the band (the suite's first reference).
    """
    dense = summary[summary["method"] == baseline]
    sparse = summary[summary["method"] != baseline]
    sparsities = sorted(sparse["sparsity"].unique())
    methods = ordered_methods(sparse["method"])
    fig = _figure(2.4)
    ax = fig.subplots()
    if not dense.empty:
        mean, sd = dense["top1_mean"].mean(), dense["top1_sd"].max()
        st = style(baseline)
        ax.axhspan(mean - sd, mean + sd, color=st.color, alpha=0.12, lw=0)
        ax.axhline(mean, color=st.color, ls="--", lw=0.8, label=f"{st.label} ({mean:.1f}%)")
    for i, method in enumerate(methods):
        rows = sparse[sparse["method"] == method].sort_values("sparsity")
        st = style(method)
        x = [sparsities.index(s) + _dodge(i, len(methods), 0.3) for s in rows["sparsity"]]
        ax.errorbar(x, rows["top1_mean"], yerr=rows["top1_sd"], color=st.color, marker=st.marker, label=st.label,
                    elinewidth=0.7)
    _sparsity_ticks(ax, sparsities)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    _legend(fig, *ax.get_legend_handles_labels())
    return fig


def pareto_front(speedup: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both speedup and accuracy, by increasing speedup."""
    order = sorted(range(len(speedup)), key=lambda i: (-speedup[i], -accuracy[i]))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front[::-1]


@_styled
def pareto_figure(points: pd.DataFrame, title: str, xlabel: str, baseline: str) -> Figure:
    """Accuracy against speedup over dense, one point per (method, sparsity), with the Pareto front.

    Args:
        points: ``report.pareto_points`` of one model: columns method, sparsity, speedup (x), speedup_lo,
            speedup_hi, top1_mean, top1_sd (%); dense's own timing puts it near speedup 1.
        title: the figure title.
        xlabel: names the timed model and batch, e.g. 'speedup over dense of the same mlp, batch 1'.
        baseline: the method whose points carry no sparsity label (dense).
    """
    fig = _figure(2.6)
    ax = fig.subplots()
    front = pareto_front(points["speedup"].tolist(), points["top1_mean"].tolist())
    ax.plot(points["speedup"].iloc[front], points["top1_mean"].iloc[front], color="0.55", ls=":", lw=1.0,
            drawstyle="steps-pre", label="Pareto front", zorder=1)
    for method in ordered_methods(points["method"]):
        rows = points[points["method"] == method]
        st = style(method)
        ax.errorbar(rows["speedup"], rows["top1_mean"], xerr=_interval(rows, "speedup", "speedup_lo", "speedup_hi"),
                    yerr=rows["top1_sd"], color=st.color, marker=st.marker, ls="none", label=st.label,
                    elinewidth=0.6, zorder=3)
        if method == baseline:
            continue
        for _, row in rows.iterrows():
            ax.annotate(f"{row['sparsity'] * 100:g}", (row["speedup"], row["top1_mean"]), xytext=(3, 3),
                        textcoords="offset points", fontsize=5.5, color=st.color)
    _ratio_axis(ax, [*points["speedup"], *points.get("speedup_lo", []), *points.get("speedup_hi", [])], axis="x")
    ax.margins(x=0.12, y=0.12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    _legend(fig, *ax.get_legend_handles_labels())
    return fig


@_styled
def training_figure(frame: pd.DataFrame, title: str, baseline: str) -> Figure:
    """Training throughput (samples/s) of the sparse methods at each sparsity, the dense throughput as a line.

    Error bars span the interquartile range of the per-step throughput (batch / step time).

    Args:
        frame: training rows of one machine, model and batch (method, sparsity, batch, samples_per_s, samples_s).
        title: the figure title.
        baseline: the method drawn as the level line (the suite's first reference).
    """
    dense = frame[frame["method"] == baseline]
    sparse = frame[frame["method"] != baseline]
    sparsities = sorted(sparse["sparsity"].unique())
    methods = ordered_methods(sparse["method"])
    fig = _figure(2.3)
    ax = fig.subplots()
    if not dense.empty:
        level = float(dense["samples_per_s"].median())
        ax.axhline(level, color=style(baseline).color, ls="--", lw=0.8, label=f"{style(baseline).label} ({level:.3g}/s)")
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        st = style(method)
        rows = sparse[sparse["method"] == method].sort_values("sparsity")
        x = [sparsities.index(s) - 0.4 + width * (i + 0.5) for s in rows["sparsity"]]
        per_step = [row["batch"] / np.asarray(row["samples_s"], float) for _, row in rows.iterrows()]
        lo = [np.percentile(p, 25) for p in per_step]
        hi = [np.percentile(p, 75) for p in per_step]
        y = rows["samples_per_s"].to_numpy(float)
        err = np.vstack([np.clip(y - lo, 0, None), np.clip(np.asarray(hi) - y, 0, None)])
        ax.bar(x, y, width=width * 0.85, color=to_rgba(st.color, 0.75), edgecolor=st.color,
               linewidth=0.6, label=st.label, yerr=err, error_kw={"elinewidth": 0.7, "capsize": 1.5})
    _sparsity_ticks(ax, sparsities)
    ax.set_ylabel("training samples/s")
    ax.set_title(title)
    _legend(fig, *ax.get_legend_handles_labels())
    return fig
