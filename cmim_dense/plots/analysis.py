"""Analysis figures of pretrained backbones: t-SNE of binary activations (CMIM paper Fig. 3),
class-sorted correlation maps (Fig. 4a-d) and CMIM hyper-parameter sweeps (Table 3, Fig. 4e-f).

Each ``*_chart`` function computes and writes ``out.png`` and ``out.svg`` (the sweep also
``out.csv``); each ``plot_*`` function only draws.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from ..methods import base_method
from .activations import Activations, class_sorted_correlation, extract_activations
from .common import Skipped, method_colours, new_figure, save_figure
from .sweep import SWEEP_PARAMS, SweepRun, load_sweep, varying_settings
from .tsne import tsne

PARAM_SYMBOLS = {"lambda": "λ", "n_nce": "N"}
PARAM_LABELS = {"lambda": "CMIM loss weight λ", "n_nce": "CMIM negatives per anchor N"}


@dataclass
class ChartResult:
    """What a chart function wrote, skipped, and noted."""

    files: list[Path]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _class_colours(classes: int) -> np.ndarray:
    palette = colormaps["tab10" if classes <= 10 else "tab20"]
    return np.array([palette(k % palette.N) for k in range(classes)])


def _panel_title(activations: Activations) -> str:
    top1 = "" if activations.top1 is None else f" (top-1 {100 * activations.top1:.1f} %)"
    return f"{activations.method}{top1}\n{activations.site}"


def plot_tsne(panels: Sequence[tuple[Activations, Tensor]]) -> Figure:
    """One panel per (activations, 2-D embedding), points coloured by class, one shared legend."""
    figure = new_figure(3.6 * len(panels) + 1.6, 4.0)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    names = panels[0][0].class_names
    colours = _class_colours(len(names))
    for ax, (activations, embedding) in zip(axes, panels):
        points = embedding.numpy()
        ax.scatter(points[:, 0], points[:, 1], c=colours[activations.labels.numpy()], s=9, linewidths=0)
        ax.set_title(_panel_title(activations), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    handles = [Line2D([], [], marker="o", linestyle="none", color=colours[k], label=name)
               for k, name in enumerate(names)]
    figure.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False, title="class")
    figure.suptitle("t-SNE of activations (axes have no units)", fontsize=10)
    return figure


def plot_correlation(panels: Sequence[tuple[Activations, Tensor, Tensor]], kind: str = "pearson") -> Figure:
    """One heatmap per (activations, class-sorted correlation, sorted labels), class blocks outlined,
    one shared symmetric colour scale (the 99th percentile of |r| off the diagonal)."""
    figure = new_figure(4.2 * len(panels) + 1.2, 4.6)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    off_diagonal = torch.cat([c[~torch.eye(len(c), dtype=torch.bool)].abs() for _, c, _ in panels])
    limit = max(float(torch.quantile(off_diagonal.float(), 0.99)), 1e-3) if off_diagonal.numel() else 1.0
    image = None
    for ax, (activations, correlation, labels) in zip(axes, panels):
        image = ax.imshow(correlation.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        classes, counts = torch.unique_consecutive(labels, return_counts=True)
        edges = torch.cumsum(counts, 0).numpy() - 0.5
        for edge in edges[:-1]:
            ax.axhline(edge, color="black", linewidth=0.6)
            ax.axvline(edge, color="black", linewidth=0.6)
        centres = edges - counts.numpy() / 2
        names = [activations.class_names[int(k)] for k in classes]
        ax.set_xticks(centres, names, rotation=90, fontsize=7)
        ax.set_yticks(centres, names, fontsize=7)
        ax.tick_params(length=0)
        ax.set_title(f"{_panel_title(activations)}\n{len(labels)} samples sorted by class", fontsize=10)
    colorbar = figure.colorbar(image, ax=list(axes), shrink=0.8)
    colorbar.set_label(f"{kind} correlation (colour range ±{limit:.2f})")
    return figure


def plot_sweep(runs: Sequence[SweepRun], param: str, xscale: str | None = None) -> Figure:
    """Best top-1 against the swept value, one line per method; a method's run without CMIM is a
    dashed horizontal line of the same colour.  ``xscale`` defaults to log (ticks at the swept values)
    when every value is positive and they span a factor of 10 or more (n_nce grids, the paper's
    λ grid), else linear."""
    swept = [r for r in runs if r.value is not None]
    if not swept:
        raise ValueError("no run with CMIM to plot against its hyper-parameter")
    figure = new_figure(7.5, 4.5)
    ax = figure.add_subplot()
    colours = method_colours([r.method for r in runs])
    for method in sorted({r.method for r in swept}):
        line = [r for r in swept if r.method == method]
        ax.plot([r.value for r in line], [r.top1 for r in line], marker="o", color=colours[base_method(method)],
                label=method)
    for run in (r for r in runs if r.value is None):
        ax.axhline(run.top1, linestyle="--", linewidth=1.2, color=colours[base_method(run.method)],
                   label=f"{run.method} (no CMIM)")
    values = sorted({r.value for r in swept})
    scale = xscale or ("log" if values[0] > 0 and values[-1] >= 10 * values[0] else "linear")
    ax.set_xscale(scale)
    if scale == "log":
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
    ax.set_xlabel(PARAM_LABELS[param] + (" (log scale)" if scale == "log" else ""))
    ax.set_ylabel("best validation top-1 (%)")
    data = sorted({str(r.config.get("data")) for r in runs})
    ax.set_title(f"CMIM {PARAM_SYMBOLS[param]} sweep ({', '.join(data)})", fontsize=11)
    ax.grid(True, linestyle=":", linewidth=0.6, alpha=0.7)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, borderaxespad=0.0)
    return figure


def tsne_chart(checkpoints: Sequence[str], out: str | Path, site: str = "layer4", samples: int = 500,
               perplexity: float = 30.0, iterations: int = 1000, seed: int = 0, data: str | None = None) -> ChartResult:
    """t-SNE of each checkpoint's activations at ``site`` on the same validation images."""
    panels = []
    for path in checkpoints:
        activations = extract_activations(path, site, samples, data)
        panels.append((activations, tsne(activations.features, perplexity, iterations, seed)))
    return ChartResult(save_figure(plot_tsne(panels), out))


def correlation_chart(checkpoints: Sequence[str], out: str | Path, site: str = "layer4", samples: int = 200,
                      kind: str = "pearson", data: str | None = None) -> ChartResult:
    """Class-sorted correlation maps of each checkpoint's activations at ``site``."""
    panels = []
    for path in checkpoints:
        activations = extract_activations(path, site, samples, data)
        panels.append((activations, *class_sorted_correlation(activations.features, activations.labels, kind)))
    return ChartResult(save_figure(plot_correlation(panels, kind), out))


def sweep_chart(inputs: Sequence[str | Path], out: str | Path, param: str = "lambda",
                xscale: str | None = None) -> ChartResult:
    """Best top-1 against ``param`` from pretraining run folders; writes the points to ``out.csv`` too."""
    runs, skipped = load_sweep(inputs, param)
    if not runs:
        reasons = "; ".join(str(s) for s in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        raise ValueError(f"no readable pretraining run ({reasons or 'no inputs'})")
    files = save_figure(plot_sweep(runs, param, xscale), out)
    table = Path(out).parent / f"{Path(out).name}.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", SWEEP_PARAMS[param], "top1", "run"])
        writer.writerows([r.method, "" if r.value is None else r.value, r.top1, r.path] for r in runs)
    return ChartResult(files + [table], skipped, varying_settings(runs, param))
