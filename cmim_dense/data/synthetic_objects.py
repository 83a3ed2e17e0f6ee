"""The built-in pretraining world: object-centric photographs of the built-in NYUD-v2 rooms.

A miniature of ImageNet -> NYUD-v2.  Each image shows one object or surface of the 13 scene
classes of :mod:`cmim_dense.data.synthetic_nyud` (wall, floor, ceiling, door, window, picture,
bed, table, chair, sofa, cabinet, bookshelf, otherprop) filling most of the frame, photographed
in one of those rooms: the same ray-cast box rooms, furniture sizes, wall decorations, class
colours and textures, Lambert-like shading, distance darkening and sensor noise, rendered by the
same functions.  The camera is aimed at the object from a random direction, height and distance
(the object's bounding sphere spans 75-125 % of the frame's width); the room around it (walls, floor,
ceiling, sometimes a second piece of furniture or a decoration beside it) is random too.  Per
image the colours are tinted, the textures shifted, and the light direction, ambient and diffuse
strength, exposure and noise level drawn anew, so that the class is read from the object's look
and shape together, as a pretrained backbone must read them in the rooms.

Sample ``i`` of a split is drawn from its own generator seeded by (seed, split, i): the same
seed always gives the same images, a sample does not depend on how many are asked for, and the
train and validation splits are independent draws.  A split is rendered once, on first use, and
kept in memory (about 1 ms per 32 px image on one CPU core).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .synthetic_nyud import (CLASSES, DECORATIONS, FOCAL_640, FURNITURE, LIGHT, box, camera_rays, expose,
                             first_hit, furniture_box, paint, room, shading, wall_rect)

SPLITS = {"train": 0, "val": 1}
TAN_HALF = 320.0 / FOCAL_640  # tangent of half the (square) field of view, as the Kinect's horizontal one
FRONT, BACK, LEFT, RIGHT = 5, 2, 3, 4  # indices of room()'s walls (with a front wall)


@dataclass
class Shot:
    """Where the camera stands and looks, the room around it and what is in it."""

    pitch: float
    yaw: float
    camera_height: float
    room_height: float
    left: float
    right: float
    back: float
    front: float
    boxes: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)  # (class, lo, hi)
    decorations: list[tuple[str, float]] = field(default_factory=list)  # (class, start x) on the back wall


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _aim(x: float, y: float, z: float) -> tuple[float, float]:
    """(pitch, yaw) that turn the camera's axis to the point (x, y, z)."""
    return float(np.arctan2(y, np.hypot(x, z))), float(np.arctan2(x, z))


def _view_distance(width: float, height: float, depth: float, rng: np.random.Generator) -> float:
    """Camera distance at which the object's bounding sphere spans 75-125 % of the frame's width."""
    return 0.5 * float(np.linalg.norm([width, height, depth])) / (_uniform(rng, (0.75, 1.25)) * TAN_HALF)


def _beside(shot: Shot, rng: np.random.Generator, x_lo: float, x_hi: float, z: float, exclude: str) -> None:
    """Maybe (60 %) stand another piece of furniture left or right of the span [x_lo, x_hi] at depth
    ``z``, widening the room to hold it; skipped where it would swallow the camera."""
    if rng.random() >= 0.6:
        return
    name = str(rng.choice([n for n in FURNITURE if n != exclude]))
    (w0, w1), (h0, h1), (d0, d1) = FURNITURE[name]
    size = np.array([rng.uniform(w0, w1), rng.uniform(h0, h1), rng.uniform(d0, d1)])
    gap = _uniform(rng, (0.1, 0.8))
    x = x_hi + gap + size[0] / 2 if rng.random() < 0.5 else x_lo - gap - size[0] / 2
    z = min(z, shot.back - size[2] / 2 - 0.02)
    lo, hi = furniture_box(size, x, z, shot.camera_height)
    if (lo[0] < 0.1 and hi[0] > -0.1 and lo[2] < 0.1) or hi[1] - lo[1] > shot.room_height:
        return
    shot.left, shot.right = min(shot.left, lo[0] - 0.05), max(shot.right, hi[0] + 0.05)
    shot.boxes.append((name, lo, hi))


def _furniture_shot(name: str, rng: np.random.Generator) -> Shot:
    """A piece of furniture seen from 0.1-0.8 rad above and up to 0.7 rad off its front."""
    (w0, w1), (h0, h1), (d0, d1) = FURNITURE[name]
    size = np.array([rng.uniform(w0, w1), rng.uniform(h0, h1), rng.uniform(d0, d1)])
    room_height = _uniform(rng, (2.5, 3.0))
    distance = _view_distance(*size, rng)
    elevation = _uniform(rng, (0.1, 0.8))
    camera_height = float(np.clip(distance * np.sin(elevation) + size[1] / 2, 0.4, room_height - 0.3))
    drop = camera_height - size[1] / 2  # the object's centre below the camera
    horizontal = max(float(np.sqrt(max(distance ** 2 - drop ** 2, 0.0))), 0.5 * float(np.hypot(size[0], size[2])) + 0.15)
    heading = _uniform(rng, (-0.7, 0.7))
    x, z = horizontal * np.sin(heading), horizontal * np.cos(heading)
    lo, hi = furniture_box(size, x, z, camera_height)
    shot = Shot(*_aim(x, drop, z), camera_height, room_height,
                left=min(-_uniform(rng, (1.0, 3.0)), lo[0] - _uniform(rng, (0.1, 1.5))),
                right=max(_uniform(rng, (1.0, 3.0)), hi[0] + _uniform(rng, (0.1, 1.5))),
                back=hi[2] + _uniform(rng, (0.05, 2.5)), front=-_uniform(rng, (0.3, 2.0)),
                boxes=[(name, lo, hi)])
    _beside(shot, rng, lo[0], hi[0], z + _uniform(rng, (-0.2, 1.0)), name)
    return shot


def _decoration_shot(name: str, rng: np.random.Generator) -> Shot:
    """A door, window or picture on the back wall, seen from up to 0.6 rad off the wall's normal."""
    width, height, bottom = DECORATIONS[name]
    camera_height = _uniform(rng, (1.2, 1.6))
    distance = _view_distance(width, height, 0.0, rng)
    drop = camera_height - bottom - height / 2
    horizontal = max(float(np.sqrt(max(distance ** 2 - drop ** 2, 0.0))), 0.3)
    heading = _uniform(rng, (-0.6, 0.6))
    x, back = horizontal * np.sin(heading), horizontal * np.cos(heading)
    start = x - width / 2
    shot = Shot(*_aim(x, drop, back), camera_height, _uniform(rng, (2.5, 3.0)),
                left=min(-_uniform(rng, (1.0, 3.0)), start - _uniform(rng, (0.3, 1.5))),
                right=max(_uniform(rng, (1.0, 3.0)), start + width + _uniform(rng, (0.3, 1.5))),
                back=back, front=-_uniform(rng, (0.3, 2.0)), decorations=[(name, start)])
    _beside(shot, rng, start, start + width, back, "")
    return shot


def _surface_shot(name: str, rng: np.random.Generator) -> Shot:
    """The back wall straight ahead (1-3 m), the floor looked down at or the ceiling looked up at."""
    camera_height, room_height = _uniform(rng, (1.2, 1.6)), _uniform(rng, (2.5, 3.0))
    yaw = _uniform(rng, (-0.6, 0.6))
    if name == "wall":
        pitch, back = _uniform(rng, (-0.2, 0.25)), _uniform(rng, (1.0, 3.0))
    else:
        pitch, back = _uniform(rng, (0.6, 1.1)) * (1 if name == "floor" else -1), _uniform(rng, (3.5, 7.0))
    centre = back * np.tan(yaw)
    shot = Shot(pitch, yaw, camera_height, room_height, left=min(-_uniform(rng, (1.5, 3.0)), centre - 1.5),
                right=max(_uniform(rng, (1.5, 3.0)), centre + 1.5), back=back, front=-_uniform(rng, (0.5, 2.0)))
    if name == "wall":  # something beside the bare patch of wall at the centre of the view
        half = 0.6 * back / np.cos(yaw) * TAN_HALF
        if rng.random() < 0.5:
            decoration = str(rng.choice(list(DECORATIONS)))
            width = DECORATIONS[decoration][0]
            side = rng.random() < 0.5
            shot.decorations.append((decoration, centre + half if side else centre - half - width))
        else:
            _beside(shot, rng, centre - half, centre + half, back - 0.6, "")
    return shot


def render_object(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 photograph of an object or surface of class ``name``."""
    return render_object_with_labels(name, size, rng)[0]


def render_object_with_labels(name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The photograph of :func:`render_object` and its (size, size) label map (indices into CLASSES)."""
    if name in FURNITURE:
        shot = _furniture_shot(name, rng)
    elif name in DECORATIONS:
        shot = _decoration_shot(name, rng)
    elif name in ("wall", "floor", "ceiling"):
        shot = _surface_shot(name, rng)
    else:
        raise ValueError(f"unknown class {name!r}; valid: {', '.join(CLASSES)}")
    rays = camera_rays(size, size, shot.pitch, shot.yaw)
    surfaces = room(rays, shot.camera_height, shot.room_height, shot.left, shot.right, shot.back, shot.front)
    surfaces += [box(lo, hi, rays, box_name) for box_name, lo, hi in shot.boxes]
    nearest, depth, points, normal = first_hit(surfaces, rays)
    labels = np.array([CLASSES.index(s.name) for s in surfaces])[nearest]
    for decoration, start in shot.decorations:
        labels[wall_rect(points, nearest == BACK, 0, start, shot.camera_height, decoration)] = CLASSES.index(decoration)
    albedo = paint(labels, points, rng, phase=(_uniform(rng, (0.0, 10.0)), _uniform(rng, (0.0, 10.0))))
    light = LIGHT + rng.normal(0, 0.25, 3)
    shade = shading(normal, depth, light / np.linalg.norm(light), ambient=_uniform(rng, (0.45, 0.65)),
                    diffuse=_uniform(rng, (0.25, 0.45)))
    image = expose(albedo, shade * _uniform(rng, (0.85, 1.15)), rng, noise=_uniform(rng, (0.02, 0.05)))
    return image, labels


def sample_generator(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: independent streams for every (seed, split, index)."""
    return np.random.default_rng([seed, SPLITS[split], index])


@lru_cache(maxsize=4)
def render_split(num_samples: int, num_classes: int, image_size: int, seed: int, split: str) -> Tensor:
    """(N, 3, S, S) uint8 images of a split, sample i of class i mod num_classes; rendered once per
    process (a main job's methods share the same split)."""
    images = np.stack([render_object(CLASSES[index % num_classes], image_size, sample_generator(seed, split, index))
                       for index in range(num_samples)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


class SyntheticObjects(Dataset):
    """``num_samples`` object photographs of the first ``num_classes`` (2..13) scene classes,
    balanced (sample i shows class i mod num_classes), normalised per channel with the world's
    mean and standard deviation.  ``split`` (train/val) selects independent draws."""

    mean = (0.48, 0.41, 0.36)  # per-channel statistics of the world (1300 training images of 13 classes, 32 px)
    std = (0.16, 0.18, 0.20)

    def __init__(self, num_samples: int, num_classes: int = len(CLASSES), image_size: int = 32, seed: int = 0,
                 split: str = "train") -> None:
        if not 2 <= num_classes <= len(CLASSES):
            raise ValueError(f"num_classes must be in [2, {len(CLASSES)}], got {num_classes}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.num_samples, self.num_classes, self.image_size = num_samples, num_classes, image_size
        self.seed, self.split = seed, split
        self.classes = list(CLASSES[:num_classes])

    def __len__(self) -> int:
        return self.num_samples

    @property
    def targets(self) -> list[int]:
        """Every sample's class."""
        return [index % self.num_classes for index in range(self.num_samples)]

    def images(self) -> Tensor:
        """The split's (N, 3, S, S) uint8 images (rendered on first use)."""
        return render_split(self.num_samples, self.num_classes, self.image_size, self.seed, self.split)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        image = self.images()[index].float().div_(255)
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (image - mean) / std, index % self.num_classes
