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
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.transforms import Bbox
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
    """How one method looks in every figure; ``hatch`` marks a variant's bars and boxes."""

    color: str
    marker: str
    label: str
    hatch: str = ""


_SPARE = (("#56B4E9", "X"), ("#999999", "*"), ("#882255", "p"), ("#332288", "h"))
_VARIANT_MARKERS = ("X", "*", "p", "h", "P", "d")


def style(method: str) -> MethodStyle:
    """The style a registered method declares. A variant ``NAME:KEY=VALUE...`` of one keeps its colour, gets
    another marker (by a stable hash), hatched bars and the options in its label; an unknown name gets a spare
    style by a stable hash."""
    name, _, options = method.partition(":")
    if name in registry.list_methods():
        cls = registry.method_class(name)
        label = cls.display_name or name
        if not options:
            return MethodStyle(cls.color, cls.marker, label)
        markers = [m for m in _VARIANT_MARKERS if m != cls.marker]
        return MethodStyle(cls.color, markers[zlib.crc32(method.encode()) % len(markers)],
                           f"{label}, {options.replace(':', ', ')}", "////")
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
               for i, label in enumerate(m for m in methods if m.startswith(f"{baseline}@"))}
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
                                 "linewidth": 0.6, "hatch": hatches.get(method, st.hatch)},
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
                     hatch=hatches.get(m, _series_style(m).hatch), label=_series_style(m).label) for m in methods]
    _legend(fig, handles, [h.get_label() for h in handles])
    return fig


_DENSE_HATCHES = ("", "////", "....", "xxxx")


def _latency_series(frame: pd.DataFrame, baseline: str) -> pd.Series:
    """The box series of each row: its method, or ``<baseline>@<impl>`` where several implementations of the
    baseline (dense libraries) were timed."""
    base = frame["method"] == baseline
    if "impl" not in frame or frame.loc[base, "impl"].nunique() < 2:
        return frame["method"]
    return frame["method"].where(~base, f"{baseline}@" + frame["impl"].astype(str))


def _series_style(label: str) -> MethodStyle:
    """A method's style; a series ``method@impl`` keeps the method's colour and names the implementation."""
    method, _, impl = label.partition("@")
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
        baseline: the method whose points carry no sparsity (dense).

    A line joins each method's sparsities. With at most four sparsities, a point's marker fill shows its sparsity
    (open for the lowest, full for the highest; the legend says which); with more, a text label beside it does.
    """
    sparsities = sorted(points.loc[points["method"] != baseline, "sparsity"].unique())
    fills = dict(zip(sparsities, _SPARSITY_FILLS.get(len(sparsities), ())))
    fig = _figure(2.7)
    ax = fig.subplots()
    front = pareto_front(points["speedup"].tolist(), points["top1_mean"].tolist())
    front_line = ax.plot(points["speedup"].iloc[front], points["top1_mean"].iloc[front], color="0.55", ls=":",
                         lw=1.0, drawstyle="steps-pre", zorder=1)[0]
    legend, labels = [(front_line, "Pareto front")], []
    for method in ordered_methods(points["method"]):
        rows = points[points["method"] == method].sort_values("sparsity")
        st = style(method)
        ax.errorbar(rows["speedup"], rows["top1_mean"], xerr=_interval(rows, "speedup", "speedup_lo", "speedup_hi"),
                    yerr=rows["top1_sd"], color=st.color, ls="none", elinewidth=0.5, alpha=0.85, zorder=3)
        legend.append((Line2D([], [], color=st.color, marker=st.marker, lw=0.5), st.label))
        if method != baseline:
            ax.plot(rows["speedup"], rows["top1_mean"], color=st.color, lw=0.6, alpha=0.5, zorder=2)
        for _, row in rows.iterrows():
            fill = fills.get(row["sparsity"], "full")
            ax.plot([row["speedup"]], [row["top1_mean"]], ls="none", marker=st.marker, color=st.color, zorder=4,
                    **_fill(fill))
            if not fills and method != baseline:
                labels.append((row["speedup"], row["top1_mean"], f"{row['sparsity'] * 100:g}", st.color))
    _ratio_axis(ax, [*points["speedup"], *points.get("speedup_lo", []), *points.get("speedup_hi", [])], axis="x")
    ax.margins(x=0.12, y=0.12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    legend += [(Line2D([], [], ls="none", marker="o", color="0.35", **_fill(fill)),
                f"{level * 100:g}% sparse") for level, fill in fills.items()]
    _legend(fig, *map(list, zip(*legend)))
    place_labels(fig, ax, labels, points[["speedup", "top1_mean"]].to_numpy(float))
    return fig


def _fill(fill: str) -> dict[str, str]:
    """Marker keywords of a fill style whose unfilled part is white (it hides the error bars behind it)."""
    if fill == "none":
        return {"fillstyle": "full", "markerfacecolor": "white"}
    return {"fillstyle": fill, "markerfacecoloralt": "white"}


#: how a Pareto point shows its sparsity when the figure has at most four: its marker's fill, lowest sparsity
#: first (more sparsities: a text label beside each point)
_SPARSITY_FILLS = {1: ("full",), 2: ("none", "full"), 3: ("none", "bottom", "full"),
                   4: ("none", "left", "bottom", "full")}


#: where a point label may sit: offsets from its point in typographic points, nearest first (a ring of eight
#: directions per distance); from ``_LEADER_FROM`` points on, a thin leader line ties the label to its point
_LABEL_OFFSETS = tuple((round(r * dx, 1), round(r * dy, 1)) for r in (3, 7, 11, 15, 20, 26)
                       for dx, dy in ((1, 0.7), (1, -1.2), (-1, 0.7), (-1, -1.2), (1.3, -0.4), (-1.3, -0.4),
                                      (0, 1.3), (0, -2)))
_LEADER_FROM = 10


def place_labels(fig: Figure, ax, labels: Sequence[tuple[float, float, str, str]],  # noqa: ANN001
                 obstacles: np.ndarray, marker_pt: float = 3.5) -> list:
    """Annotate each (x, y, text, colour) next to its point where it overlaps no other label, no marker of
    ``obstacles`` (n, 2) in data coordinates and stays inside the axes; the first free offset of
    ``_LABEL_OFFSETS``, else the one that overlaps least. Lays the figure out first, so positions are final.

    Returns:
        The annotations, in the order of ``labels``.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = fig.dpi / 72.0
    half = marker_pt * to_px / 2 + 1
    markers = [Bbox.from_extents(x - half, y - half, x + half, y + half)
               for x, y in ax.transData.transform(obstacles)]
    frame = ax.get_window_extent(renderer)
    placed, out = [], []
    for x, y, text, color in labels:
        best, best_cost = None, None
        for dx, dy in _LABEL_OFFSETS:
            leader = {"arrowprops": {"arrowstyle": "-", "color": color, "lw": 0.4, "shrinkA": 0, "shrinkB": 2}} \
                if max(abs(dx), abs(dy)) >= _LEADER_FROM else {}
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=5.5, color=color,
                               ha="left" if dx > 0 else "right" if dx < 0 else "center",
                               va="bottom" if dy > 0 else "top" if dy < -abs(dx) else "center",
                               annotation_clip=False, **leader)
            note.set_in_layout(False)
            box = text_box(note, renderer)
            cost = (sum(_overlap(box, other) for other in placed + markers)
                    + (0 if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) else box.width * box.height))
            if best_cost is None or cost < best_cost:
                if best is not None:
                    best.remove()
                best, best_cost, best_box = note, cost, box
            else:
                note.remove()
            if cost == 0:
                break
        placed.append(best_box)
        out.append(best)
    return out


def text_box(note: Text, renderer) -> Bbox:  # noqa: ANN001
    """The display box of an annotation's text alone (without its leader line)."""
    return Text.get_window_extent(note, renderer)


def _overlap(a: Bbox, b: Bbox) -> float:
    """The area two display boxes share (pixels squared)."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


@_styled
def training_figure(frame: pd.DataFrame, title: str, baseline: str) -> Figure:
    """Training throughput (samples/s) of the sparse methods at each sparsity, the dense throughput as a line.

    Error bars span the interquartile range of the per-step throughput (batch / step time).

    Args:
        frame: training rows of one machine, model and batch (method, sparsity, batch, samples_per_s, samples_s).
        title: the figure title.
        baseline: the method drawn as the level line (the suite's first reference): its fastest implementation.
    """
    dense = frame[frame["method"] == baseline]
    sparse = frame[frame["method"] != baseline]
    sparsities = sorted(sparse["sparsity"].unique())
    methods = ordered_methods(sparse["method"])
    fig = _figure(2.3)
    ax = fig.subplots()
    if not dense.empty:  # the fastest of the baseline's implementations (dense libraries, compiled steps)
        impls = dense["impl"] if "impl" in dense else pd.Series(baseline, index=dense.index)
        per_impl = dense.groupby(impls)["samples_per_s"].median()
        level, impl = float(per_impl.max()), per_impl.idxmax()
        named = f"{impl}, " if len(per_impl) > 1 else ""
        ax.axhline(level, color=style(baseline).color, ls="--", lw=0.8,
                   label=f"{style(baseline).label} ({named}{level:.3g}/s)")
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
        ax.bar(x, y, width=width * 0.85, color=to_rgba(st.color, 0.35 if st.hatch else 0.75), edgecolor=st.color,
               hatch=st.hatch, linewidth=0.6, label=st.label, yerr=err, error_kw={"elinewidth": 0.7, "capsize": 1.5})
    _sparsity_ticks(ax, sparsities)
    ax.set_ylabel("training samples/s")
    ax.set_title(title)
    _legend(fig, *ax.get_legend_handles_labels())
    return fig


def _bytes_formatter(value: float, _pos: int) -> str:
    """Log-axis tick text in decimal units: 1k, 10M, 1G (nothing between decades)."""
    if value <= 0 or abs(np.log10(value) - round(np.log10(value))) > 1e-6:
        return ""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


@_styled
def roofline_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Achieved bandwidth (bytes per call / median latency) against the bytes a call moves, one panel per cache mode,
    under the read bandwidth the run's probe measured (the ceiling of ``limit_frac``).

    Warm panel: the probe's bandwidth by working set (grey line). Cold panel: its bandwidth reading each working set
    after an eviction (grey dashed line with ticks), or, for a probe recorded without that, its beyond-cache
    bandwidth (grey dashed line).

    Args:
        frame: inference rows of one machine and batch with ``bytes`` and ``gbps`` (columns method, l2, bytes, gbps,
            bw_probe: the probe record of ``dstbench.bandwidth``, or None).
        title: the figure title.
    """
    modes = [mode for mode in ("warm", "cold") if mode in set(frame["l2"])]
    modes += sorted(set(frame["l2"]) - set(modes))
    fig = _figure(2.6)
    axes = fig.subplots(1, len(modes), sharex=True, sharey=True, squeeze=False)[0]
    probes = list({repr(p): p for p in frame["bw_probe"] if isinstance(p, dict)}.values())  # each run's, once
    for ax, mode in zip(axes, modes):
        rows = frame[frame["l2"] == mode]
        for i, probe in enumerate(probes):
            label = "read bandwidth (probe)" if i == 0 else None
            if mode == "cold" and probe.get("cold_gbps"):
                ax.plot(probe["bytes"][:len(probe["cold_gbps"])], probe["cold_gbps"], color="0.55", ls="--", lw=0.9,
                        marker="|", markersize=4, label=label, zorder=1)
            elif mode == "cold":
                ax.axhline(probe["gbps"][-1], color="0.55", ls="--", lw=0.9, label=label, zorder=1)
            else:
                ax.plot(probe["bytes"], probe["gbps"], color="0.55", lw=0.9, marker="|", markersize=4, label=label,
                        zorder=1)
        for method in ordered_methods(rows["method"]):
            points = rows[rows["method"] == method]
            st = style(method)
            ax.scatter(points["bytes"], points["gbps"], s=9, color=to_rgba(st.color, 0.75), marker=st.marker,
                       linewidths=0.4, edgecolors=st.color, label=st.label, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_bytes_formatter))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(_plain_125))
        ax.yaxis.set_minor_formatter(FuncFormatter(_plain_125))
        ax.set_title(f"{mode} caches")
        ax.set_xlabel("bytes per call")
    axes[0].set_ylabel("achieved GB/s")
    fig.suptitle(title)
    handles, labels = {}, []
    for ax in axes:  # one legend entry per method across the panels
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    _legend(fig, [handles[label] for label in labels], labels)
    return fig
