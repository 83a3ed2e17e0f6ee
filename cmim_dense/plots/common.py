"""Shared plumbing of the figures: finding run files, naming methods and colours, saving figures."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..methods import base_method, list_recipes

FIGURE_FORMATS = ("png", "svg")
FULL_PRECISION_COLOUR = "#222222"


@dataclass(frozen=True)
class Skipped:
    """An input left out of a figure, and why (always reported, never dropped silently)."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def discover_files(inputs: Sequence[str | Path], filename: str) -> tuple[list[Path], list[Skipped]]:
    """The ``filename`` files that ``inputs`` name, and the inputs that name none.

    Each input is a file, a run folder holding ``filename``, a folder of run folders (searched
    recursively; the search stops at the first folder that holds ``filename``) or a glob.
    """
    found: list[Path] = []
    skipped: list[Skipped] = []
    for entry in inputs:
        text = str(entry)
        matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        if not matches:
            skipped.append(Skipped(text, "the pattern matches nothing"))
        for match in matches:
            path = Path(match)
            if path.is_file():
                found.append(path)
            elif path.is_dir():
                inside = _walk_for(path, filename)
                found.extend(inside)
                if not inside:
                    skipped.append(Skipped(str(path), f"no {filename} in this folder or below"))
            else:
                skipped.append(Skipped(str(path), "does not exist"))
    unique = list(dict.fromkeys(path.resolve() for path in found))
    return unique, skipped


def _walk_for(folder: Path, filename: str) -> list[Path]:
    """Every ``filename`` below ``folder``, not descending into a folder that already holds one."""
    hits = []
    for current, subfolders, files in os.walk(folder):
        subfolders.sort()
        if filename in files:
            hits.append(Path(current) / filename)
            subfolders.clear()
    return hits


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """One colour per base method, stable across figures: the registry's order picks it."""
    known = [recipe.name for recipe in list_recipes() if recipe.name != "fp"]
    bases = sorted({base_method(m) for m in methods})
    order = known + [b for b in bases if b not in known]
    palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20"](2 * i + 1) for i in range(10)]
    colours = {}
    for base in bases:
        if base == "fp":
            colours[base] = FULL_PRECISION_COLOUR
        else:
            red, green, blue, _ = palette[order.index(base) % len(palette)]
            colours[base] = f"#{round(255 * red):02x}{round(255 * green):02x}{round(255 * blue):02x}"
    return colours


def distinct_tails(paths: Sequence[str]) -> list[str]:
    """The shortest trailing parts of each path (folders first, then the file name) that tell them apart."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        folder_tails = ["/".join(p[-1 - depth:-1]) for p in parts]
        if len(set(folder_tails)) == len(paths):
            return folder_tails
        full_tails = ["/".join(p[-depth:]) for p in parts]
        if len(set(full_tails)) == len(paths):
            return full_tails
    return [str(p) for p in paths]


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure drawn by Agg (no pyplot, no global state)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, stem: str | Path, formats: Sequence[str] = FIGURE_FORMATS,
                dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` (creating the folder); returns the written paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.parent / f"{stem.name}.{fmt}"
        figure.savefig(path, dpi=dpi)
        written.append(path)
    return written
