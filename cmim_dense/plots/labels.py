"""Place point labels so that they overlap neither each other, nor the dots, nor given line segments.

Greedy and deterministic: each label tries eight directions around its dot at growing
distances and takes the first free spot (or the least crowded one); a label moved away from
its dot, or placed diagonally, gets a thin leader line.  Work happens in display pixels on a
drawn figure, so call it after the axes limits and the layout are final.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))
RINGS_PX = (3.0, 12.0, 24.0, 40.0, 60.0)
DIAGONAL_EXTRA_PX = 6.0
PADDING_PX = 2.0


def place_labels(ax: Axes, xy: np.ndarray, texts: Sequence[str], radii_pt: Sequence[float],
                 segments: Sequence[tuple[tuple[float, float], tuple[float, float]]] = (),
                 fontsize: float = 8.0) -> list[Annotation]:
    """Annotate the data points ``xy`` (n, 2) with ``texts``; ``radii_pt`` are the dots' radii in
    points and ``segments`` data-space lines (arrows) to keep clear of."""
    figure = ax.figure
    renderer = figure.canvas.get_renderer()
    px_per_pt = figure.dpi / 72.0
    to_px = ax.transData.transform
    centres = to_px(np.asarray(xy, dtype=float).reshape(-1, 2))
    radii = np.asarray(radii_pt, dtype=float) * px_per_pt
    lines = [(to_px(a), to_px(b)) for a, b in segments]
    frame = ax.get_window_extent(renderer)
    placed: list[tuple[float, float, float, float]] = []
    annotations = []
    for index in np.argsort(-centres[:, 1], kind="stable"):  # from the top down
        half = _half_extent(ax, texts[index], fontsize, renderer)
        best, best_cost = (np.zeros(2), False), np.inf
        for ring, gap in enumerate(RINGS_PX):
            for dx, dy in DIRECTIONS:
                diagonal = dx != 0 and dy != 0
                offset = _offset(np.array([dx, dy], dtype=float), radii[index] + gap + DIAGONAL_EXTRA_PX * diagonal,
                                 half)
                cost = _crowding(_box(centres[index] + offset, half), centres, radii, placed, lines, frame)
                if cost + 1e-3 * ring < best_cost:
                    best, best_cost = (offset, ring > 0 or diagonal), cost + 1e-3 * ring
            if best_cost < 1.0:
                break
        offset, detached = best
        leader = {"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": radii_pt[index]}
        note = ax.annotate(texts[index], xy=tuple(xy[index]), xytext=tuple(offset / px_per_pt),
                           textcoords="offset points", ha="center", va="center", fontsize=fontsize, zorder=5,
                           arrowprops=leader if detached else None)
        note.set_in_layout(False)
        placed.append(_box(centres[index] + offset, half))
        annotations.append(note)
    return annotations


def _half_extent(ax: Axes, text: str, fontsize: float, renderer: RendererBase) -> np.ndarray:
    """Half the width and height of ``text`` in pixels, plus padding."""
    probe = ax.text(0, 0, text, fontsize=fontsize)
    extent = probe.get_window_extent(renderer)
    probe.remove()
    return np.array([extent.width, extent.height]) / 2 + PADDING_PX


def _offset(direction: np.ndarray, distance: float, half: np.ndarray) -> np.ndarray:
    """The label centre's offset from its dot: the label's near edge ``distance`` pixels away."""
    unit = direction / np.linalg.norm(direction)
    return unit * distance + direction * half


def _box(centre: np.ndarray, half: np.ndarray) -> tuple[float, float, float, float]:
    return (centre[0] - half[0], centre[1] - half[1], centre[0] + half[0], centre[1] + half[1])


def _crowding(box: tuple[float, float, float, float], centres: np.ndarray, radii: np.ndarray,
              placed: list[tuple[float, float, float, float]],
              lines: list[tuple[np.ndarray, np.ndarray]], frame: Bbox) -> float:
    """How crowded a candidate box is: 1 + the overlapped fraction per placed label it overlaps,
    1 per dot it touches, 0.5 per line it crosses, 100 if it leaves the axes."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    cost = 0.0
    for other in placed:
        width = min(x1, other[2]) - max(x0, other[0])
        height = min(y1, other[3]) - max(y0, other[1])
        if width > 0 and height > 0:
            cost += 1.0 + width * height / area
    nearest = np.stack([np.clip(centres[:, 0], x0, x1), np.clip(centres[:, 1], y0, y1)], axis=1)
    inside = np.hypot(*(nearest - centres).T) < radii
    cost += float(inside.sum())
    for start, end in lines:
        samples = start + np.linspace(0.0, 1.0, 25)[:, None] * (end - start)
        if np.any((samples[:, 0] > x0) & (samples[:, 0] < x1) & (samples[:, 1] > y0) & (samples[:, 1] < y1)):
            cost += 0.5
    if x0 < frame.x0 or y0 < frame.y0 or x1 > frame.x1 or y1 > frame.y1:
        cost += 100.0
    return cost
