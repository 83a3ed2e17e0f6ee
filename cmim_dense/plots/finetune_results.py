"""Fine-tuning results: each run's metrics.json read and checked, the runs of one backbone joined
(at most one per task, any registered tasks), and the seeds of a backbone gathered into one
:class:`BackbonePoint` with each metric's mean and 95 % interval over them.

Seeds: the backbones of one method whose paths differ only in a ``seed<k>`` folder (the layout
of ``pipeline/run.py --seeds N``) are the seeds of one point; the interval of a mean is the
Student-t interval of :mod:`cmim_dense.stats`.  The tables (:mod:`.result_tables`) show every
point, the seg-vs-depth chart (:mod:`.seg_depth`) those with segmentation and depth runs.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from ..dense import TASKS, Metric, get_task
from ..methods import base_method, has_cmim
from ..stats import Interval, mean_interval, seed_names, sorted_seeds
from .common import Skipped, discover_files, distinct_tails

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"  # written next to metrics.json by the fine-tuning; holds its seed
COMMON_KEYS = ("task", "backbone", "method", "top1")
SEED_FOLDER = re.compile(r"seed(0|[1-9][0-9]*)")  # seed01 is no seed folder (it would repeat seed1)
ANY_SEED = "seed*"


class HeadKind(NamedTuple):
    """What a run's head is: binarized by a method's recipe (None: full precision), one of a multi-task
    model's heads (its tasks and loss weighting; None: a single-task model), distilled from a teacher head."""

    binary_head: str | None = None
    multi_task: str | None = None
    distilled: bool = False
    task_weighting: str | None = None


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

    @property
    def binary_head(self) -> str | None:
        """The method whose recipe binarized the head (None: a full-precision head)."""
        return self.metrics.get("binary_head")

    @property
    def multi_task(self) -> str | None:
        """The tasks of the multi-task model whose head this run is (None: a single-task model)."""
        return self.metrics.get("multi_task")

    @property
    def head(self) -> HeadKind:
        """The kind of head; each kind's runs of a backbone are a point of their own."""
        return HeadKind(self.binary_head, self.multi_task, "head_teacher" in self.metrics,
                        self.metrics.get("task_weighting"))


@dataclass(frozen=True)
class SeedRun:
    """One pretrained backbone, one seed of a point: its runs, one per task it was fine-tuned on."""

    seed: int | None
    runs: dict[str, MetricsRecord]  # task name -> run; at least one

    @property
    def top1(self) -> float | None:
        """The backbone's pretraining top-1 (fraction; its runs agree on it), None when it has none."""
        return next(iter(self.runs.values())).top1

    def value(self, metric: str) -> float | None:
        """A reported metric of this seed (``top1``; None when the backbone has none, or when the
        seed has no run of the metric's task)."""
        if metric == "top1":
            return self.top1
        run = self.runs.get(metric_task(metric))
        return None if run is None else float(run.metrics[metric])


def metric_task(metric: str) -> str:
    """The registered task whose results table shows ``metric``."""
    return next(name for name in TASKS.registered() if metric in get_task(name).table)


def table_metric(metric: str) -> Metric:
    """The description (label, unit, decimals) of a results-table column, from the task that shows it."""
    return get_task(metric_task(metric)).metric(metric)


def shown_tasks(runs: Sequence[SeedRun]) -> list[str]:
    """The tasks any of ``runs`` has, in registration order (the tables' column groups)."""
    return [name for name in TASKS.registered() if any(name in run.runs for run in runs)]


def reported_metrics(runs: Sequence[SeedRun]) -> list[str]:
    """The metrics the tables report for ``runs``: top-1, each shown task's headline, then the
    tasks' other table columns."""
    tasks = [get_task(name) for name in shown_tasks(runs)]
    return (["top1"] + [task.headline.key for task in tasks]
            + [key for task in tasks for key in task.table if key != task.headline.key])


@dataclass(frozen=True)
class BackbonePoint:
    """One method's backbone over its seeds (a table row, a dot of the chart): each metric's mean
    and 95 % interval over the seeds."""

    label: str
    method: str
    backbone: str  # the backbone's path, its seed<k> folder (if any) written seed*
    runs: tuple[SeedRun, ...]  # one per seed, in seed order
    intervals: dict[str, Interval]  # per reported metric; none for a metric no seed has (top1, other tasks)
    head: HeadKind = HeadKind()

    @property
    def binary_head(self) -> str | None:
        """The method that binarized the head; None: full precision."""
        return self.head.binary_head

    @property
    def multi_task(self) -> str | None:
        """The tasks of the multi-task model the heads belong to; None: single-task models."""
        return self.head.multi_task

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

    def seeds_without(self, task: str) -> list[int | None]:
        """The seeds that have no run of ``task``."""
        return [run.seed for run in self.runs if task not in run.runs]

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
    """Read every run that ``inputs`` name, join each backbone's runs (at most one per task and head
    kind: a binary head's runs are a point of their own; a backbone fine-tuned on depth alone is a
    point too), and gather the seeds of a method's backbone (paths that differ only in a ``seed<k>``
    folder) into one point.

    ``classes`` keeps only the runs of class-dependent tasks (segmentation) with that many
    classes.  Runs that cannot be read or joined are returned as :class:`Skipped` entries naming
    the file and the reason.
    """
    files, skipped = discover_files(inputs, METRICS_FILE)
    runs: dict[tuple[str, HeadKind], dict[str, list[MetricsRecord]]] = {}
    for path in files:
        try:
            run = read_run(path)
        except ValueError as error:
            skipped.append(Skipped(str(path), str(error)))
            continue
        if (classes is not None and "classes" in get_task(run.task).protocol_keys
                and run.metrics.get("classes") != classes):
            skipped.append(Skipped(str(path), f"{run.metrics.get('classes')} classes, not the {classes} asked for"))
            continue
        runs.setdefault((run.backbone, run.head), {name: [] for name in TASKS.registered()})[run.task].append(run)
    groups: dict[tuple[str, str, HeadKind], list[SeedRun]] = {}
    for (backbone, head), tasks in sorted(runs.items(), key=lambda item: (item[0][0], *map(str, item[0][1]))):
        folder_seed, group = seed_folder(backbone)
        problem = _joining_problem(tasks)
        seed = None
        joined = {name: found[0] for name, found in tasks.items() if found}
        if problem is None:
            seed, problem = _pair_seed(list(joined.values()), folder_seed)
        if problem:
            skipped.extend(Skipped(str(run.path), problem) for found in tasks.values() for run in found)
        else:
            method = next(iter(joined.values())).method  # the runs agree on it
            groups.setdefault((method, group, head), []).append(SeedRun(seed, joined))
    return _points(groups), skipped


def _joining_problem(tasks: dict[str, list[MetricsRecord]]) -> str | None:
    """Why a backbone's runs (task -> its runs of that task) do not join into one seed of a point
    (or None when they do)."""
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


def _points(groups: dict[tuple[str, str, HeadKind], list[SeedRun]]) -> list[BackbonePoint]:
    """Points labelled by method and head (:func:`head_suffix`), with the backbone's distinct path tail
    where labels repeat."""
    keys = list(groups)
    labels = [method + head_suffix(method, head) for method, _, head in keys]
    for repeated in set(labels):
        indices = [i for i, label in enumerate(labels) if label == repeated]
        if len(indices) > 1:
            tails = distinct_tails([keys[i][1] for i in indices])
            for i, tail in zip(indices, tails):
                labels[i] = f"{repeated} ({tail.removesuffix('/' + ANY_SEED)})"
    points = []
    for label, key in zip(labels, keys):
        by_seed = {run.seed: run for run in groups[key]}  # seeds are distinct: the paths differ in them only
        runs = tuple(by_seed[seed] for seed in sorted_seeds(by_seed))
        intervals = {}
        for metric in reported_metrics(runs):
            values = [value for run in runs if (value := run.value(metric)) is not None]
            if values:
                intervals[metric] = mean_interval(values)
        points.append(BackbonePoint(label, key[0], key[1], runs, intervals, key[2]))
    return sorted(points, key=lambda p: p.label)


def head_suffix(method: str, head: HeadKind) -> str:
    """What a point's label adds for its head: ``, multi-task`` for a multi-task model's heads (with
    ``(uncertainty weighting)`` for that weighting), ``, binary head`` (``, METHOD head`` when another method than the backbone's binarized it), ``, distilled``;
    nothing for a full-precision single-task head."""
    suffix = "" if head.multi_task is None else ", multi-task" + (
        "" if head.task_weighting == "fixed" else f" ({head.task_weighting} weighting)")
    if head.binary_head is not None:
        suffix += ", binary head" if head.binary_head == base_method(method) else f", {head.binary_head} head"
    return suffix + (", distilled" if head.distilled else "")


def cmim_partners(points: Sequence[BackbonePoint]) -> dict[int, int | str]:
    """The pairing of the paired differences and the chart's arrows: for each ``+cmim`` point (by
    index), the index of its base method's point with the same kind of head when there is exactly
    one, else why not."""
    by_method: dict[tuple[str, str | None], list[int]] = {}
    for index, point in enumerate(points):
        by_method.setdefault((point.method.lower(), point.head), []).append(index)
    partners: dict[int, int | str] = {}
    for index, point in enumerate(points):
        if has_cmim(point.method):
            name = base_method(point.method)
            bases = by_method.get((name, point.head), [])
            partners[index] = bases[0] if len(bases) == 1 else f"{len(bases)} {name} backbones to pair it with"
    return partners


def _partners(points: Sequence[BackbonePoint], is_twin: Callable[[HeadKind], bool],
              base_head: Callable[[HeadKind], HeadKind], missing: str) -> dict[int, int | str]:
    """For each point whose head ``is_twin`` (by index), the index of the point of the same method and
    backbone whose head is ``base_head`` of the twin's, else ``missing``."""
    index_of = {(point.method, point.backbone, point.head): index for index, point in enumerate(points)}
    return {index: index_of.get((point.method, point.backbone, base_head(point.head)), missing)
            for index, point in enumerate(points) if is_twin(point.head)}


def head_partners(points: Sequence[BackbonePoint]) -> dict[int, int | str]:
    """The pairing of the binary-head differences: each binary head (trained alone or distilled) and the
    full-precision head of the same model kind over the same backbone."""
    return _partners(points, lambda head: head.binary_head is not None,
                     lambda head: head._replace(binary_head=None, distilled=False),
                     "no full-precision head over its backbone")


def distillation_partners(points: Sequence[BackbonePoint]) -> dict[int, int | str]:
    """The pairing of the distillation differences: each distilled head and the same head trained alone."""
    return _partners(points, lambda head: head.distilled, lambda head: head._replace(distilled=False),
                     "no undistilled head of its kind over its backbone")


def multi_task_partners(points: Sequence[BackbonePoint]) -> dict[int, int | str]:
    """The pairing of the multi-task differences: each multi-task model's heads and the single-task models
    of the same head kind over the same backbone."""
    return _partners(points, lambda head: head.multi_task is not None,
                     lambda head: head._replace(multi_task=None, task_weighting=None),
                     "no single-task models of its backbone and head")
