"""A built-in synthetic NYUD-v2: procedurally rendered indoor scenes, written as the official .mat.

Each frame is ray-cast through a pinhole camera (:func:`synthetic_camera`: square pixels, focal
length scaled from NYU's 518.9 px at 640 wide, principal point at the frame's centre) standing
in a box-shaped room: floor, ceiling, back and side walls, a door, a window and a picture on
the walls, and furniture-like boxes on the floor (bed, table, chair, sofa, cabinet, bookshelf,
clutter).  Depth is the z-distance in metres of the first surface hit, so
it is exactly what a depth camera measures; labels are raw NYUD-v2 ids (1..894, chosen through
the shipped 894 -> 40 table for each class name) with some void (0) on object boundaries, as
in the hand-labelled real frames; ``rawDepths`` adds Kinect-like holes (0 = missing).  Surface
normals are exact: each pixel's is that of the plane its ray hits, rotated into the camera frame
of :mod:`cmim_dense.data.normals` (x right, y down, z forward, towards the camera), invalid
(0, 0, 0) where the raw depth has a hole; they are written beside the .mat (``normals.npy``) and
put into the prepared layout instead of a plane fit of the depth.  Every class has its own
colour, texture and noise, and surfaces are shaded by orientation and distance, so the tasks
are learnable but not trivial.  Deterministic in the seed.

The pieces (camera rays, room and box surfaces, wall decorations, textures, painting and
shading) are functions of their own: the pretraining world of
:mod:`cmim_dense.data.synthetic_objects` renders its object images with the same ones.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from ..run_folder import LOCK_NAME, exclusive_lock
from .normals import Intrinsics
from .nyud_mat import write_labeled_mat
from .nyud_meta import nyud_meta
from .nyud_prepare import prepare_nyud, prepared_meta

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
CLASSES = tuple(CLASS_LOOK)  # label maps hold indices into this tuple
FURNITURE = {  # class: (width, height, depth) ranges in metres
    "bed": ((1.4, 2.0), (0.45, 0.65), (1.8, 2.1)),
    "table": ((0.8, 1.6), (0.70, 0.80), (0.6, 1.0)),
    "chair": ((0.4, 0.5), (0.80, 1.00), (0.4, 0.5)),
    "sofa": ((1.5, 2.2), (0.70, 0.90), (0.8, 1.0)),
    "cabinet": ((0.5, 1.0), (1.2, 2.0), (0.4, 0.6)),
    "bookshelf": ((0.8, 1.2), (1.6, 2.1), (0.3, 0.4)),
    "otherprop": ((0.2, 0.4), (0.2, 0.4), (0.2, 0.4)),
}
DECORATIONS = {  # wall rectangles: class: (width, height, height of the bottom edge above the floor) in metres
    "door": (0.9, 2.0, 0.0),
    "window": (1.2, 1.0, 0.9),
    "picture": (0.8, 0.6, 1.3),
}
FOCAL_640 = 518.858  # NYU's Kinect focal length in pixels at 640 wide
LIGHT = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])  # the rooms' light direction
NORMALS_FILE = "normals.npy"  # make_synthetic_nyud's exact normals, beside the .mat


def raw_ids() -> dict[str, int]:
    """For each scene class, a raw NYUD-v2 id (1..894) that the shipped table maps to it."""
    meta = nyud_meta()
    out = {}
    for name in CLASS_LOOK:
        target = meta.names40.index(name) + 1
        out[name] = next(raw for raw in range(1, len(meta.lut40)) if meta.lut40[raw] == target)
    return out


def synthetic_camera(height: int, width: int) -> Intrinsics:
    """The renderer's camera for ``height`` x ``width`` frames: square pixels of focal length
    FOCAL_640 * width / 640, principal point at the frame's centre.  For 4:3 frames it is, up to
    rounding, ``Intrinsics(FOCAL_640, FOCAL_640, 319.5, 239.5, 640, 480).scaled(width, height)``."""
    focal = FOCAL_640 * width / 640.0
    return Intrinsics(focal, focal, width / 2 - 0.5, height / 2 - 0.5, width, height)


def camera_rays(height: int, width: int, pitch: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    """(3, H, W) ray directions of a pinhole camera at the origin in room coordinates (x right,
    y down, z forward), turned down by ``pitch`` and right by ``yaw`` (radians).  Every ray has
    camera-frame z = 1, so the ray parameter of a hit is its z-depth, what a depth camera reads."""
    rays = _pitch(synthetic_camera(height, width).rays(), pitch)
    return _yaw(rays, yaw) if yaw else rays


def room_to_camera(vectors: np.ndarray, pitch: float) -> np.ndarray:
    """(3, ...) room-frame vectors in the frame of the camera of :func:`camera_rays` turned down by
    ``pitch`` (the rooms' camera, which never turns sideways): that rotation undone."""
    return _pitch(vectors, -pitch)


def _pitch(v: np.ndarray, angle: float) -> np.ndarray:
    """(3, ...) vectors rotated about x so that the z axis turns down (to +y) by ``angle``."""
    cos_p, sin_p = np.cos(angle), np.sin(angle)
    return np.stack([v[0], cos_p * v[1] + sin_p * v[2], -sin_p * v[1] + cos_p * v[2]])


def _yaw(v: np.ndarray, angle: float) -> np.ndarray:
    """(3, ...) vectors rotated about y so that the z axis turns right (to +x) by ``angle``."""
    cos_y, sin_y = np.cos(angle), np.sin(angle)
    return np.stack([cos_y * v[0] + sin_y * v[2], v[1], -sin_y * v[0] + cos_y * v[2]])


@dataclass
class Surface:
    """A surface hit: ray parameter (= z-depth) per pixel (inf where missed), unit normal facing
    the camera ((3,) for a plane, (3, H, W) for a box), and class name."""

    depth: np.ndarray
    normal: np.ndarray
    name: str


def plane(axis: int, offset: float, rays: np.ndarray, name: str, normal: tuple[float, float, float]) -> Surface:
    """The plane ``coordinate[axis] == offset``, hit in front of the camera only."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / rays[axis]
    return Surface(np.where(t > 0, t, np.inf), np.array(normal), name)


def box(lo: np.ndarray, hi: np.ndarray, rays: np.ndarray, name: str) -> Surface:
    """Slab-method ray/box intersection; the normal is that of the face each ray enters by."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = lo[:, None, None] / rays
        t2 = hi[:, None, None] / rays
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    near = np.nan_to_num(near, nan=-np.inf)
    far = np.nan_to_num(far, nan=np.inf)
    enter, exit_ = near.max(axis=0), far.min(axis=0)
    hit = (enter <= exit_) & (enter > 0)
    axis = near.argmax(axis=0)
    normal = np.zeros(rays.shape)
    np.put_along_axis(normal, axis[None], -np.sign(np.take_along_axis(rays, axis[None], 0)), 0)
    return Surface(np.where(hit, enter, np.inf), normal, name)


def furniture_box(size: np.ndarray, x: float, z: float, camera_height: float) -> tuple[np.ndarray, np.ndarray]:
    """Corners (lo, hi) of a (width, height, depth) box standing on the floor, centred at x, z."""
    lo = np.array([x - size[0] / 2, camera_height - size[1], z - size[2] / 2])
    hi = np.array([x + size[0] / 2, camera_height, z + size[2] / 2])
    return lo, hi


def room(rays: np.ndarray, camera_height: float, room_height: float, left: float, right: float, back: float,
         front: float | None = None) -> list[Surface]:
    """The room's planes: floor, ceiling, back wall (z = back), left and right walls, and a front
    wall behind the camera (z = front < 0) when given."""
    walls = [
        plane(1, camera_height, rays, "floor", (0, -1, 0)),
        plane(1, camera_height - room_height, rays, "ceiling", (0, 1, 0)),
        plane(2, back, rays, "wall", (0, 0, -1)),
        plane(0, left, rays, "wall", (1, 0, 0)),
        plane(0, right, rays, "wall", (-1, 0, 0)),
    ]
    if front is not None:
        walls.append(plane(2, front, rays, "wall", (0, 0, 1)))
    return walls


def first_hit(surfaces: list[Surface], rays: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest surface, its z-depth, the hit point (3, H, W) and its normal (3, H, W)."""
    stack = np.stack([s.depth for s in surfaces])
    nearest = stack.argmin(axis=0)
    depth = np.take_along_axis(stack, nearest[None], 0)[0]
    normal = np.zeros(rays.shape)
    for k, surface in enumerate(surfaces):
        mask = nearest == k
        normal[:, mask] = surface.normal[:, mask] if surface.normal.ndim == 3 else surface.normal[:, None]
    return nearest, depth, rays * depth, normal


def wall_rect(points: np.ndarray, on_wall: np.ndarray, axis: int, start: float, camera_height: float,
              name: str) -> np.ndarray:
    """Pixels of ``on_wall`` inside decoration ``name`` (a rectangle of DECORATIONS), which spans
    its width from ``start`` along room axis ``axis`` (0 on the back wall, 2 on a side wall)."""
    width, h, bottom = DECORATIONS[name]
    top = camera_height - bottom - h
    return on_wall & (points[axis] >= start) & (points[axis] <= start + width) & (points[1] >= top) \
        & (points[1] <= camera_height - bottom)


def texture(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def paint(labels: np.ndarray, points: np.ndarray, rng: np.random.Generator, tint_spread: float = 0.05,
          phase: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(H, W, 3) albedo: each class of the label map (indices into CLASSES) in its colour, tinted
    per image (normal, ``tint_spread``), times its texture over the hit points (u = x + z, v = y,
    shifted by ``phase``)."""
    image = np.zeros(labels.shape + (3,))
    for index, (colour, kind) in enumerate(CLASS_LOOK.values()):
        mask = labels == index
        if not mask.any():
            continue
        tint = np.clip(np.array(colour) + rng.normal(0, tint_spread, 3), 0, 1)
        pattern = texture(kind, points[0][mask] + points[2][mask] + phase[0], points[1][mask] + phase[1], rng)
        image[mask] = tint * (1.0 + 0.15 * pattern)[:, None]
    return image


def shading(normal: np.ndarray, depth: np.ndarray, light: np.ndarray = LIGHT, ambient: float = 0.55,
            diffuse: float = 0.35) -> np.ndarray:
    """(H, W) brightness: Lambert-like by surface orientation, darker with distance."""
    shade = ambient + diffuse * np.abs(np.einsum("c,chw->hw", light, normal))
    shade *= np.clip(1.15 - 0.06 * depth, 0.5, 1.0)
    return shade


def expose(albedo: np.ndarray, shade: np.ndarray, rng: np.random.Generator, noise: float = 0.03) -> np.ndarray:
    """The (H, W, 3) uint8 photograph: albedo times shading plus Gaussian sensor noise."""
    image = albedo * shade[..., None]
    image += rng.normal(0, noise, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def render_scene(height: int, width: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One frame: image (H, W, 3) uint8, depth (H, W) float32 m, raw_depth with holes, labels (H, W)
    raw ids, normals (H, W, 3) float32 exact unit normals in the camera frame, 0 where raw_depth is."""
    ids = raw_ids()
    # camera pitch: look slightly down, as a hand-held Kinect usually does
    pitch = rng.uniform(0.0, 0.25)
    rays = camera_rays(height, width, pitch=pitch)
    camera_height, room_height = rng.uniform(1.2, 1.6), rng.uniform(2.5, 3.0)
    left, right, back = -rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0), rng.uniform(3.5, 7.0)
    surfaces = room(rays, camera_height, room_height, left, right, back)
    for _ in range(rng.integers(2, 6)):
        name = str(rng.choice(list(FURNITURE)))
        (w0, w1), (h0, h1), (d0, d1) = FURNITURE[name]
        size = np.array([rng.uniform(w0, w1), rng.uniform(h0, h1), rng.uniform(d0, d1)])
        x = rng.uniform(left + size[0] / 2, right - size[0] / 2) if right - left > size[0] else 0.0
        z = rng.uniform(1.5 + size[2] / 2, back - size[2] / 2) if back - 1.5 > size[2] else back - size[2] / 2
        surfaces.append(box(*furniture_box(size, x, z, camera_height), rays, name))
    nearest, depth, points, normal = first_hit(surfaces, rays)
    labels = np.array([CLASSES.index(s.name) for s in surfaces])[nearest]
    # wall decorations: a door and a window on the back wall, a picture on a side wall
    back_wall = nearest == 2
    for name, x0 in (("door", rng.uniform(left + 0.1, right - 1.0)), ("window", rng.uniform(left + 0.2, right - 1.4))):
        labels[wall_rect(points, back_wall, 0, x0, camera_height, name)] = CLASSES.index(name)
    side = 3 if rng.random() < 0.5 else 4
    z0 = rng.uniform(1.5, max(back - 1.0, 1.6))
    labels[wall_rect(points, nearest == side, 2, z0, camera_height, "picture")] = CLASSES.index("picture")
    image = expose(paint(labels, points, rng), shading(normal, depth), rng)
    labels = np.array([ids[name] for name in CLASSES], dtype=np.int64)[labels]
    edges = np.zeros_like(labels, dtype=bool)
    edges[1:] |= labels[1:] != labels[:-1]
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    labels[edges & (rng.random(labels.shape) < 0.7)] = 0
    raw = depth.copy()
    raw[(rng.random(raw.shape) < 0.02) | (depth > 6.5)] = 0.0  # dropouts and out-of-range
    # every surface's normal faces the camera's side (room walls inwards, boxes by the face entered)
    normals = np.where(raw > 0, room_to_camera(normal, pitch), 0.0).transpose(1, 2, 0)
    return {"image": image, "depth": depth.astype(np.float32), "raw_depth": raw.astype(np.float32), "labels": labels,
            "normals": normals.astype(np.float32)}


def make_synthetic_nyud(folder: str | Path, train: int = 160, test: int = 60, height: int = 96, width: int = 128,
                        seed: int = 0) -> tuple[Path, Path]:
    """Render ``train + test`` frames into ``folder``/nyu_depth_v2_labeled.mat (official v7.3 layout),
    a ``splits.mat`` of the official form and the exact normals of every frame, in .mat order, in
    ``folder``/NORMALS_FILE ((N, H, W, 3) float32, for ``prepare_nyud(..., normals=)``); returns
    the paths of the first two."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    frames = [render_scene(height, width, rng) for _ in range(train + test)]
    stacked = {key: np.stack([frame[key] for frame in frames]) for key in frames[0]}
    mat = folder / "nyu_depth_v2_labeled.mat"
    write_labeled_mat(mat, stacked["image"], stacked["depth"], stacked["labels"], stacked["raw_depth"],
                      names=nyud_meta().raw_names)
    np.save(folder / NORMALS_FILE, stacked["normals"])
    order = rng.permutation(train + test) + 1
    splits = folder / "splits.mat"
    scipy.io.savemat(str(splits), {"trainNdxs": np.sort(order[:train]).astype(np.uint16)[:, None],
                                   "testNdxs": np.sort(order[train:]).astype(np.uint16)[:, None]})
    return mat, splits


def ensure_synthetic_nyud(root: str | Path, train: int = 160, test: int = 60, height: int = 96, width: int = 128,
                          seed: int = 0, progress: bool = False) -> Path:
    """The prepared layout of the built-in synthetic NYUD-v2 under ``root``, rendered and prepared on
    first use (by one process: others, concurrent fine-tunes or DDP ranks, wait for it), with the
    renderer's exact normals.  A cached layout of an older format, or one without normals, is
    rendered and prepared again."""
    folder = Path(root) / f"synthetic-{train}+{test}-{height}x{width}-seed{seed}"
    prepared = folder / "prepared"
    if _is_current(prepared):
        return prepared
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder / LOCK_NAME, str(folder), wait=True):
        if not _is_current(prepared):
            shutil.rmtree(prepared, ignore_errors=True)  # a cache of an older layout
            mat, splits = make_synthetic_nyud(folder, train, test, height, width, seed)
            prepare_nyud(mat, prepared, splits, progress=progress, normals=folder / NORMALS_FILE)
    return prepared


def _is_current(prepared: Path) -> bool:
    """Whether ``prepared`` is a finished layout of this format that holds normals."""
    meta = prepared_meta(prepared)
    return meta is not None and "normals" in meta
