"""A built-in synthetic classification set: procedurally drawn shapes, deterministic by seed.

Each class is a shape (disk, square, ring, plus, X, two triangles, two bars, diamond);
position, size, rotation, colours and noise vary per sample, so the class can only be
read from the shape.  Samples are generated on demand from (seed, split, index): nothing
is downloaded or stored, and the same seed always gives the same images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

SHAPES = ("disk", "square", "ring", "plus", "x", "triangle_up", "triangle_down", "hbar", "vbar", "diamond")
SPLIT_OFFSETS = {"train": 0, "val": 1_000_003}


def shape_mask(shape: str, u: Tensor, v: Tensor) -> Tensor:
    """Boolean mask of ``shape`` on shape-normalised coordinates u, v (unit half-size)."""
    au, av = u.abs(), v.abs()
    if shape == "disk":
        return u * u + v * v < 1.0
    if shape == "square":
        return torch.maximum(au, av) < 0.8
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 < 1.0) & (r2 > 0.4)
    if shape == "plus":
        return ((au < 0.3) & (av < 1.0)) | ((av < 0.3) & (au < 1.0))
    if shape == "x":
        return shape_mask("plus", (u + v) / math.sqrt(2), (v - u) / math.sqrt(2))
    if shape == "triangle_up":
        return (v < 0.8) & (au < (v + 1.0) * 0.55)
    if shape == "triangle_down":
        return shape_mask("triangle_up", u, -v)
    if shape == "hbar":
        return (av < 0.3) & (au < 1.0)
    if shape == "vbar":
        return (au < 0.3) & (av < 1.0)
    if shape == "diamond":
        return au + av < 1.0
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def render_sample(label: int, size: int, generator: torch.Generator) -> Tensor:
    """One (3, size, size) float image in [0, 1] showing shape ``label``."""
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    scale = 0.35 + 0.25 * rand(1).item()
    cx, cy = (rand(2) * (1.6 - 2 * scale) - (0.8 - scale)).tolist()
    angle = (rand(1).item() - 0.5) * math.radians(30)
    axis = torch.linspace(-1.0, 1.0, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    dx, dy = (x - cx) / scale, (y - cy) / scale
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    mask = shape_mask(SHAPES[label], u, v).float()
    background = rand(3, 1, 1)
    contrast = (0.35 + 0.35 * rand(3, 1, 1)) * torch.where(background > 0.5, -1.0, 1.0)
    image = background + contrast * mask + 0.06 * torch.randn(3, size, size, generator=generator)
    return image.clamp_(0.0, 1.0)


class SyntheticShapes(Dataset):
    """``num_samples`` images of ``num_classes`` (<= 10) shapes, balanced, normalised to
    roughly zero mean and unit variance.  ``split`` (train/val) selects disjoint samples."""

    mean = 0.5
    std = 0.25

    def __init__(
        self, num_samples: int, num_classes: int = 10, image_size: int = 32, seed: int = 0, split: str = "train"
    ) -> None:
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
        self.num_samples, self.num_classes, self.image_size = num_samples, num_classes, image_size
        self.seed, self.split = seed, split
        self.classes = list(SHAPES[:num_classes])

    def __len__(self) -> int:
        return self.num_samples

    @property
    def targets(self) -> list[int]:
        """Every sample's class (sample i shows shape i mod num_classes)."""
        return [index % self.num_classes for index in range(self.num_samples)]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        label = index % self.num_classes
        generator = torch.Generator().manual_seed(self.seed * 2_000_003 + SPLIT_OFFSETS[self.split] + index)
        image = render_sample(label, self.image_size, generator)
        return (image - self.mean) / self.std, label
