"""Segmentation vs depth on NYUD-v2 (the CMIM paper's Fig. 5b): the chart, and the command that
writes it with the results tables of the same runs.

One dot per backbone with segmentation and depth runs: x = -ln RMSE (m) of its depth run, y =
mIoU (%) of its segmentation run (each task's headline metric, :mod:`cmim_dense.dense.tasks`),
dot area proportional to the backbone's pretraining (ImageNet) top-1.  Colour = base method; a
``+cmim`` backbone is a filled dot with an arrow from its hollow base-method dot.  The seeds of a
backbone are one dot at their means, with error bars of the 95 % Student-t confidence interval
of each mean (:mod:`.finetune_results` reads and gathers the runs).

The tables (:mod:`.result_tables`) carry every backbone and every task the runs have; runs
without both axes (a depth-only job) get the tables and the reason there is no chart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..dense import get_task
from ..methods import base_method, has_cmim
from ..stats import LEVEL, seed_names
from .common import FIGURE_FORMATS, Skipped, method_colours, new_figure, save_figure
from .finetune_results import (BackbonePoint, cmim_partners, head_partners, load_points, multi_task_partners,
                               shown_tasks)
from .labels import place_labels
from .result_tables import PointDifference, paired_differences, write_tables

Y_TASK, X_TASK = "seg", "depth"  # the chart's axes: each task's headline metric
Y_KEY, X_KEY = get_task(Y_TASK).headline.key, get_task(X_TASK).headline.key  # miou, neg_log_rmse
CHART_TASKS = (Y_TASK, X_TASK)  # the tasks every dot needs; the tables take any
PROTOCOL_TEXT = {"classes": "{} classes", "depth_gt": "depth ground truth: {}"}
MAX_DOT_AREA = 500.0  # points², the dot of the best top-1
MIN_DOT_AREA = 12.0  # points², so that a backbone at 0 % stays visible
NO_TOP1_AREA = 100.0


@dataclass
class SegDepthResult:
    """What :func:`seg_depth_chart` tabulated, drew, skipped and wrote, and the paired differences."""

    points: list[BackbonePoint]  # the tables' rows: every backbone
    skipped: list[Skipped]
    files: list[Path] = field(default_factory=list)
    differences: list[PointDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the tables' notes (on the differences)
    charted: list[BackbonePoint] = field(default_factory=list)  # the chart's dots
    left_out: list[str] = field(default_factory=list)  # backbones in the tables but not in the chart, and why
    no_chart: str | None = None  # why there is no chart at all (None when there is one)

    def no_chart_line(self) -> str | None:
        """The line the command lines print when there is no chart: why, and where the tables are."""
        if self.no_chart is None:
            return None
        tables = next(path for path in self.files if path.suffix == ".md")
        return f"no seg-vs-depth chart: {self.no_chart}; tables in {tables} (and .csv)"


def position(point: BackbonePoint) -> tuple[float, float]:
    """A dot: (x, y) = (depth headline, segmentation headline in %) = (−ln RMSE, mIoU %), the means over its seeds."""
    return point.mean(X_KEY), 100.0 * point.mean(Y_KEY)


def chart_points(points: Sequence[BackbonePoint]) -> tuple[list[BackbonePoint], list[str]]:
    """The points whose every seed has a segmentation and a depth run (the dots), and for each
    other point a line saying which runs it lacks.  A multi-task model's heads are left to the
    tables where the single-task models of their backbone and head kind are drawn: over a frozen
    backbone they train as those do, and their dots would sit on top of them."""
    charted, left_out = [], []
    with_single_task_twin = {index for index, base in multi_task_partners(points).items() if isinstance(base, int)}
    for index, p in enumerate(points):
        if index in with_single_task_twin:
            left_out.append(f"{p.label}: not in the chart, beside its single-task models in the tables "
                            "(the paired multi-task differences)")
            continue
        lacking = {name: p.seeds_without(name) for name in CHART_TASKS}
        lacking = {name: seeds for name, seeds in lacking.items() if seeds}
        if not lacking:
            charted.append(p)
            continue
        parts = [f"no {name} run" + ("" if len(seeds) == p.n else f" for seed(s) {seed_names(seeds)}")
                 for name, seeds in lacking.items()]
        left_out.append(f"{p.label}: not in the chart, {' and '.join(parts)}")
    return charted, left_out


def no_chart_reason(points: Sequence[BackbonePoint]) -> str:
    """Why ``points`` (none of which :func:`chart_points` keeps) make no chart, in one line."""
    tasks = shown_tasks([run for p in points for run in p.runs])
    if not all(name in tasks for name in CHART_TASKS):
        return f"it needs {' and '.join(CHART_TASKS)} runs, these runs have {' and '.join(tasks)} only"
    return f"no backbone has both {' and '.join(CHART_TASKS)} runs (for each of its seeds)"


def seed_note(points: Sequence[BackbonePoint]) -> str:
    """What the error bars are, or ``1 seed: no error bars``."""
    counts = sorted({p.n for p in points})
    if counts == [1]:
        return "1 seed: no error bars"
    several = [count for count in counts if count > 1]
    span = str(several[0]) if len(several) == 1 else f"{several[0]}–{several[-1]}"
    text = f"error bars: {100 * LEVEL:g} % CI of the mean over {span} seeds (Student t)"
    return text + ("; 1-seed dots have none" if counts[0] == 1 else "")


def scaled_areas(top1: np.ndarray, best: float) -> np.ndarray:
    """Areas (points²) proportional to ``top1``, ``best`` getting MAX_DOT_AREA, none below
    MIN_DOT_AREA (a top-1 of 0, an untrained backbone, would be invisible); NaN stays NaN."""
    scale = MAX_DOT_AREA / best if best > 0 else 0.0
    return np.maximum(top1 * scale, MIN_DOT_AREA)


def dot_areas(points: Sequence[BackbonePoint]) -> np.ndarray:
    """Scatter areas of the points (:func:`scaled_areas` against the best top-1); no top-1: NaN."""
    top1 = np.array([np.nan if p.top1 is None else p.top1 for p in points], dtype=float)
    return scaled_areas(top1, np.nanmax(top1)) if np.isfinite(top1).any() else top1


def plot_seg_depth(points: Sequence[BackbonePoint], title: str | None = None) -> Figure:
    """The chart: dots at the means over seeds (collection gid ``backbones``, ``backbones-binary-head`` for
    points with a binary head, drawn as squares, ``backbones-binary-head-distilled`` for distilled ones,
    diamonds; ``backbones-no-top1`` for dots without a top-1, drawn as fixed-size crosses), their 95 %
    intervals as error bars (gids ``seed-ci-x``, ``seed-ci-y``), base -> +cmim arrows, dashed
    full-precision head -> binary head arrows, labels, a legend, and a title line saying what the error
    bars are (``1 seed: no error bars``)."""
    if not points:
        raise ValueError("no backbone has both a segmentation and a depth run")
    left_out = chart_points(points)[1]
    if left_out:
        raise ValueError(f"every dot needs seg and depth runs ({'; '.join(left_out)})")
    figure = new_figure(9.5, 6.0)
    ax = figure.add_subplot()
    colours = method_colours([p.method for p in points])
    x, y = np.array([position(p) for p in points]).T
    x_err = np.array([p.half_width(X_KEY) for p in points])
    y_err = np.array([100.0 * p.half_width(Y_KEY) for p in points])
    areas = dot_areas(points)
    sized = np.isfinite(areas)
    edge = np.array([to_rgba(colours[base_method(p.method)]) for p in points])
    face = np.array([to_rgba(colours[base_method(p.method)], 0.6) if has_cmim(p.method) else (1, 1, 1, 0.6)
                     for p in points])
    binary_head = np.array([p.binary_head is not None for p in points])
    distilled = np.array([p.head.distilled for p in points])
    for chosen, marker, gid in ((sized & ~binary_head, "o", "backbones"),
                                (sized & binary_head & ~distilled, "s", "backbones-binary-head"),
                                (sized & binary_head & distilled, "D", "backbones-binary-head-distilled")):
        if chosen.any():
            ax.scatter(x[chosen], y[chosen], s=areas[chosen], marker=marker, facecolors=face[chosen],
                       edgecolors=edge[chosen], linewidths=1.8, zorder=3, gid=gid)
    if not sized.all():
        ax.scatter(x[~sized], y[~sized], s=NO_TOP1_AREA, marker="X", facecolors=edge[~sized],
                   edgecolors=edge[~sized], zorder=3, gid="backbones-no-top1")
    bars = _error_bars(ax, points, colours, x, y, x_err, y_err)
    _set_limits(ax, x, y, x_err, y_err)
    radii = np.sqrt(np.where(sized, areas, NO_TOP1_AREA) / math.pi)
    # base method -> its +cmim dot, as the CMIM differences pair them; full-precision head -> binary heads, dashed
    arrows = _pair_arrows(ax, points, cmim_partners(points), colours, radii, lw=1.4, mutation_scale=12)
    head_arrows = _pair_arrows(ax, points, head_partners(points), colours, radii, lw=1.0, linestyle="--",
                               mutation_scale=10)
    ax.set_xlabel("depth: −ln RMSE  (RMSE in metres; higher is better →)")
    ax.set_ylabel("segmentation: mIoU (%)  (higher is better →)")
    top = ax.secondary_xaxis("top", functions=(_rmse_from_neg_log, _neg_log_from_rmse))
    top.set_xlabel("RMSE (m)")
    ax.grid(True, linestyle=":", linewidth=0.6, alpha=0.7)
    heading = title or f"NYUD-v2, frozen backbones: segmentation vs depth\n{_protocol(points)}"
    ax.set_title(f"{heading}\n{seed_note(points)}", fontsize=11, pad=10)
    styles, sizes = _legend_handles(points, colours, areas, bool(arrows), bool(head_arrows))
    if sizes:
        ax.add_artist(ax.legend(handles=sizes, loc="lower left", bbox_to_anchor=(1.02, 0.0), fontsize=8,
                                frameon=False, borderaxespad=0.0, labelspacing=1.6, borderpad=1.0,
                                title="dot area: pretraining top-1", title_fontsize=8))
    ax.legend(handles=styles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              borderaxespad=0.0)
    figure.canvas.draw()
    place_labels(ax, np.stack([x, y], axis=1), [p.label for p in points], radii, arrows + head_arrows + bars)
    return figure


def _error_bars(ax: Axes, points: Sequence[BackbonePoint], colours: dict[str, str], x: np.ndarray, y: np.ndarray,
                x_err: np.ndarray, y_err: np.ndarray) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The 95 % intervals of the dots with several seeds as error bars (x: −ln RMSE, y: mIoU %) in
    their method's colour; returns the bars as data-space segments (for the labels to avoid)."""
    segments = []
    for i, p in enumerate(points):
        if p.n < 2:
            continue
        container = ax.errorbar(x[i], y[i], xerr=x_err[i], yerr=y_err[i], fmt="none", elinewidth=1.2, capsize=3.0,
                                ecolor=colours[base_method(p.method)], alpha=0.85, zorder=2.5)
        for collection, gid in zip(container.lines[2], ("seed-ci-x", "seed-ci-y")):
            collection.set_gid(gid)
        segments += [((x[i] - x_err[i], y[i]), (x[i] + x_err[i], y[i])),
                     ((x[i], y[i] - y_err[i]), (x[i], y[i] + y_err[i]))]
    return segments


def _set_limits(ax: Axes, x: np.ndarray, y: np.ndarray, x_err: np.ndarray, y_err: np.ndarray) -> None:
    """Room around the dots and their error bars for the labels."""
    for values, errors, setter, minimum in ((x, x_err, ax.set_xlim, 0.05), (y, y_err, ax.set_ylim, 2.0)):
        low, high = float((values - errors).min()), float((values + errors).max())
        pad = max(0.25 * (high - low), minimum)
        setter(low - pad, high + pad)


def _rmse_from_neg_log(value: np.ndarray) -> np.ndarray:
    return np.exp(-np.asarray(value, dtype=float))


def _neg_log_from_rmse(value: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(np.asarray(value, dtype=float), 1e-12, None))


def _pair_arrows(ax: Axes, points: Sequence[BackbonePoint], partners: dict[int, int | str], colours: dict[str, str],
                 radii: np.ndarray, **style: object) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """An arrow from each base point's dot to its twin's (``partners``: twin index -> base index, or why
    none), drawn with ``style`` (matplotlib arrow properties); the segments drawn."""
    segments = []
    for twin, base in partners.items():
        if isinstance(base, str):
            continue
        tail, head = position(points[base]), position(points[twin])
        ax.annotate("", xy=head, xytext=tail, zorder=2,
                    arrowprops={"arrowstyle": "-|>", "color": colours[base_method(points[twin].method)],
                                "shrinkA": radii[base] + 1, "shrinkB": radii[twin] + 1, **style})
        segments.append((tail, head))
    return segments


def _protocol(points: Sequence[BackbonePoint]) -> str:
    """The settings compared runs must share, e.g. '40 classes; depth ground truth: depths' (the
    mix, flagged, when runs differ): each shown task's ``protocol_keys`` in its metrics.json."""
    runs = [run for p in points for run in p.runs]
    parts, mixed = [], False
    for name in shown_tasks(runs):
        for key in get_task(name).protocol_keys:
            values = sorted({str(run.runs[name].metrics.get(key, "?")) for run in runs if name in run.runs})
            mixed |= len(values) > 1
            parts.append(PROTOCOL_TEXT.get(key, key + ": {}").format("/".join(values)))
    text = "; ".join(parts)
    return text + " — MIXED PROTOCOLS" if mixed else text


def _legend_handles(points: Sequence[BackbonePoint], colours: dict[str, str], areas: np.ndarray, arrows: bool,
                    head_arrows: bool = False) -> tuple[list[Line2D], list[Line2D]]:
    """Colour = method, hollow/filled/arrow = without/with CMIM (when a +cmim run is drawn), shape = head
    kind and dashed arrow = FP head -> binary head (when binary heads are drawn); dot area = top-1."""

    def header(text: str) -> Line2D:
        return Line2D([], [], linestyle="none", label=text)

    handles = [header("colour: method")]
    handles += [Line2D([], [], marker="o", linestyle="none", color=c, markersize=9, label=base)
                for base, c in colours.items()]
    with_cmim = [has_cmim(p.method) for p in points]
    if any(with_cmim):  # a chart without +cmim runs has nothing to say about CMIM
        handles.append(header("marker: CMIM"))
        if not all(with_cmim):
            handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="white",
                                  markeredgecolor="0.3", markeredgewidth=1.5, markersize=9, label="without CMIM"))
        handles.append(Line2D([], [], marker="o", linestyle="none", color="0.3", markersize=9, label="+CMIM"))
    if arrows:
        handles.append(Line2D([], [], marker=r"$\rightarrow$", linestyle="none", color="0.3", markersize=14,
                              label="method → method+CMIM"))
    if any(p.binary_head is not None for p in points):
        handles.append(header("shape: head"))
        shapes = [("o", "full-precision head"), ("s", "binary head (docs/binary_heads.md)")]
        if any(p.head.distilled for p in points):
            shapes.append(("D", "binary head, distilled from the FP head"))
        handles += [Line2D([], [], marker=marker, linestyle="none", markerfacecolor="white", markeredgecolor="0.3",
                           markeredgewidth=1.5, markersize=9, label=label) for marker, label in shapes]
    if head_arrows:
        handles.append(Line2D([], [], linestyle="--", color="0.3", label="FP head ⇢ binary head"))
    if not np.isfinite(areas).all():
        handles.append(Line2D([], [], marker="X", linestyle="none", color="0.3", markersize=8,
                              label="no top-1 (fixed size)"))
    top1 = np.array([p.top1 for p in points if p.top1 is not None], dtype=float)
    sizes = []
    if top1.size:
        values = sorted({round(float(v), 3) for v in np.quantile(top1, [0.0, 0.5, 1.0])})
        sizes = [Line2D([], [], marker="o", linestyle="none", markerfacecolor="0.75", markeredgecolor="0.4",
                        markersize=math.sqrt(area), label=f"{100 * value:.1f} %")
                 for value, area in zip(values, scaled_areas(np.array(values), top1.max()))]
    return handles, sizes


def seg_depth_chart(inputs: Sequence[str | Path], out: str | Path, classes: int | None = None,
                    title: str | None = None) -> SegDepthResult:
    """Read, join, gather seeds and tabulate every backbone: ``out.csv``, ``out.md`` and, when a
    ``+cmim`` backbone has its base method, ``out_cmim_differences.csv`` (a binary head its
    full-precision head: ``out_binary_head_differences.csv``); then chart the backbones
    with segmentation and depth runs: ``out.png``, ``out.svg``.  Without such a backbone there is
    no chart: ``no_chart`` says why, and a chart left at ``out`` by an earlier call is removed (it
    would show other runs than the tables).

    Raises ValueError when no run can be read and joined (the skipped inputs are in the message).
    """
    points, skipped = load_points(inputs, classes)
    if not points:
        reasons = "; ".join(str(s) for s in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        raise ValueError(f"no usable fine-tuning run ({reasons or 'no inputs'})")
    differences, notes = paired_differences(points)
    files = write_tables(points, out, differences, notes)
    charted, left_out = chart_points(points)
    if not charted:
        stem = Path(out)
        for fmt in FIGURE_FORMATS:
            (stem.parent / f"{stem.name}.{fmt}").unlink(missing_ok=True)
        return SegDepthResult(points, skipped, files, differences, notes, no_chart=no_chart_reason(points))
    files = save_figure(plot_seg_depth(charted, title), out) + files
    return SegDepthResult(points, skipped, files, differences, notes, charted, left_out)
