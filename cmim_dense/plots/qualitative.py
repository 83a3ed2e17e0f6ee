"""Qualitative NYUD-v2 results (the CMIM paper's Fig. 5a): each image with every task's ground truth and prediction.

One figure row per (test image, backbone), the backbones of one image next to each other;
columns: the image, then a ground-truth and a predicted panel per task, drawn by the task's
``display`` kind: class maps in the NYUD-v2 palette (void black), depth in metres on one colour
scale shared by every depth panel with a colorbar (invalid depth white), unit normals as RGB =
(n + 1) / 2 (x right = red, y down = green, z forward = blue; invalid white).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..data.nyud_meta import IGNORE_INDEX
from ..dense import Display
from .common import new_figure
from .palette import class_names, colorize, nyud_palette

DEPTH_COLORMAP = "viridis"


@dataclass(frozen=True)
class TaskPanels:
    """One task's ground truth and prediction on one image, as drawn: class ids (0-based, 255
    void), depth (metres, <= 0 invalid) or unit normals (H, W, 3; all zero invalid)."""

    title: str
    display: Display
    truth: np.ndarray
    prediction: np.ndarray


@dataclass(frozen=True)
class QualitativeSample:
    """One test image and one backbone's predictions on it, one :class:`TaskPanels` per task."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    tasks: Sequence[TaskPanels]


@dataclass(frozen=True)
class QualitativeRow:
    """A backbone's name and its samples, one per chosen test image (same images, same order, in every row)."""

    name: str
    samples: Sequence[QualitativeSample]


def check_sample(sample: QualitativeSample, where: str) -> None:
    """One-line errors for arrays of the wrong shape or type."""
    image = np.asarray(sample.image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where}: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    for panels in sample.tasks:
        expected = image.shape[:2] + ((3,) if panels.display == "unit_vectors" else ())
        for name, array in (("ground truth", panels.truth), ("prediction", panels.prediction)):
            if np.shape(array) != expected:
                raise ValueError(f"{where}: {panels.title} {name} is {np.shape(array)}, expected {expected}")


def depth_limits(rows: Sequence[QualitativeRow]) -> tuple[float, float] | None:
    """The range of every valid depth (ground truth and predicted) shown, for one shared colour
    scale; None when no depth is shown."""
    values = [np.asarray(array, dtype=float) for row in rows for s in row.samples for p in s.tasks
              if p.display == "metres" for array in (p.truth, p.prediction)]
    if not values:
        return None
    valid = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values])
    if valid.size == 0:
        raise ValueError("no valid (positive, finite) depth to show")
    return float(valid.min()), float(valid.max())


def normals_rgb(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) -> RGB in [0, 1]: (n + 1) / 2, white where the vector is zero (invalid)."""
    normals = np.asarray(normals, dtype=float)
    rgb = np.clip((normals + 1.0) / 2.0, 0.0, 1.0)
    rgb[~np.any(normals != 0, axis=-1)] = 1.0
    return rgb


def qualitative_grid(rows: Sequence[QualitativeRow], classes: int = 40,
                     depth_range: tuple[float, float] | None = None, legend: bool = True,
                     ignore_index: int = IGNORE_INDEX) -> Figure:
    """The grid: ``len(rows) * images`` rows of the image and two panels per task, one depth
    colorbar when depth is shown, and (``legend``) the classes that appear in any shown label map."""
    if not rows or not rows[0].samples:
        raise ValueError("qualitative_grid needs at least one row with one sample")
    images = len(rows[0].samples)
    titles = [panels.title for panels in rows[0].samples[0].tasks]
    for row in rows:
        if len(row.samples) != images:
            raise ValueError(f"row {row.name!r} has {len(row.samples)} samples, the first row {images}")
        for j, sample in enumerate(row.samples):
            if [panels.title for panels in sample.tasks] != titles:
                raise ValueError(f"row {row.name!r} image {j + 1} shows other tasks than the first row ({titles})")
            check_sample(sample, f"row {row.name!r} image {j + 1}")
    limits = depth_range or depth_limits(rows)
    norm = Normalize(*limits) if limits else None
    columns = ["image"] + [f"{which} {title}" for title in titles for which in ("GT", "predicted")]
    figure = new_figure(2.3 * len(columns) + 0.8, 1.9 * images * len(rows) + (1.2 if legend else 0.4))
    axes = figure.subplots(images * len(rows), len(columns), squeeze=False)
    present: set[int] = set()
    depth_image, depth_axes = None, []
    for j in range(images):
        for i, row in enumerate(rows):
            sample, panels = row.samples[j], axes[j * len(rows) + i]
            panels[0].imshow(sample.image)
            for k, task in enumerate(sample.tasks):
                for ax, array in zip(panels[1 + 2 * k: 3 + 2 * k], (task.truth, task.prediction)):
                    image = _draw(ax, task.display, array, classes, ignore_index, norm)
                    if task.display == "classes":
                        present.update(int(v) for v in np.unique(array) if v != ignore_index)
                    elif task.display == "metres":
                        depth_image = image
                        depth_axes.append(ax)
            panels[0].set_ylabel(f"{row.name}\nimage {j + 1}", fontsize=9)
            for ax in panels:
                ax.set_xticks([])
                ax.set_yticks([])
    for ax, title in zip(axes[0], columns):
        ax.set_title(title, fontsize=10)
    if depth_image is not None:
        # under the depth columns: beside them it would push the next task's panels aside
        colorbar = figure.colorbar(depth_image, ax=depth_axes, location="bottom", shrink=0.8, aspect=30, pad=0.02)
        colorbar.set_label("depth (m)")
    if any(task.display == "unit_vectors" for task in rows[0].samples[0].tasks):
        figure.text(0.99, 0.005, "normals as RGB = (n + 1) / 2: x right, y down, z forward; white: no ground truth",
                    ha="right", va="bottom", fontsize=8)
    if legend and present:
        palette, names = nyud_palette(classes) / 255.0, class_names(classes)
        handles = [Patch(facecolor=palette[k], edgecolor="0.3", label=names[k]) for k in sorted(present)]
        handles.append(Patch(facecolor="black", label="void (ignored)"))
        figure.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8,
                      frameon=False, title=f"NYUD-v2 {classes}-class palette (classes shown)", title_fontsize=8)
    return figure


def _draw(ax: Axes, display: Display, array: np.ndarray, classes: int, ignore_index: int,
          norm: Normalize | None) -> object:
    """One panel of ``array`` drawn as its ``display`` kind says; returns the image artist."""
    if display == "classes":
        return ax.imshow(colorize(array, classes, ignore_index), interpolation="nearest")
    if display == "unit_vectors":
        return ax.imshow(normals_rgb(array), interpolation="nearest")
    depth = np.asarray(array, dtype=float)
    cmap = colormaps[DEPTH_COLORMAP].with_extremes(bad="white")
    return ax.imshow(np.ma.masked_where(~(np.isfinite(depth) & (depth > 0)), depth), cmap=cmap, norm=norm,
                     interpolation="nearest")
