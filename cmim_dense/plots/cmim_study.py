"""The CMIM evidence study's report: learning curves (the paper's Fig. 4(g)), the CMIM term's
curves, final validation top-1 and transfer to the built-in rooms as mean ± 95 % CI over seeds,
and the paired CMIM gain (same seed, lambda > 0 minus lambda = 0) with its interval.

It reads a study root laid out by the pipeline: ``pretrain/RUN[/seed<k>]/{config.json,
metrics.jsonl}`` and the transfer fine-tunes of the same backbone under
``finetune/RUN[/seed<k>]/{seg,depth}/metrics.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps

from ..methods import base_method
from ..stats import Interval, mean_interval, paired_difference
from .common import discover_files, new_figure, save_figure

TRANSFER = {"miou": ("seg", "mIoU (%)", 100.0), "neg_log_rmse": ("depth", "-ln RMSE", 1.0)}


@dataclass
class StudyRun:
    """One pretraining of the study (one method, one lambda, one seed) and its transfer metrics."""

    method: str  # base method, e.g. irnet
    lam: float  # CMIM lambda; 0 = the method without CMIM
    seed: int
    history: list[dict[str, Any]]
    transfer: dict[str, float] = field(default_factory=dict)

    def final(self, key: str) -> float:
        return float(self.history[-1][key])

    def curve(self, key: str) -> np.ndarray:
        return np.array([float(record.get(key, math.nan)) for record in self.history])

    def critic_curve(self, stat: str) -> np.ndarray:
        """The mean over tapped sites of ``cmim/SITE/stat`` per epoch (NaN without CMIM)."""
        values = []
        for record in self.history:
            site_values = [v for k, v in record.items() if k.startswith("cmim/") and k.endswith(f"/{stat}")]
            values.append(float(np.mean(site_values)) if site_values else math.nan)
        return np.array(values)


def read_study(root: str | Path) -> list[StudyRun]:
    """Every finished pretraining under ``root/pretrain`` with the fine-tunes that mirror its folder."""
    root = Path(root)
    runs = []
    paths, _ = discover_files([root / "pretrain"], "metrics.jsonl")
    for path in paths:
        config = json.loads((path.parent / "config.json").read_text())
        history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not history:
            continue
        cmim = config.get("cmim") or {}
        run = StudyRun(base_method(config["method"]), float(cmim.get("lam", 0.0)), int(config["seed"]), history)
        relative = path.parent.resolve().relative_to((root / "pretrain").resolve())
        for metric, (task, _, _) in TRANSFER.items():
            metrics = root / "finetune" / relative / task / "metrics.json"
            if metrics.is_file():
                value = json.loads(metrics.read_text()).get(metric)
                if value is not None:
                    run.transfer[metric] = float(value)
        runs.append(run)
    return sorted(runs, key=lambda r: (r.method, r.lam, r.seed))


def groups(runs: Sequence[StudyRun]) -> dict[tuple[str, float], list[StudyRun]]:
    """(method, lambda) -> its runs in seed order."""
    grouped: dict[tuple[str, float], list[StudyRun]] = {}
    for run in runs:
        grouped.setdefault((run.method, run.lam), []).append(run)
    return grouped


@dataclass(frozen=True)
class StudyRow:
    """One (method, lambda) of the study: final-epoch top-1 and transfer metrics over its seeds."""

    method: str
    lam: float
    seeds: tuple[int, ...]
    val_top1: Interval
    train_top1: Interval
    transfer: dict[str, Interval]
    gain: dict[str, Interval]  # paired difference against lambda = 0 (empty for lambda = 0)


def summarize(runs: Sequence[StudyRun]) -> list[StudyRow]:
    """One row per (method, lambda): final val/train top-1, transfer metrics, paired gains over lambda = 0."""
    grouped = groups(runs)
    rows = []
    for (method, lam), members in grouped.items():
        baseline = {r.seed: r for r in grouped.get((method, 0.0), [])}
        transfer = {m: mean_interval([r.transfer[m] for r in members if m in r.transfer])
                    for m in TRANSFER if any(m in r.transfer for r in members)}
        gain: dict[str, Interval] = {}
        if lam > 0 and baseline:
            metrics = {"val_top1": lambda r: r.final("val_top1"), **{m: (lambda r, m=m: r.transfer.get(m))
                                                                      for m in TRANSFER}}
            for name, read in metrics.items():
                base_values = {s: read(r) for s, r in baseline.items() if read(r) is not None}
                twin_values = {r.seed: read(r) for r in members if read(r) is not None}
                if set(base_values) & set(twin_values):
                    gain[name] = paired_difference(base_values, twin_values).interval
        rows.append(StudyRow(method, lam, tuple(r.seed for r in members),
                             mean_interval([r.final("val_top1") for r in members]),
                             mean_interval([r.final("train_top1") for r in members]), transfer, gain))
    return rows


def study_table(rows: Sequence[StudyRow]) -> str:
    """Markdown: each metric as mean ± 95 % CI over seeds, and the paired CMIM gains."""
    lines = ["| method | lambda | seeds | train top-1 (%) | val top-1 (%) | transfer seeds | mIoU (%) | -ln RMSE |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        transfer = [row.transfer[m].format(scale, 3 if scale == 1.0 else 1) if m in row.transfer else ""
                    for m, (_, _, scale) in TRANSFER.items()]
        transferred = max((row.transfer[m].n for m in row.transfer), default=0)
        lines.append(f"| {row.method} | {row.lam:g} | {len(row.seeds)} | {row.train_top1.format(100, 1)} | "
                     f"{row.val_top1.format(100, 1)} | {transferred} | {' | '.join(transfer)} |")
    lines += ["", "Paired CMIM gain (same seed, lambda minus lambda = 0):", "",
              "| method | lambda | val top-1 (pp) | mIoU (pp) | -ln RMSE |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        if not row.gain:
            continue
        cells = [row.gain[name].format(scale, digits, signed=True) if name in row.gain else ""
                 for name, scale, digits in (("val_top1", 100, 1), ("miou", 100, 1), ("neg_log_rmse", 1, 3))]
        lines.append(f"| {row.method} | {row.lam:g} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _band(ax: Any, x: np.ndarray, curves: np.ndarray, colour: str, style: str, label: str | None,
          bounds: tuple[float, float] = (-np.inf, np.inf)) -> None:
    """The mean curve over seeds and, with two or more seeds, its 95 % interval as a band (clipped
    to the quantity's range ``bounds``), over the epochs every seed measured (a run validated
    every N epochs has a value every N epochs)."""
    measured = np.isfinite(curves).all(axis=0)
    x, curves = x[measured], curves[:, measured]
    mean = curves.mean(axis=0)
    ax.plot(x, mean, style, color=colour, label=label, lw=1.5, marker="." if len(x) < 30 else None)
    if curves.shape[0] > 1:
        half = np.array([mean_interval(column).half_width for column in curves.T])
        ax.fill_between(x, np.clip(mean - half, *bounds), np.clip(mean + half, *bounds), color=colour, alpha=0.15,
                        lw=0)


def study_figure(runs: Sequence[StudyRun]) -> Any:
    """Per method: train (dashed) and val (solid) top-1 per epoch for each lambda (Fig. 4(g)), the
    CMIM term, and the mean positive (solid) and negative (dotted) critic over the tapped sites."""
    grouped = groups(runs)
    methods = sorted({method for method, _ in grouped})
    lambdas = sorted({lam for _, lam in grouped})
    colours = {lam: colormaps["viridis"](0.85 * i / max(len(lambdas) - 1, 1)) for i, lam in enumerate(lambdas)}
    seeds = sorted({len(members) for members in grouped.values()})
    figure = new_figure(13, 3.4 * len(methods))
    axes = figure.subplots(len(methods), 3, squeeze=False)
    for row, method in enumerate(methods):
        for lam in lambdas:
            members = grouped.get((method, lam))
            if not members:
                continue
            length = min(len(r.history) for r in members)
            x = np.arange(1, length + 1)
            stack = lambda key, rs=members, n=length: np.stack([r.curve(key)[:n] for r in rs])  # noqa: E731
            critic = lambda stat, rs=members, n=length: np.stack([r.critic_curve(stat)[:n] for r in rs])  # noqa: E731
            label = f"lambda {lam:g}"
            _band(axes[row, 0], x, 100 * stack("train_top1"), colours[lam], "--", None, (0.0, 100.0))
            _band(axes[row, 0], x, 100 * stack("val_top1"), colours[lam], "-", label, (0.0, 100.0))
            if lam > 0:
                _band(axes[row, 1], x, stack("train_cmim") / lam, colours[lam], "-", label, (0.0, np.inf))
                _band(axes[row, 2], x, critic("positive"), colours[lam], "-", label, (1e-4, 1.0))
                _band(axes[row, 2], x, critic("negative"), colours[lam], ":", None, (1e-4, 1.0))
        axes[row, 0].set(title=f"{method}: top-1 (dashed train, solid val)", xlabel="epoch", ylabel="top-1 (%)")
        axes[row, 1].set(title=f"{method}: CMIM term / lambda", xlabel="epoch", ylabel="sum_k w_k L_NCE^k")
        axes[row, 2].set(title=f"{method}: mean critic h (solid pos., dotted neg.)", xlabel="epoch",
                         ylabel="h", yscale="log")
        for ax in axes[row]:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    spread = "bands: 95 % CI over seeds" if max(seeds, default=1) > 1 else "1 seed: no intervals"
    figure.suptitle(f"CMIM evidence study ({', '.join(str(n) for n in seeds)} seed(s) per curve; {spread})")
    return figure


def cmim_study_report(root: str | Path, out: str | Path | None = None) -> tuple[list[StudyRow], list[Path]]:
    """Read the study under ``root``; write ``OUT.md`` (tables) and ``OUT.png``/``.svg`` (curves)."""
    runs = read_study(root)
    if not runs:
        raise ValueError(f"{root}: no finished pretraining (metrics.jsonl) under pretrain/")
    stem = Path(out) if out is not None else Path(root) / "cmim_study"
    rows = summarize(runs)
    written = save_figure(study_figure(runs), stem)
    table = stem.parent / f"{stem.name}.md"
    table.write_text(study_table(rows))
    return rows, [*written, table]
