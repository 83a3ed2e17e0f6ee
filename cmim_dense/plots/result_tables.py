"""The results tables of fine-tuning runs and their paired differences.

One row per backbone (:class:`~.finetune_results.BackbonePoint`, its seeds gathered), one column
per metric of every task the runs have: top-1, each task's headline, then the tasks' other
columns (a backbone without a task's run shows '–').  Each metric is the mean over the seeds ±
the half-width of its 95 % Student-t interval (:mod:`cmim_dense.stats`); further tables give
the paired differences, seed by seed, of each ``+cmim`` backbone and its base method and of each
binary head and the full-precision head over the same backbones (:data:`PAIRINGS`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..dense import TASKS, get_task
from ..stats import LEVEL, Interval, PairedDifference, paired_difference, seed_names, sorted_seeds
from .finetune_results import (BackbonePoint, cmim_partners, distillation_partners, head_partners, multi_task_partners,
                               reported_metrics, shown_tasks, table_metric)

DIFFERENCE_COLUMNS = ("twin", "base", "metric", "n_seeds", "mean", "ci95", "seeds", "differences")


@dataclass(frozen=True)
class Pairing:
    """A kind of paired difference: which point is paired with which (``partners``: twin index ->
    base index, or why it has none), and how the tables name it (``name``: the CSV's
    ``STEM_NAME_differences.csv``)."""

    name: str
    title: str
    column: str
    explanation: str
    partners: Callable[[Sequence[BackbonePoint]], dict[int, int | str]]


PAIRINGS = (
    Pairing("cmim", "Paired CMIM differences", "+CMIM − base",
            "Each +CMIM backbone minus its base method's, seed by seed (the backbones of the same seed)",
            cmim_partners),
    Pairing("binary_head", "Paired binary-head differences", "binary head − FP head",
            "Each binary head minus the full-precision head over the same backbones, seed by seed", head_partners),
    Pairing("distillation", "Paired distillation differences", "distilled − trained alone",
            "Each head distilled from the full-precision head (--head-teacher) minus the same head trained "
            "alone over the same backbones, seed by seed", distillation_partners),
    Pairing("multi_task", "Paired multi-task differences", "multi-task − single-task",
            "Each multi-task model's heads minus the single-task models' over the same backbones, seed by seed",
            multi_task_partners),
)


@dataclass(frozen=True)
class PointDifference:
    """A twin point minus its base point (a ``+cmim`` backbone and its method, a binary head and the
    full-precision head), seed by seed, per reported metric both have."""

    pairing: str  # the Pairing's name
    twin: str  # labels
    base: str
    metrics: dict[str, PairedDifference]
    seeds: tuple[int | None, ...]  # the seeds both points have, in order


def paired_differences(points: Sequence[BackbonePoint]) -> tuple[list[PointDifference], list[str]]:
    """For each pairing of :data:`PAIRINGS`, each twin point minus its base point, seed by seed, per
    metric, with the 95 % interval of the mean difference; and notes on twins without a partner (or
    without a metric in common) and on seeds that only one side has (left out)."""
    differences, notes = [], []
    for pairing in PAIRINGS:
        for index, partner in pairing.partners(points).items():
            twin = points[index]
            if isinstance(partner, str):
                notes.append(f"{twin.label}: no paired difference, {partner}")
                continue
            base = points[partner]
            common = set(base.seeds) & set(twin.seeds)
            if not common:
                notes.append(f"{twin.label} − {base.label}: no seed in common "
                             f"({seed_names(twin.seeds)} vs {seed_names(base.seeds)})")
                continue
            metrics = {}
            for metric in reported_metrics(base.runs + twin.runs):
                if metric == "top1" and base.backbone == twin.backbone:
                    continue  # one backbone under two heads: its top-1 differs by nothing
                base_values, twin_values = base.seed_values(metric), twin.seed_values(metric)
                if set(base_values) & set(twin_values):
                    metrics[metric] = paired_difference(base_values, twin_values)
            if not metrics:
                notes.append(f"{twin.label} − {base.label}: no metric in common")
                continue
            unpaired = set(base.seeds) ^ set(twin.seeds)
            if unpaired:
                notes.append(f"{twin.label} − {base.label}: seed(s) {seed_names(unpaired)} only on one side, left out")
            differences.append(PointDifference(pairing.name, twin.label, base.label, metrics,
                                               tuple(sorted_seeds(common))))
    return differences, notes


def is_percent(metric: str) -> bool:
    """Whether ``metric`` is a fraction, shown in %."""
    return metric == "top1" or table_metric(metric).percent


def metric_header(metric: str, unit_of_difference: bool = False) -> str:
    """A table header: the metric's label with "(%)" (or "(pp)" for differences) for fractions."""
    label = "top-1" if metric == "top1" else table_metric(metric).label
    return f"{label} ({'pp' if unit_of_difference else '%'})" if is_percent(metric) else label


def _cell(interval: Interval | None, metric: str, signed: bool = False) -> str:
    """A table cell: mean ± 95 % half-width (just the mean with one seed), in % for fractions."""
    if interval is None:
        return "–"
    if is_percent(metric):
        return interval.format(100.0, 2, signed)
    return interval.format(1.0, table_metric(metric).decimals, signed)


def headline_differences(difference: PointDifference) -> str:
    """Each task's headline difference of a paired point, e.g. ``mIoU (pp) +1.85 ± 0.33, −ln RMSE +0.0100``."""
    keys = [get_task(name).headline.key for name in TASKS.registered()]
    return ", ".join(f"{metric_header(key, True)} {_cell(difference.metrics[key].interval, key, signed=True)}"
                     for key in keys if key in difference.metrics)


def _exact(interval: Interval | None, half_width: bool = False) -> float | str:
    """A CSV cell: the exact mean (or half-width; empty when there is none)."""
    if interval is None or (half_width and not interval.has_interval):
        return ""
    return interval.half_width if half_width else interval.mean


def write_tables(points: Sequence[BackbonePoint], stem: str | Path, differences: Sequence[PointDifference] = (),
                 notes: Sequence[str] = ()) -> list[Path]:
    """``stem.csv`` (exact values: fractions, metres; the means over the seeds, then the seeds and
    each mean's 95 % half-width), ``stem.md`` (rounded, in %: ``mean ± half-width`` with several
    seeds; then a section per kind of paired difference and ``notes``) and, per kind of paired
    difference present, ``stem_KIND_differences.csv`` (one row per twin and metric, exact; KIND
    ``cmim``, ``binary_head``, ``distillation`` or ``multi_task``)."""
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
    by_pairing = {pairing: [d for d in differences if d.pairing == pairing.name] for pairing in PAIRINGS}
    for pairing, paired in by_pairing.items():
        if not paired:
            continue
        lines += ["", f"## {pairing.title}", "",
                  f"{pairing.explanation}; mean ± half-width of the {100 * LEVEL:g} % confidence interval of the "
                  "mean difference (Student t over the per-seed differences; 1 seed: no interval). Percentages in "
                  "points.", "",
                  f"| {pairing.column} | seeds | {' | '.join(metric_header(m, True) for m in reported)} |",
                  f"|---|---|{'---:|' * len(reported)}"]
        for d in paired:
            cells = " | ".join(_cell(d.metrics[m].interval if m in d.metrics else None, m, signed=True)
                               for m in reported)
            lines.append(f"| {d.twin} − {d.base} | {seed_names(d.seeds)} | {cells} |")
    if notes:
        lines += [""] + [f"Note: {note}." for note in notes]
    md_path.write_text("\n".join(lines) + "\n")
    files = [csv_path, md_path]
    for pairing, paired in by_pairing.items():
        if paired:
            files.append(_write_differences(paired, stem.parent / f"{stem.name}_{pairing.name}_differences.csv"))
    return files


def _write_differences(differences: Sequence[PointDifference], path: Path) -> Path:
    """One row per twin and metric: the exact mean difference, its half-width, and the per-seed differences."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DIFFERENCE_COLUMNS)
        for d in differences:
            for metric, paired in d.metrics.items():
                writer.writerow([d.twin, d.base, metric, paired.interval.n, paired.interval.mean,
                                 _exact(paired.interval, half_width=True),
                                 ";".join("" if s is None else str(s) for s in paired.seeds),
                                 ";".join(repr(v) for v in paired.differences)])
    return path
