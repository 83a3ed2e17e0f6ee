"""The prepared NYUD-v2 layout as a dataset, and its joint image/label/depth/normals transforms."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI version check at import: no network at run time

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from ..cli import first_line  # noqa: E402
from .nyud_meta import DEPTH_KINDS, IGNORE_INDEX, require_class_count  # noqa: E402
from .nyud_prepare import prepared_meta  # noqa: E402

SAMPLE_DTYPES = {"normals": np.float32}  # sample arrays read as another dtype than stored (float16 normals)


def read_array(path: Path, frames: int | None = None, frame_shape: tuple[int, ...] | None = None,
               dtype: type | None = None) -> np.ndarray:
    """One array of a prepared layout (memory-mapped when ``frames``, its expected length, is
    given; ``frame_shape`` and ``dtype``: what each frame must be), with one line naming a missing,
    truncated, corrupt or inconsistent file."""
    redo = "prepare it again (datasets/prepare_nyud.py --force)"
    try:
        array = np.load(path, mmap_mode="r" if frames is not None else None)
    except (OSError, ValueError, EOFError) as error:
        objects = "pickle" in str(error) or "Python objects" in str(error)  # numpy: "... allow_pickle=False"
        reason = "it holds Python objects, not a plain array" if objects else first_line(error)
        raise ValueError(f"{path} cannot be read, the prepared set is truncated or corrupt ({reason}); "
                         f"{redo}") from None
    if frames is not None and len(array) != frames:
        raise ValueError(f"{path} holds {len(array)} frames, frames.npy {frames}: the prepared set is inconsistent; "
                         f"{redo}")
    if frame_shape is not None and (array.shape[1:] != frame_shape or array.dtype != dtype):
        raise ValueError(f"{path} holds {array.dtype} frames of shape {array.shape[1:]}, expected {np.dtype(dtype)} "
                         f"{frame_shape} (meta.json): the prepared set is inconsistent; {redo}")
    return array


class NYUDv2(Dataset):
    """One split of a layout written by :func:`cmim_dense.data.nyud_prepare.prepare_nyud`.

    ``ds[i]`` is a dict: ``image`` (H, W, 3) uint8, ``label`` (H, W) uint8 with 0-based class
    ids of ``classes`` (40 or 13) and 255 = unlabeled, ``depth`` (H, W) float32 metres
    (``depth="depths"``: filled; ``"rawDepths"``: raw, 0 = missing), ``frame`` (1-based frame
    number in the .mat), and with ``normals=True`` ``normals`` (H, W, 3) float32 unit surface
    normals in camera coordinates (x right, y down, z forward; (0, 0, 0) = invalid);
    ``transform(sample)`` is returned instead when given.  Arrays are memory-mapped, opened lazily
    (so DataLoader workers each open their own).
    """

    def __init__(self, root: str | Path, split: str = "train", classes: int = 40,
                 transform: Callable[[dict[str, Any]], Any] | None = None, depth: str = "depths",
                 normals: bool = False) -> None:
        self.root = Path(root)
        meta = prepared_meta(self.root)
        if meta is None:
            raise FileNotFoundError(f"{self.root} is not a prepared NYUD-v2 layout; run "
                                    "python datasets/prepare_nyud.py --mat nyu_depth_v2_labeled.mat --out DIR")
        if split not in ("train", "test"):
            raise ValueError(f"NYUD-v2 split must be train or test, got {split!r}")
        require_class_count(classes)
        if depth not in DEPTH_KINDS:
            raise ValueError(f"NYUD-v2 depth must be one of {', '.join(DEPTH_KINDS)}, got {depth!r}")
        self.meta = meta
        if depth == "rawDepths" and not self.meta["raw_depths"]:
            raise ValueError(f"{self.root} was prepared from a file without rawDepths")
        if normals and "normals" not in self.meta:
            raise ValueError(f"{self.root} was prepared before surface normals existed; prepare it again with "
                             "datasets/prepare_nyud.py --force")
        self.split, self.classes, self.transform, self.depth_kind = split, classes, transform, depth
        self.normals = normals
        self.class_names: list[str] = self.meta["classes"][str(classes)]
        self.frames = read_array(self.root / split / "frames.npy")
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every frame."""
        return self.meta["height"], self.meta["width"]

    def array(self, key: str) -> np.ndarray:
        """The whole split's memory-mapped ``image``, ``label``, ``depth`` or ``normals`` array (N, H, W[, 3])."""
        return self._open()[key]

    @cached_property
    def mean_depth(self) -> float:
        """Mean depth (metres) over the split's pixels with ground truth (> 0), read once."""
        total, count = 0.0, 0
        for frame in self.array("depth"):
            valid = frame > 0
            total += float(frame[valid].sum(dtype=np.float64))
            count += int(valid.sum())
        if count == 0:
            raise ValueError(f"the {self.split} split of {self.root} has no pixel with ground-truth depth "
                             f"({self.depth_kind}); use the filled depths (--depth-gt depths)")
        return total / count

    @cached_property
    def majority_class(self) -> int:
        """The split's most frequent labelled class, read once."""
        counts = np.zeros(256, dtype=np.int64)
        for frame in self.array("label"):
            counts += np.bincount(frame.ravel(), minlength=256)
        counts[IGNORE_INDEX] = 0
        return int(counts.argmax())

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            folder = self.root / self.split
            names = {"image": "images", "label": f"labels{self.classes}", "depth": DEPTH_KINDS[self.depth_kind]}
            if self.normals:
                names["normals"] = "normals"
            self._arrays = {key: read_array(folder / f"{name}.npy", len(self.frames), *self._frame_layout(key))
                            for key, name in names.items()}
        return self._arrays

    def _frame_layout(self, key: str) -> tuple[tuple[int, ...], type]:
        """The shape and dtype of one frame of array ``key`` (nyud_prepare's layout)."""
        size = self.size
        return {"image": ((*size, 3), np.uint8), "label": (size, np.uint8), "depth": (size, np.float32),
                "normals": ((*size, 3), np.float16)}[key]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Any:
        arrays = self._open()
        sample = {key: np.array(array[index], dtype=SAMPLE_DTYPES.get(key)) for key, array in arrays.items()}
        sample["frame"] = int(self.frames[index])
        return self.transform(sample) if self.transform is not None else sample

    def __getstate__(self) -> dict[str, Any]:  # never ship open memory maps to worker processes
        return {**self.__dict__, "_arrays": None}


class JointTransform:
    """Albumentations on image, label, depth and (when the sample has them) normals with one
    geometry; returns tensors.

    Training (``crop`` given): RandomScale in [scale_min, scale_max] -> RandomCrop (padding
    the image with 0, the label with "unlabeled", depth and normals with 0 = invalid) ->
    horizontal flip -> Normalize -> tensor.  Labels, depth and normals use nearest-neighbour
    resampling, so no interpolated label or blend of valid and missing values appears.  Scaling
    the image by s makes the scene look 1/s as far, so depth is divided by s (the multi-task
    lineage's geometric consistency); a surface's orientation does not change, so normals are
    kept.  Mirroring the image mirrors the scene: a flip negates the normals' x component.
    Normals come back as (3, H, W) float32.  Evaluation (``crop=None``): Normalize -> tensor at
    full size.

    Padding shares one fill value over all mask targets (albumentations' ``fill_mask``), so the
    label is shifted to 1-based with 0 = unlabeled during the transform and shifted back.
    ``seed(s)`` makes the next call's randomness a function of ``s`` alone (exact resume).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], crop: tuple[int, int] | None = None,
                 scale: tuple[float, float] = (0.5, 2.0), flip: bool = True) -> None:
        steps: list[A.BasicTransform] = []
        if crop is not None:
            steps += [A.RandomScale(scale_limit=(scale[0] - 1.0, scale[1] - 1.0), p=1.0),
                      A.RandomCrop(crop[0], crop[1], pad_if_needed=True, fill=0, fill_mask=0)]
            if flip:
                steps.append(A.HorizontalFlip(p=0.5))
        steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
        self.compose = A.Compose(steps, additional_targets={"depth": "mask", "normals": "mask"}, strict=True,
                                 save_applied_params=True)

    def seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        label = sample["label"]
        shifted = np.where(label == IGNORE_INDEX, 0, label.astype(np.int32) + 1).astype(np.uint8)
        normals = {"normals": sample["normals"]} if "normals" in sample else {}
        out = self.compose(image=sample["image"], mask=shifted, depth=sample["depth"], **normals)
        applied = dict(out["applied_transforms"])  # name -> sampled parameters, of the transforms that ran
        scale = applied["RandomScale"]["scale"] if "RandomScale" in applied else 1.0
        label = out["mask"].long() - 1
        label[label < 0] = IGNORE_INDEX
        result = {"image": out["image"], "label": label, "depth": out["depth"].float() / scale,
                  "frame": sample.get("frame", -1)}
        if normals:
            result["normals"] = normals_channels_first(out["normals"])
            if "HorizontalFlip" in applied:
                result["normals"][0].neg_()
        return result


def normals_channels_first(normals: Tensor | np.ndarray) -> Tensor:
    """Normals as stored and transformed, ``(H, W, 3)``, as the head predicts them: float32 ``(3, H, W)``."""
    return torch.as_tensor(normals).float().permute(2, 0, 1).contiguous()


class SeededSamples(Dataset):
    """A split's frames through a training ``transform``, addressed by (index, seed): each sample's
    augmentation is seeded by the sampler, so it depends only on (run seed, epoch, position), not on
    loader workers or restarts."""

    def __init__(self, dataset: NYUDv2, transform: JointTransform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, seed = item
        self.transform.seed(seed)
        return self.transform(self.dataset[index])
