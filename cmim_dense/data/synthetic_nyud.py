"""A built-in synthetic NYUD-v2: procedurally rendered indoor scenes, written as the official .mat.

Each frame is ray-cast through a pinhole camera (focal length scaled from NYU's 518.9 px at
640 wide) standing in a box-shaped room: floor, ceiling, back and side walls, a door, a window
and a picture on the walls, and furniture-like boxes on the floor (bed, table, chair, sofa,
cabinet, bookshelf, clutter).  Depth is the z-distance in metres of the first surface hit, so
it is exactly what a depth camera measures; labels are raw NYUD-v2 ids (1..894, chosen through
the shipped 894 -> 40 table for each class name) with some void (0) on object boundaries, as
in the hand-labelled real frames; ``rawDepths`` adds Kinect-like holes (0 = missing).  Every
class has its own colour, texture and noise, and surfaces are shaded by orientation and
distance, so both tasks are learnable but not trivial.  Deterministic in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from .nyud_mat import write_labeled_mat
from .nyud_meta import nyud_meta
from .nyud_prepare import is_prepared, prepare_nyud

# 40-class names used in the scenes, and each one's base colour (RGB in [0, 1]) and texture.
CLASS_LOOK: dict[str, tuple[tuple[float, float, float], str]] = {
    "wall": ((0.78, 0.74, 0.66), "plain"),
    "floor": ((0.45, 0.32, 0.22), "planks"),
    "ceiling": ((0.92, 0.92, 0.90), "plain"),
    "door": ((0.55, 0.38, 0.25), "panels"),
    "window": ((0.55, 0.75, 0.95), "grid"),
    "picture": ((0.80, 0.25, 0.20), "noise"),
    "bed": ((0.35, 0.45, 0.75), "plain"),
    "table": ((0.60, 0.45, 0.30), "planks"),
    "chair": ((0.25, 0.55, 0.30), "plain"),
    "sofa": ((0.55, 0.20, 0.45), "noise"),
    "cabinet": ((0.90, 0.85, 0.60), "panels"),
    "bookshelf": ((0.40, 0.25, 0.15), "stripes"),
    "otherprop": ((0.85, 0.55, 0.10), "noise"),
}
FURNITURE = {  # class: (width, height, depth) ranges in metres
    "bed": ((1.4, 2.0), (0.45, 0.65), (1.8, 2.1)),
    "table": ((0.8, 1.6), (0.70, 0.80), (0.6, 1.0)),
    "chair": ((0.4, 0.5), (0.80, 1.00), (0.4, 0.5)),
    "sofa": ((1.5, 2.2), (0.70, 0.90), (0.8, 1.0)),
    "cabinet": ((0.5, 1.0), (1.2, 2.0), (0.4, 0.6)),
    "bookshelf": ((0.8, 1.2), (1.6, 2.1), (0.3, 0.4)),
    "otherprop": ((0.2, 0.4), (0.2, 0.4), (0.2, 0.4)),
}


def raw_ids() -> dict[str, int]:
    """For each scene class, a raw NYUD-v2 id (1..894) that the shipped table maps to it."""
    meta = nyud_meta()
    out = {}
    for name in CLASS_LOOK:
        target = meta.names40.index(name) + 1
        out[name] = next(raw for raw in range(1, len(meta.lut40)) if meta.lut40[raw] == target)
    return out


@dataclass
class Surface:
    """A surface hit: z-depth per pixel (inf where missed), unit normal, and class name."""

    depth: np.ndarray
    normal: np.ndarray
    name: str


def _plane(axis: int, offset: float, rays: np.ndarray, name: str, normal: tuple[float, float, float]) -> Surface:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / rays[axis]
    return Surface(np.where(t > 0, t, np.inf), np.array(normal), name)


def _box(lo: np.ndarray, hi: np.ndarray, rays: np.ndarray, name: str) -> tuple[Surface, np.ndarray]:
    """Slab-method ray/box intersection; also returns which axis the entry face is normal to."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = lo[:, None, None] / rays
        t2 = hi[:, None, None] / rays
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    near = np.nan_to_num(near, nan=-np.inf)
    far = np.nan_to_num(far, nan=np.inf)
    enter, exit_ = near.max(axis=0), far.min(axis=0)
    hit = (enter <= exit_) & (enter > 0)
    return Surface(np.where(hit, enter, np.inf), np.zeros(3), name), near.argmax(axis=0)


def _texture(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A brightness pattern in [-1, 1] over surface coordinates (metres)."""
    if kind == "planks":
        return 0.5 * np.sign(np.sin(u * 12.0)) * (np.abs(np.sin(u * 12.0)) > 0.95)
    if kind == "stripes":
        return np.sign(np.sin(v * 25.0))
    if kind == "grid":
        return -((np.abs(np.sin(u * 8.0)) > 0.9) | (np.abs(np.sin(v * 8.0)) > 0.9)).astype(float)
    if kind == "panels":
        return 0.6 * ((np.abs(np.sin(v * 4.0)) > 0.95) | (np.abs(np.sin(u * 4.0)) > 0.97))
    if kind == "noise":
        return rng.uniform(-1, 1) * np.sin(u * 9.0 + 3 * np.sin(v * 7.0))
    return np.zeros_like(u)


def render_scene(height: int, width: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One frame: image (H, W, 3) uint8, depth (H, W) float32 m, raw_depth with holes, labels (H, W) raw ids."""
    ids = raw_ids()
    focal = 518.858 * width / 640.0
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u + 0.5 - width / 2) / focal, (v + 0.5 - height / 2) / focal, np.ones_like(u)])
    # camera pitch: look slightly down, as a hand-held Kinect usually does
    pitch = rng.uniform(0.0, 0.25)
    cos_p, sin_p = np.cos(pitch), np.sin(pitch)
    rays = np.stack([rays[0], cos_p * rays[1] + sin_p * rays[2], -sin_p * rays[1] + cos_p * rays[2]])
    camera_height, room_height = rng.uniform(1.2, 1.6), rng.uniform(2.5, 3.0)
    left, right, back = -rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0), rng.uniform(3.5, 7.0)
    walls = [
        _plane(1, camera_height, rays, "floor", (0, -1, 0)),
        _plane(1, camera_height - room_height, rays, "ceiling", (0, 1, 0)),
        _plane(2, back, rays, "wall", (0, 0, -1)),
        _plane(0, left, rays, "wall", (1, 0, 0)),
        _plane(0, right, rays, "wall", (-1, 0, 0)),
    ]
    surfaces = list(walls)
    normals: list[np.ndarray] = []
    for _ in range(rng.integers(2, 6)):
        name = str(rng.choice(list(FURNITURE)))
        (w0, w1), (h0, h1), (d0, d1) = FURNITURE[name]
        size = np.array([rng.uniform(w0, w1), rng.uniform(h0, h1), rng.uniform(d0, d1)])
        x = rng.uniform(left + size[0] / 2, right - size[0] / 2) if right - left > size[0] else 0.0
        z = rng.uniform(1.5 + size[2] / 2, back - size[2] / 2) if back - 1.5 > size[2] else back - size[2] / 2
        lo = np.array([x - size[0] / 2, camera_height - size[1], z - size[2] / 2])
        hi = np.array([x + size[0] / 2, camera_height, z + size[2] / 2])
        surface, axis = _box(lo, hi, rays, name)
        surfaces.append(surface)
        normals.append(axis)
    stack = np.stack([s.depth for s in surfaces])
    nearest = stack.argmin(axis=0)
    # the ray parameter of the hit is the camera-frame z-depth: camera rays have z = 1 before the pitch
    depth = np.take_along_axis(stack, nearest[None], 0)[0]
    points = rays * depth  # hit points in room coordinates
    names = [s.name for s in surfaces]
    label_names = np.array(names, dtype=object)[nearest]
    # wall decorations: a door and a window on the back wall, a picture on a side wall
    decorations = [("door", rng.uniform(left + 0.1, right - 1.0), 0.9, 2.0, 0.0),
                   ("window", rng.uniform(left + 0.2, right - 1.4), 1.2, 1.0, 0.9)]
    wall_pixels = (nearest == 2)
    for name, x0, w, h, bottom in decorations:
        top = camera_height - bottom - h
        inside = wall_pixels & (points[0] >= x0) & (points[0] <= x0 + w) & (points[1] >= top) \
            & (points[1] <= camera_height - bottom)
        label_names[inside] = name
    side = 3 if rng.random() < 0.5 else 4
    z0 = rng.uniform(1.5, max(back - 1.0, 1.6))
    picture = (nearest == side) & (points[2] >= z0) & (points[2] <= z0 + 0.8) \
        & (points[1] >= camera_height - 1.9) & (points[1] <= camera_height - 1.3)
    label_names[picture] = "picture"
    # shading: Lambert-like by surface orientation, darker with distance, per-class texture
    normal = np.zeros((3, height, width))
    for k, surface in enumerate(surfaces):
        mask = nearest == k
        if k < len(walls):
            normal[:, mask] = surface.normal[:, None]
        else:
            axis = normals[k - len(walls)][mask]
            n = np.zeros((3, mask.sum()))
            n[axis, np.arange(mask.sum())] = -np.sign(rays[axis, mask])
            normal[:, mask] = n
    light = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])
    shade = 0.55 + 0.35 * np.abs(np.einsum("c,chw->hw", light, normal))
    shade *= np.clip(1.15 - 0.06 * depth, 0.5, 1.0)
    image = np.zeros((height, width, 3))
    for name, (colour, texture) in CLASS_LOOK.items():
        mask = label_names == name
        if not mask.any():
            continue
        tint = np.clip(np.array(colour) + rng.normal(0, 0.05, 3), 0, 1)
        pattern = _texture(texture, points[0][mask] + points[2][mask], points[1][mask], rng)
        image[mask] = tint * (1.0 + 0.15 * pattern)[:, None]
    image *= shade[..., None]
    image += rng.normal(0, 0.03, image.shape)
    image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    labels = np.vectorize(ids.__getitem__, otypes=[np.int64])(label_names)
    edges = np.zeros_like(labels, dtype=bool)
    edges[1:] |= labels[1:] != labels[:-1]
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    labels[edges & (rng.random(labels.shape) < 0.7)] = 0
    raw = depth.copy()
    raw[(rng.random(raw.shape) < 0.02) | (depth > 6.5)] = 0.0  # dropouts and out-of-range
    return {"image": image, "depth": depth.astype(np.float32), "raw_depth": raw.astype(np.float32), "labels": labels}


def make_synthetic_nyud(folder: str | Path, train: int = 160, test: int = 60, height: int = 96, width: int = 128,
                        seed: int = 0) -> tuple[Path, Path]:
    """Render ``train + test`` frames into ``folder``/nyu_depth_v2_labeled.mat (official v7.3 layout)
    and a ``splits.mat`` of the official form; returns both paths."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    frames = [render_scene(height, width, rng) for _ in range(train + test)]
    stacked = {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}
    mat = folder / "nyu_depth_v2_labeled.mat"
    write_labeled_mat(mat, stacked["image"], stacked["depth"], stacked["labels"], stacked["raw_depth"],
                      names=nyud_meta().raw_names)
    order = rng.permutation(train + test) + 1
    splits = folder / "splits.mat"
    scipy.io.savemat(str(splits), {"trainNdxs": np.sort(order[:train]).astype(np.uint16)[:, None],
                                   "testNdxs": np.sort(order[train:]).astype(np.uint16)[:, None]})
    return mat, splits


def ensure_synthetic_nyud(root: str | Path, train: int = 160, test: int = 60, height: int = 96, width: int = 128,
                          seed: int = 0, progress: bool = False) -> Path:
    """The prepared layout of the built-in synthetic NYUD-v2 under ``root``, rendered and prepared on first use."""
    folder = Path(root) / f"synthetic-{train}+{test}-{height}x{width}-seed{seed}"
    prepared = folder / "prepared"
    if not is_prepared(prepared):
        mat, splits = make_synthetic_nyud(folder, train, test, height, width, seed)
        prepare_nyud(mat, prepared, splits, force=prepared.exists(), progress=progress)
    return prepared
