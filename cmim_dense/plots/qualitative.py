"""Qualitative NYUD-v2 results (the CMIM paper's Fig. 5a): image, GT and predicted segmentation and depth.

One figure row per (test image, backbone), the backbones of one image next to each other;
columns: image / GT seg / predicted seg / GT depth / predicted depth.  Every depth panel
shares one colour scale with a colorbar in metres; invalid depth (<= 0 or not finite) is white.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..data.nyud_meta import IGNORE_INDEX
from .common import new_figure
from .palette import class_names, colorize, nyud_palette

COLUMNS = ("image", "GT segmentation", "predicted segmentation", "GT depth", "predicted depth")
DEPTH_COLORMAP = "viridis"


@dataclass(frozen=True)
class QualitativeSample:
    """One test image and one backbone's predictions on it (labels 0-based, 255 void; depth in metres)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    gt_label: np.ndarray  # (H, W) int
    pred_label: np.ndarray
    gt_depth: np.ndarray  # (H, W) float, metres
    pred_depth: np.ndarray


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
    for field in ("gt_label", "pred_label", "gt_depth", "pred_depth"):
        shape = np.shape(getattr(sample, field))
        if shape != image.shape[:2]:
            raise ValueError(f"{where}: {field} is {shape}, the image is {image.shape[:2]}")


def depth_limits(rows: Sequence[QualitativeRow]) -> tuple[float, float]:
    """The range of every valid depth (GT and predicted) shown, for one shared colour scale."""
    values = [np.asarray(d, dtype=float) for row in rows for s in row.samples for d in (s.gt_depth, s.pred_depth)]
    valid = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values])
    if valid.size == 0:
        raise ValueError("no valid (positive, finite) depth to show")
    return float(valid.min()), float(valid.max())


def qualitative_grid(rows: Sequence[QualitativeRow], classes: int = 40,
                     depth_range: tuple[float, float] | None = None, legend: bool = True,
                     ignore_index: int = IGNORE_INDEX) -> Figure:
    """The grid: ``len(rows) * images`` rows of the five COLUMNS panels, one depth colorbar, and
    (``legend``) the classes that appear in any shown label map."""
    if not rows or not rows[0].samples:
        raise ValueError("qualitative_grid needs at least one row with one sample")
    images = len(rows[0].samples)
    for row in rows:
        if len(row.samples) != images:
            raise ValueError(f"row {row.name!r} has {len(row.samples)} samples, the first row {images}")
        for j, sample in enumerate(row.samples):
            check_sample(sample, f"row {row.name!r} image {j + 1}")
    low, high = depth_range or depth_limits(rows)
    norm = Normalize(low, high)
    cmap = colormaps[DEPTH_COLORMAP].with_extremes(bad="white")
    figure = new_figure(2.3 * len(COLUMNS) + 0.8, 1.9 * images * len(rows) + (1.2 if legend else 0.4))
    axes = figure.subplots(images * len(rows), len(COLUMNS), squeeze=False)
    present: set[int] = set()
    depth_image = None
    for j in range(images):
        for i, row in enumerate(rows):
            sample, panels = row.samples[j], axes[j * len(rows) + i]
            for label in (sample.gt_label, sample.pred_label):
                present.update(int(v) for v in np.unique(label) if v != ignore_index)
            panels[0].imshow(sample.image)
            panels[1].imshow(colorize(sample.gt_label, classes, ignore_index), interpolation="nearest")
            panels[2].imshow(colorize(sample.pred_label, classes, ignore_index), interpolation="nearest")
            for ax, depth in ((panels[3], sample.gt_depth), (panels[4], sample.pred_depth)):
                depth = np.asarray(depth, dtype=float)
                depth_image = ax.imshow(np.ma.masked_where(~(np.isfinite(depth) & (depth > 0)), depth),
                                        cmap=cmap, norm=norm, interpolation="nearest")
            panels[0].set_ylabel(f"{row.name}\nimage {j + 1}", fontsize=9)
            for ax in panels:
                ax.set_xticks([])
                ax.set_yticks([])
    for ax, title in zip(axes[0], COLUMNS):
        ax.set_title(title, fontsize=10)
    colorbar = figure.colorbar(depth_image, ax=axes[:, 3:].ravel().tolist(), shrink=0.9, aspect=30)
    colorbar.set_label("depth (m)")
    if legend:
        palette, names = nyud_palette(classes) / 255.0, class_names(classes)
        handles = [Patch(facecolor=palette[k], edgecolor="0.3", label=names[k]) for k in sorted(present)]
        handles.append(Patch(facecolor="black", label="void (ignored)"))
        figure.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8,
                      frameon=False, title=f"NYUD-v2 {classes}-class palette (classes shown)", title_fontsize=8)
    return figure
