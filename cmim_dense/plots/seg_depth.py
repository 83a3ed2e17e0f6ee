"""Segmentation vs depth on NYUD-v2 (the CMIM paper's Fig. 5b), from fine-tuning runs' metrics.json.

One dot per backbone: x = -ln RMSE (m) of its depth run, y = mIoU (%) of its segmentation
run (each task's headline metric, :mod:`cmim_dense.dense.tasks`), dot area proportional to the
backbone's pretraining (ImageNet) top-1.  The tables carry every task the backbones were
fine-tuned on (a surface-normals run adds its columns).  Colour = base method; a
``+cmim`` backbone is a filled dot with an arrow from its hollow base-method dot.

Seeds: the backbones of one method whose paths differ only in a ``seed<k>`` folder (the layout
of ``pipeline/run.py --seeds N``) are the seeds of one dot.  The dot sits at the means over the
seeds, with error bars of the 95 % Student-t confidence interval of each mean; the tables give
every metric as mean ± that half-width (:mod:`cmim_dense.stats`), and a second table the paired
difference of each ``+cmim`` backbone and its base method, seed by seed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..dense import TASKS, get_task
from ..methods import base_method, has_cmim
from ..stats import LEVEL, Interval, PairedDifference, mean_interval, paired_difference, seed_names, sorted_seeds
from .common import Skipped, discover_files, distinct_tails, method_colours, new_figure, save_figure
from .labels import place_labels

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"  # written next to metrics.json by the fine-tuning; holds its seed
COMMON_KEYS = ("task", "backbone", "method", "top1")
Y_TASK, X_TASK = "seg", "depth"  # the chart's axes: each task's headline metric
Y_KEY, X_KEY = get_task(Y_TASK).headline.key, get_task(X_TASK).headline.key  # miou, neg_log_rmse
PROTOCOL_TEXT = {"classes": "{} classes", "depth_gt": "depth ground truth: {}"}
PAIRED = (Y_TASK, X_TASK)  # the tasks every dot needs; the others are optional columns
DIFFERENCE_COLUMNS = ("twin", "base", "metric", "n_seeds", "mean", "ci95", "seeds", "differences")
SEED_FOLDER = re.compile(r"seed(0|[1-9][0-9]*)")  # seed01 is no seed folder (it would repeat seed1)
ANY_SEED = "seed*"
MAX_DOT_AREA = 500.0  # points², the dot of the best top-1
MIN_DOT_AREA = 12.0  # points², so that a backbone at 0 % stays visible
NO_TOP1_AREA = 100.0


@dataclass(frozen=True)
class MetricsRecord:
    """One fine-tuning run's metrics.json."""

    path: Path
    task: str
    backbone: str
    method: str
    top1: float | None
    metrics: dict[str, Any]
    seed: int | None = None  # the fine-tuning seed: metrics.json's "seed", else that of config.json beside it


@dataclass(frozen=True)
class SeedRun:
    """One pretrained backbone, one seed of a dot: its runs (segmentation, depth and any other task) joined."""

    seed: int | None
    runs: dict[str, MetricsRecord]

    @property
    def seg(self) -> MetricsRecord:
        return self.runs[Y_TASK]

    @property
    def depth(self) -> MetricsRecord:
        return self.runs[X_TASK]

    def value(self, metric: str) -> float | None:
        """A reported metric of this seed (``top1``; None when the backbone has none, or when the
        seed has no run of the metric's task)."""
        if metric == "top1":
            return self.seg.top1
        run = self.runs.get(metric_task(metric))
        return None if run is None else float(run.metrics[metric])


def metric_task(metric: str) -> str:
    """The registered task whose results table shows ``metric``."""
    return next(name for name in TASKS.registered() if metric in get_task(name).table)


def shown_tasks(runs: Sequence[SeedRun]) -> list[str]:
    """The tasks any of ``runs`` has, in registration order (the tables' column groups)."""
    return [name for name in TASKS.registered() if any(name in run.runs for run in runs)]


def reported_metrics(runs: Sequence[SeedRun]) -> list[str]:
    """The metrics the tables report for ``runs``: top-1, each shown task's headline, then the
    tasks' other table columns."""
    tasks = [get_task(name) for name in shown_tasks(runs)]
    return (["top1"] + [task.headline.key for task in tasks]
            + [key for task in tasks for key in task.table if key != task.headline.key])


def is_percent(metric: str) -> bool:
    """Whether ``metric`` is a fraction, shown in %."""
    return metric == "top1" or get_task(metric_task(metric)).metric(metric).percent


def metric_header(metric: str, unit_of_difference: bool = False) -> str:
    """A table header: the metric's label with "(%)" (or "(pp)" for differences) for fractions."""
    label = "top-1" if metric == "top1" else get_task(metric_task(metric)).metric(metric).label
    return f"{label} ({'pp' if unit_of_difference else '%'})" if is_percent(metric) else label


@dataclass(frozen=True)
class BackbonePoint:
    """One dot: a method's backbone over its seeds, each metric's mean and 95 % interval over them."""

    label: str
    method: str
    backbone: str  # the backbone's path, its seed<k> folder (if any) written seed*
    runs: tuple[SeedRun, ...]  # one per seed, in seed order
    intervals: dict[str, Interval]  # per reported metric; none for a metric no seed has (top1, other tasks)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> tuple[int | None, ...]:
        return tuple(run.seed for run in self.runs)

    def seed_values(self, metric: str) -> dict[int | None, float]:
        """seed -> value of ``metric`` (seeds without it left out)."""
        values = {run.seed: run.value(metric) for run in self.runs}
        return {seed: value for seed, value in values.items() if value is not None}

    def half_width(self, metric: str) -> float:
        """The 95 % half-width of ``metric``'s mean; 0.0 with one seed (nothing to draw)."""
        interval = self.intervals.get(metric)
        return interval.half_width if interval is not None and interval.has_interval else 0.0

    def mean(self, metric: str) -> float:
        """The mean of ``metric`` over the seeds."""
        return self.intervals[metric].mean

    @property
    def top1(self) -> float | None:  # fraction, as in metrics.json
        return self.intervals["top1"].mean if "top1" in self.intervals else None

    @property
    def position(self) -> tuple[float, float]:
        """The dot: (x, y) = (depth headline, segmentation headline in %) = (−ln RMSE, mIoU %)."""
        return self.mean(X_KEY), 100.0 * self.mean(Y_KEY)


@dataclass(frozen=True)
class CmimDifference:
    """A ``+cmim`` dot minus its base method's dot, seed by seed, per reported metric both have."""

    twin: str  # labels
    base: str
    metrics: dict[str, PairedDifference]

    @property
    def seeds(self) -> tuple[int | None, ...]:
        return self.metrics[get_task(Y_TASK).headline.key].seeds


@dataclass
class SegDepthResult:
    """What :func:`seg_depth_chart` drew, skipped and wrote, and the paired CMIM differences."""

    points: list[BackbonePoint]
    skipped: list[Skipped]
    files: list[Path] = field(default_factory=list)
    differences: list[CmimDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_run(path: Path) -> MetricsRecord:
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
    if not isinstance(data["task"], str) or data["task"] not in TASKS:
        raise ValueError(f"task {data['task']!r} is none of {', '.join(TASKS.names())}")
    task = get_task(data["task"])
    missing = [key for key in task.table if key not in data]
    if missing:
        raise ValueError(f"{task.name} run missing keys {', '.join(missing)}")
    for key in task.table + (("top1",) if data["top1"] is not None else ()):
        if not _finite_number(data[key]):
            raise ValueError(f"{key} is {data[key]!r}, not a finite number")
    if not isinstance(data["backbone"], str) or not isinstance(data["method"], str):
        raise ValueError("backbone and method must be strings")
    if data["top1"] is not None and not 0.0 <= data["top1"] <= 1.0:
        raise ValueError(f"top1 {data['top1']} is not a fraction in [0, 1]")
    task.check_record({key: data[key] for key in task.table})
    seed = data["seed"] if "seed" in data else _config_seed(path)
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed {seed!r} is not a non-negative integer")
    return MetricsRecord(path, task.name, os.path.normpath(data["backbone"]), data["method"],
                         None if data["top1"] is None else float(data["top1"]), data, seed)


def _config_seed(metrics_path: Path) -> Any:
    """The ``seed`` of the fine-tuning's config.json next to ``metrics_path`` (None without a readable one)."""
    try:
        config = json.loads((metrics_path.parent / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config.get("seed") if isinstance(config, dict) else None


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seed_folder(backbone: str) -> tuple[int | None, str]:
    """The seed that the last ``seed<k>`` folder of a backbone's path names, and the path with that
    folder written ``seed*`` (what the seeds of one backbone share); ``(None, backbone)`` without one."""
    parts = Path(backbone).parts
    for index in range(len(parts) - 2, -1, -1):  # the folders, not the file name
        match = SEED_FOLDER.fullmatch(parts[index])
        if match:
            return int(match.group(1)), str(Path(*parts[:index], ANY_SEED, *parts[index + 1:]))
    return None, backbone


def load_points(inputs: Sequence[str | Path], classes: int | None = None
                ) -> tuple[list[BackbonePoint], list[Skipped]]:
    """Read every run that ``inputs`` name, join each backbone's runs (one segmentation and one
    depth run, optionally one of each other task), and gather the seeds of a method's backbone
    (paths that differ only in a ``seed<k>`` folder) into one point.

    ``classes`` keeps only the runs of class-dependent tasks (segmentation) with that many
    classes.  Runs that cannot be read or joined are returned as :class:`Skipped` entries naming
    the file and the reason.
    """
    files, skipped = discover_files(inputs, METRICS_FILE)
    runs: dict[str, dict[str, list[MetricsRecord]]] = {}
    for path in files:
        try:
            run = read_run(path)
        except ValueError as error:
            skipped.append(Skipped(str(path), str(error)))
            continue
        if (classes is not None and "classes" in get_task(run.task).protocol_keys
                and run.metrics.get("classes") != classes):
            skipped.append(Skipped(str(path), f"{run.metrics.get('classes')} classes, the chart shows {classes}"))
            continue
        runs.setdefault(run.backbone, {name: [] for name in TASKS.registered()})[run.task].append(run)
    groups: dict[tuple[str, str], list[SeedRun]] = {}
    for backbone, tasks in sorted(runs.items()):
        folder_seed, group = seed_folder(backbone)
        problem = _pairing_problem(tasks)
        seed = None
        joined = {name: found[0] for name, found in tasks.items() if found}
        if problem is None:
            seed, problem = _pair_seed(list(joined.values()), folder_seed)
        if problem:
            skipped.extend(Skipped(str(run.path), problem) for found in tasks.values() for run in found)
        else:
            groups.setdefault((joined[Y_TASK].method, group), []).append(SeedRun(seed, joined))
    return _points(groups), skipped


def _pairing_problem(tasks: dict[str, list[MetricsRecord]]) -> str | None:
    """Why a backbone's runs do not make one dot (or None when they do)."""
    absent = [name for name in PAIRED if not tasks[name]]
    if absent:
        return f"no {get_task(absent[0]).title} run of the same backbone"
    repeated = {name: len(found) for name, found in tasks.items() if len(found) > 1}
    if repeated:
        counts = " and ".join(f"{len(found)} {get_task(name).title}" for name, found in tasks.items() if found)
        return f"the backbone has {counts} runs; pass one of each (or --classes to choose)"
    found = [found[0] for found in tasks.values() if found]
    if len({(run.method, run.top1) for run in found}) > 1:
        return f"its {' and '.join(run.task for run in found)} runs disagree on method or top1 of the same backbone"
    return None


def _pair_seed(runs: Sequence[MetricsRecord], folder_seed: int | None) -> tuple[int | None, str | None]:
    """The seed of a backbone's runs: its ``seed<k>`` folder's, else the recorded fine-tuning
    seed; or the problem (the runs' seeds disagree with each other or with the folder)."""
    recorded = {run.seed for run in runs} - {None}
    if len(recorded) > 1:
        tasks = " and ".join(run.task for run in runs)
        return None, f"its {tasks} runs were fine-tuned with different seeds ({seed_names(recorded)})"
    if folder_seed is not None and recorded and recorded != {folder_seed}:
        return None, f"fine-tuned with seed {recorded.pop()} on the backbone of seed{folder_seed}"
    return (folder_seed if folder_seed is not None else next(iter(recorded), None)), None


def _points(groups: dict[tuple[str, str], list[SeedRun]]) -> list[BackbonePoint]:
    """Dots labelled by method, with the backbone's distinct path tail where methods repeat."""
    keys = list(groups)
    labels = [method for method, _ in keys]
    for method in set(labels):
        indices = [i for i, label in enumerate(labels) if label == method]
        if len(indices) > 1:
            tails = distinct_tails([keys[i][1] for i in indices])
            for i, tail in zip(indices, tails):
                labels[i] = f"{method} ({tail.removesuffix('/' + ANY_SEED)})"
    points = []
    for label, key in zip(labels, keys):
        by_seed = {run.seed: run for run in groups[key]}  # seeds are distinct: the paths differ in them only
        runs = tuple(by_seed[seed] for seed in sorted_seeds(by_seed))
        intervals = {}
        for metric in reported_metrics([p for p in groups[key]]):
            values = [value for run in runs if (value := run.value(metric)) is not None]
            if values:
                intervals[metric] = mean_interval(values)
        points.append(BackbonePoint(label, key[0], key[1], runs, intervals))
    return sorted(points, key=lambda p: p.label)


def cmim_differences(points: Sequence[BackbonePoint]) -> tuple[list[CmimDifference], list[str]]:
    """Each ``+cmim`` dot minus its base method's dot (where that method has exactly one), seed by
    seed, per metric, with the 95 % interval of the mean difference; and notes on twins without a
    partner and seeds that only one side has (left out)."""
    by_method: dict[str, list[BackbonePoint]] = {}
    for p in points:
        by_method.setdefault(p.method.lower(), []).append(p)
    differences, notes = [], []
    for twin in points:
        if not has_cmim(twin.method):
            continue
        base_name = base_method(twin.method)
        bases = by_method.get(base_name, [])
        if len(bases) != 1:
            notes.append(f"{twin.label}: no paired difference, {len(bases)} {base_name} backbones to pair it with")
            continue
        base = bases[0]
        if not set(base.seeds) & set(twin.seeds):
            notes.append(f"{twin.label} − {base.label}: no seed in common "
                         f"({seed_names(twin.seeds)} vs {seed_names(base.seeds)})")
            continue
        metrics = {}
        for metric in reported_metrics(base.runs + twin.runs):
            base_values, twin_values = base.seed_values(metric), twin.seed_values(metric)
            if set(base_values) & set(twin_values):
                metrics[metric] = paired_difference(base_values, twin_values)
        headline = metrics[get_task(Y_TASK).headline.key]
        if headline.unpaired:
            notes.append(f"{twin.label} − {base.label}: seed(s) {seed_names(headline.unpaired)} "
                         "only on one side, left out")
        differences.append(CmimDifference(twin.label, base.label, metrics))
    return differences, notes


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
    """The chart: dots at the means over seeds (collection gid ``backbones``; ``backbones-no-top1``
    for dots without a top-1, drawn as fixed-size crosses), their 95 % intervals as error bars
    (gids ``seed-ci-x``, ``seed-ci-y``), base -> +cmim arrows, labels, a legend, and a title line
    saying what the error bars are (``1 seed: no error bars``)."""
    if not points:
        raise ValueError("no backbone has both a segmentation and a depth run")
    figure = new_figure(9.5, 6.0)
    ax = figure.add_subplot()
    colours = method_colours([p.method for p in points])
    x, y = np.array([p.position for p in points]).T
    x_err = np.array([p.half_width(X_KEY) for p in points])
    y_err = np.array([100.0 * p.half_width(Y_KEY) for p in points])
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
    bars = _error_bars(ax, points, colours, x, y, x_err, y_err)
    _set_limits(ax, x, y, x_err, y_err)
    radii = np.sqrt(np.where(sized, areas, NO_TOP1_AREA) / math.pi)
    arrows = _cmim_arrows(ax, points, colours, radii)
    ax.set_xlabel("depth: −ln RMSE  (RMSE in metres; higher is better →)")
    ax.set_ylabel("segmentation: mIoU (%)  (higher is better →)")
    top = ax.secondary_xaxis("top", functions=(_rmse_from_neg_log, _neg_log_from_rmse))
    top.set_xlabel("RMSE (m)")
    ax.grid(True, linestyle=":", linewidth=0.6, alpha=0.7)
    heading = title or f"NYUD-v2, frozen backbones: segmentation vs depth\n{_protocol(points)}"
    ax.set_title(f"{heading}\n{seed_note(points)}", fontsize=11, pad=10)
    styles, sizes = _legend_handles(points, colours, areas, bool(arrows))
    if sizes:
        ax.add_artist(ax.legend(handles=sizes, loc="lower left", bbox_to_anchor=(1.02, 0.0), fontsize=8,
                                frameon=False, borderaxespad=0.0, labelspacing=1.6, borderpad=1.0,
                                title="dot area: pretraining top-1", title_fontsize=8))
    ax.legend(handles=styles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              borderaxespad=0.0)
    figure.canvas.draw()
    place_labels(ax, np.stack([x, y], axis=1), [p.label for p in points], radii, arrows + bars)
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
        tail, head = start.position, end.position
        ax.annotate("", xy=head, xytext=tail, zorder=2,
                    arrowprops={"arrowstyle": "-|>", "color": colours[base_method(method)], "lw": 1.4,
                                "shrinkA": radii[bases[0]] + 1, "shrinkB": radii[indices[0]] + 1,
                                "mutation_scale": 12})
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


def _cell(interval: Interval | None, metric: str, signed: bool = False) -> str:
    """A table cell: mean ± 95 % half-width (just the mean with one seed), in % for fractions."""
    if interval is None:
        return "–"
    if is_percent(metric):
        return interval.format(100.0, 2, signed)
    return interval.format(1.0, get_task(metric_task(metric)).metric(metric).decimals, signed)


def headline_differences(difference: CmimDifference) -> str:
    """Each task's headline difference of a +cmim backbone, e.g. ``mIoU (pp) +1.85 ± 0.33, −ln RMSE +0.0100``."""
    keys = [get_task(name).headline.key for name in TASKS.registered()]
    return ", ".join(f"{metric_header(key, True)} {_cell(difference.metrics[key].interval, key, signed=True)}"
                     for key in keys if key in difference.metrics)


def _exact(interval: Interval | None, half_width: bool = False) -> float | str:
    """A CSV cell: the exact mean (or half-width; empty when there is none)."""
    if interval is None or (half_width and not interval.has_interval):
        return ""
    return interval.half_width if half_width else interval.mean


def write_tables(points: Sequence[BackbonePoint], stem: str | Path, differences: Sequence[CmimDifference] = (),
                 notes: Sequence[str] = ()) -> list[Path]:
    """``stem.csv`` (exact values: fractions, metres; the means over the seeds, then the seeds and
    each mean's 95 % half-width), ``stem.md`` (rounded, in %: ``mean ± half-width`` with several
    seeds; then the paired CMIM differences and ``notes``) and, with differences,
    ``stem_cmim_differences.csv`` (one row per twin and metric, exact)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.parent / f"{stem.name}.csv", stem.parent / f"{stem.name}.md"
    runs = [run for p in points for run in p.runs]
    tasks, reported = shown_tasks(runs), reported_metrics(runs)
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *reported, "backbone", *(f"{name}_run" for name in tasks), "n_seeds", "seeds",
                         *(f"{metric}_ci95" for metric in reported)])
        for p in points:
            writer.writerow([p.label, *(_exact(p.intervals.get(m)) for m in reported), p.backbone,
                             *(";".join(str(r.runs[name].path) for r in p.runs if name in r.runs) for name in tasks),
                             p.n, ";".join("" if s is None else str(s) for s in p.seeds),
                             *(_exact(p.intervals.get(m), half_width=True) for m in reported)])
    seeded = any(p.n > 1 for p in points)
    seeds_header, seeds_rule = (" seeds |", "---:|") if seeded else ("", "")
    lines = [f"| method |{seeds_header} {' | '.join(metric_header(m) for m in reported)} | backbone |",
             f"|---|{seeds_rule}{'---:|' * len(reported)}---|"]
    for p in points:
        seeds = f" {p.n} |" if seeded else ""
        cells = " | ".join(_cell(p.intervals.get(metric), metric) for metric in reported)
        lines.append(f"| {p.label} |{seeds} {cells} | `{p.backbone}` |")
    lines += ["", (f"Mean ± half-width of the {100 * LEVEL:g} % confidence interval of the mean over the seeds "
                   "(Student t, n − 1 degrees of freedom); a backbone with 1 seed has no interval."
                   if seeded else "1 seed per backbone: no confidence intervals (pipeline/run.py --seeds N runs N).")]
    if differences:
        lines += ["", "## Paired CMIM differences", "",
                  f"Each +CMIM backbone minus its base method's, seed by seed (the backbones of the same seed); "
                  f"mean ± half-width of the {100 * LEVEL:g} % confidence interval of the mean difference (Student t "
                  "over the per-seed differences; 1 seed: no interval). Percentages in points.", "",
                  f"| +CMIM − base | seeds | {' | '.join(metric_header(m, True) for m in reported)} |",
                  f"|---|---|{'---:|' * len(reported)}"]
        for d in differences:
            cells = " | ".join(_cell(d.metrics[m].interval if m in d.metrics else None, m, signed=True)
                               for m in reported)
            lines.append(f"| {d.twin} − {d.base} | {seed_names(d.seeds)} | {cells} |")
    if notes:
        lines += [""] + [f"Note: {note}." for note in notes]
    md_path.write_text("\n".join(lines) + "\n")
    files = [csv_path, md_path]
    if differences:
        diff_path = stem.parent / f"{stem.name}_cmim_differences.csv"
        with diff_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(DIFFERENCE_COLUMNS)
            for d in differences:
                for metric, paired in d.metrics.items():
                    writer.writerow([d.twin, d.base, metric, paired.interval.n, paired.interval.mean,
                                     _exact(paired.interval, half_width=True),
                                     ";".join("" if s is None else str(s) for s in paired.seeds),
                                     ";".join(repr(v) for v in paired.differences)])
        files.append(diff_path)
    return files


def seg_depth_chart(inputs: Sequence[str | Path], out: str | Path, classes: int | None = None,
                    title: str | None = None) -> SegDepthResult:
    """Read, pair, gather seeds, plot and tabulate: writes ``out.png``, ``out.svg``, ``out.csv``,
    ``out.md`` and, when a ``+cmim`` backbone has its base method, ``out_cmim_differences.csv``.

    Raises ValueError when no backbone has both runs (the skipped inputs are in the message).
    """
    points, skipped = load_points(inputs, classes)
    if not points:
        reasons = "; ".join(str(s) for s in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        raise ValueError(f"no backbone has both a segmentation and a depth run ({reasons or 'no inputs'})")
    differences, notes = cmim_differences(points)
    figure = plot_seg_depth(points, title)
    files = save_figure(figure, out) + write_tables(points, out, differences, notes)
    return SegDepthResult(points, skipped, files, differences, notes)
