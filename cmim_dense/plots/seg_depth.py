"""Segmentation vs depth on NYUD-v2 (the CMIM paper's Fig. 5b), from fine-tuning runs' metrics.json.

One dot per backbone: x = -ln RMSE (m) of its depth run, y = mIoU (%) of its segmentation
run, dot area proportional to the backbone's pretraining (ImageNet) top-1.  Colour = base method; a
``+cmim`` backbone is a filled dot with an arrow from its hollow base-method dot.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..methods import base_method, has_cmim
from .common import Skipped, discover_files, distinct_tails, method_colours, new_figure, save_figure
from .labels import place_labels

METRICS_FILE = "metrics.json"
COMMON_KEYS = ("task", "backbone", "method", "top1")
TASK_KEYS = {"seg": ("miou", "pixel_acc"), "depth": ("rmse", "neg_log_rmse", "delta1")}
TABLE_COLUMNS = ("method", "top1", "miou", "neg_log_rmse", "rmse", "pixel_acc", "delta1", "backbone",
                 "seg_run", "depth_run")
MAX_DOT_AREA = 500.0  # points², the dot of the best top-1
MIN_DOT_AREA = 12.0  # points², so that a backbone at 0 % stays visible
NO_TOP1_AREA = 100.0


@dataclass(frozen=True)
class FinetuneRun:
    """One fine-tuning run's metrics.json."""

    path: Path
    task: str
    backbone: str
    method: str
    top1: float | None
    metrics: dict[str, Any]


@dataclass(frozen=True)
class BackbonePoint:
    """One backbone's dot: its segmentation and depth runs joined."""

    label: str
    method: str
    backbone: str
    top1: float | None  # fraction, as in metrics.json
    miou: float  # fraction
    pixel_acc: float
    neg_log_rmse: float
    rmse: float  # metres
    delta1: float
    seg_run: Path
    depth_run: Path
    classes: Any = None
    depth_gt: Any = None


@dataclass
class SegDepthResult:
    """What :func:`seg_depth_chart` drew, skipped and wrote."""

    points: list[BackbonePoint]
    skipped: list[Skipped]
    files: list[Path] = field(default_factory=list)


def read_run(path: Path) -> FinetuneRun:
    """Parse and check one metrics.json; a ValueError names what is wrong in one line."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"unreadable ({type(error).__name__})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    missing = [key for key in COMMON_KEYS if key not in data]
    if missing:
        raise ValueError(f"missing keys {', '.join(missing)}")
    task = data["task"]
    if task not in TASK_KEYS:
        raise ValueError(f"task {task!r} is neither 'seg' nor 'depth'")
    missing = [key for key in TASK_KEYS[task] if key not in data]
    if missing:
        raise ValueError(f"{task} run missing keys {', '.join(missing)}")
    for key in TASK_KEYS[task] + (("top1",) if data["top1"] is not None else ()):
        if not _finite_number(data[key]):
            raise ValueError(f"{key} is {data[key]!r}, not a finite number")
    if not isinstance(data["backbone"], str) or not isinstance(data["method"], str):
        raise ValueError("backbone and method must be strings")
    if data["top1"] is not None and not 0.0 <= data["top1"] <= 1.0:
        raise ValueError(f"top1 {data['top1']} is not a fraction in [0, 1]")
    if task == "seg" and not 0.0 <= data["miou"] <= 1.0:
        raise ValueError(f"miou {data['miou']} is not a fraction in [0, 1]")
    if task == "depth":
        if data["rmse"] <= 0:
            raise ValueError(f"rmse {data['rmse']} is not positive")
        if not math.isclose(data["neg_log_rmse"], -math.log(data["rmse"]), abs_tol=1e-3):
            raise ValueError(f"neg_log_rmse {data['neg_log_rmse']} is not -ln(rmse {data['rmse']})")
    return FinetuneRun(path, task, os.path.normpath(data["backbone"]), data["method"],
                       None if data["top1"] is None else float(data["top1"]), data)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_points(inputs: Sequence[str | Path], classes: int | None = None
                ) -> tuple[list[BackbonePoint], list[Skipped]]:
    """Read every run that ``inputs`` name and pair each backbone's seg and depth runs.

    ``classes`` keeps only segmentation runs with that many classes.  Runs that cannot be
    read or paired are returned as :class:`Skipped` entries naming the file and the reason.
    """
    files, skipped = discover_files(inputs, METRICS_FILE)
    runs: dict[str, dict[str, list[FinetuneRun]]] = {}
    for path in files:
        try:
            run = read_run(path)
        except ValueError as error:
            skipped.append(Skipped(str(path), str(error)))
            continue
        if classes is not None and run.task == "seg" and run.metrics.get("classes") != classes:
            skipped.append(Skipped(str(path), f"{run.metrics.get('classes')} classes, the chart shows {classes}"))
            continue
        runs.setdefault(run.backbone, {"seg": [], "depth": []})[run.task].append(run)
    pairs = []
    for backbone, tasks in sorted(runs.items()):
        problem = _pairing_problem(tasks)
        if problem:
            skipped.extend(Skipped(str(run.path), problem) for task in ("seg", "depth") for run in tasks[task])
        else:
            pairs.append((tasks["seg"][0], tasks["depth"][0]))
    return _points(pairs), skipped


def _pairing_problem(tasks: dict[str, list[FinetuneRun]]) -> str | None:
    """Why a backbone's runs do not make one dot (or None when they do)."""
    seg, depth = tasks["seg"], tasks["depth"]
    if not seg or not depth:
        return f"no {'segmentation' if not seg else 'depth'} run of the same backbone"
    if len(seg) > 1 or len(depth) > 1:
        return (f"the backbone has {len(seg)} segmentation and {len(depth)} depth runs; "
                "pass one of each (or --classes to choose)")
    if seg[0].method != depth[0].method or seg[0].top1 != depth[0].top1:
        return "its seg and depth runs disagree on method or top1 of the same backbone"
    return None


def _points(pairs: list[tuple[FinetuneRun, FinetuneRun]]) -> list[BackbonePoint]:
    """Dots labelled by method, with the backbone's distinct path tail where methods repeat."""
    labels = [seg.method for seg, _ in pairs]
    for method in set(labels):
        indices = [i for i, label in enumerate(labels) if label == method]
        if len(indices) > 1:
            tails = distinct_tails([pairs[i][0].backbone for i in indices])
            for i, tail in zip(indices, tails):
                labels[i] = f"{method} ({tail})"
    points = [
        BackbonePoint(label, seg.method, seg.backbone, seg.top1, float(seg.metrics["miou"]),
                      float(seg.metrics["pixel_acc"]), float(depth.metrics["neg_log_rmse"]),
                      float(depth.metrics["rmse"]), float(depth.metrics["delta1"]), seg.path, depth.path,
                      seg.metrics.get("classes"), depth.metrics.get("depth_gt"))
        for label, (seg, depth) in zip(labels, pairs)
    ]
    return sorted(points, key=lambda p: p.label)


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
    """The chart: dots (collection gid ``backbones``; ``backbones-no-top1`` for dots without a
    top-1, drawn as fixed-size crosses), base -> +cmim arrows, labels and a legend."""
    if not points:
        raise ValueError("no backbone has both a segmentation and a depth run")
    figure = new_figure(9.5, 6.0)
    ax = figure.add_subplot()
    colours = method_colours([p.method for p in points])
    x = np.array([p.neg_log_rmse for p in points])
    y = np.array([100.0 * p.miou for p in points])
    areas = dot_areas(points)
    sized = np.isfinite(areas)
    edge = np.array([to_rgba(colours[base_method(p.method)]) for p in points])
    face = np.array([to_rgba(colours[base_method(p.method)], 0.6) if has_cmim(p.method) else (1, 1, 1, 0.6)
                     for p in points])
    ax.scatter(x[sized], y[sized], s=areas[sized], facecolors=face[sized], edgecolors=edge[sized], linewidths=1.8,
               zorder=3, gid="backbones")
    if not sized.all():
        ax.scatter(x[~sized], y[~sized], s=NO_TOP1_AREA, marker="X", facecolors=edge[~sized],
                   edgecolors=edge[~sized], zorder=3, gid="backbones-no-top1")
    _set_limits(ax, x, y)
    radii = np.sqrt(np.where(sized, areas, NO_TOP1_AREA) / math.pi)
    arrows = _cmim_arrows(ax, points, colours, radii)
    ax.set_xlabel("depth: −ln RMSE  (RMSE in metres; higher is better →)")
    ax.set_ylabel("segmentation: mIoU (%)  (higher is better →)")
    top = ax.secondary_xaxis("top", functions=(_rmse_from_neg_log, _neg_log_from_rmse))
    top.set_xlabel("RMSE (m)")
    ax.grid(True, linestyle=":", linewidth=0.6, alpha=0.7)
    ax.set_title(title or f"NYUD-v2, frozen backbones: segmentation vs depth\n{_protocol(points)}",
                 fontsize=11, pad=10)
    styles, sizes = _legend_handles(points, colours, areas, bool(arrows))
    if sizes:
        ax.add_artist(ax.legend(handles=sizes, loc="lower left", bbox_to_anchor=(1.02, 0.0), fontsize=8,
                                frameon=False, borderaxespad=0.0, labelspacing=1.6, borderpad=1.0,
                                title="dot area: pretraining top-1", title_fontsize=8))
    ax.legend(handles=styles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              borderaxespad=0.0)
    figure.canvas.draw()
    place_labels(ax, np.stack([x, y], axis=1), [p.label for p in points], radii, arrows)
    return figure


def _set_limits(ax: Axes, x: np.ndarray, y: np.ndarray) -> None:
    """Room around the dots for their labels."""
    for values, setter, minimum in ((x, ax.set_xlim, 0.05), (y, ax.set_ylim, 2.0)):
        low, high = float(values.min()), float(values.max())
        pad = max(0.25 * (high - low), minimum)
        setter(low - pad, high + pad)


def _rmse_from_neg_log(value: np.ndarray) -> np.ndarray:
    return np.exp(-np.asarray(value, dtype=float))


def _neg_log_from_rmse(value: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(np.asarray(value, dtype=float), 1e-12, None))


def _cmim_arrows(ax: Axes, points: Sequence[BackbonePoint], colours: dict[str, str], radii: np.ndarray
                 ) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """An arrow from each base method's dot to its ``+cmim`` dot (where each is unique)."""
    by_method: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        by_method.setdefault(p.method.lower(), []).append(i)
    segments = []
    for method, indices in by_method.items():
        bases = by_method.get(base_method(method), [])
        if not has_cmim(method) or len(indices) != 1 or len(bases) != 1:
            continue
        start, end = points[bases[0]], points[indices[0]]
        tail = (start.neg_log_rmse, 100.0 * start.miou)
        head = (end.neg_log_rmse, 100.0 * end.miou)
        ax.annotate("", xy=head, xytext=tail, zorder=2,
                    arrowprops={"arrowstyle": "-|>", "color": colours[base_method(method)], "lw": 1.4,
                                "shrinkA": radii[bases[0]] + 1, "shrinkB": radii[indices[0]] + 1,
                                "mutation_scale": 12})
        segments.append((tail, head))
    return segments


def _protocol(points: Sequence[BackbonePoint]) -> str:
    """'40 classes, depth GT depths' (or the mix, flagged, when runs differ)."""
    classes = sorted({"?" if p.classes is None else str(p.classes) for p in points})
    depth = sorted({"?" if p.depth_gt is None else str(p.depth_gt) for p in points})
    text = f"{'/'.join(classes)} classes; depth ground truth: {'/'.join(depth)}"
    return text + " — MIXED PROTOCOLS" if len(classes) > 1 or len(depth) > 1 else text


def _legend_handles(points: Sequence[BackbonePoint], colours: dict[str, str], areas: np.ndarray, arrows: bool
                    ) -> tuple[list[Line2D], list[Line2D]]:
    """Colour = method and hollow/filled/arrow = without/with CMIM (the entries that occur); dot area = top-1."""

    def header(text: str) -> Line2D:
        return Line2D([], [], linestyle="none", label=text)

    handles = [header("colour: method")]
    handles += [Line2D([], [], marker="o", linestyle="none", color=c, markersize=9, label=base)
                for base, c in colours.items()]
    with_cmim = [has_cmim(p.method) for p in points]
    handles.append(header("marker: CMIM"))
    if not all(with_cmim):
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="white", markeredgecolor="0.3",
                              markeredgewidth=1.5, markersize=9, label="without CMIM"))
    if any(with_cmim):
        handles.append(Line2D([], [], marker="o", linestyle="none", color="0.3", markersize=9, label="+CMIM"))
    if arrows:
        handles.append(Line2D([], [], marker=r"$\rightarrow$", linestyle="none", color="0.3", markersize=14,
                              label="method → method+CMIM"))
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


def write_tables(points: Sequence[BackbonePoint], stem: str | Path) -> list[Path]:
    """``stem.csv`` (exact values: fractions, metres) and ``stem.md`` (rounded, in %)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.parent / f"{stem.name}.csv", stem.parent / f"{stem.name}.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        for p in points:
            writer.writerow([p.label, "" if p.top1 is None else p.top1, p.miou, p.neg_log_rmse, p.rmse, p.pixel_acc,
                             p.delta1, p.backbone, p.seg_run, p.depth_run])
    lines = ["| method | top-1 (%) | mIoU (%) | −ln RMSE | RMSE (m) | pixel acc. (%) | δ<1.25 (%) | backbone |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for p in points:
        top1 = "–" if p.top1 is None else f"{100 * p.top1:.2f}"
        lines.append(f"| {p.label} | {top1} | {100 * p.miou:.2f} | {p.neg_log_rmse:.4f} | {p.rmse:.4f} | "
                     f"{100 * p.pixel_acc:.2f} | {100 * p.delta1:.2f} | `{p.backbone}` |")
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def seg_depth_chart(inputs: Sequence[str | Path], out: str | Path, classes: int | None = None,
                    title: str | None = None) -> SegDepthResult:
    """Read, pair, plot and tabulate: writes ``out.png``, ``out.svg``, ``out.csv`` and ``out.md``.

    Raises ValueError when no backbone has both runs (the skipped inputs are in the message).
    """
    points, skipped = load_points(inputs, classes)
    if not points:
        reasons = "; ".join(str(s) for s in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        raise ValueError(f"no backbone has both a segmentation and a depth run ({reasons or 'no inputs'})")
    figure = plot_seg_depth(points, title)
    files = save_figure(figure, out) + write_tables(points, out)
    return SegDepthResult(points, skipped, files)
