"""NYUD-v2 meta-data: the official 795/654 split and the 894 -> 40 -> 13 class mappings.

The project ships them as ``nyud_meta.json`` (derived once from the official ``splits.mat``,
``classMapping40.mat`` and ``class13Mapping.mat`` with ``datasets/make_nyud_meta.py``), so that
preparing the data needs only the labeled ``.mat``.  Conventions (see docs/nyud.md):

- split indices are 1-based frame numbers of the 1449 labeled frames;
- ``lut40`` has 895 entries: ``lut40[raw]`` is the 40-class id 1..40 of raw label 1..894 and
  ``lut40[0] = 0`` keeps "unlabeled" void (raw 20 "unknown" is otherprop, not void);
- ``lut13`` has 41 entries: ``lut13[c40]`` is the 13-class id 1..13 (alphabetical names), 0 -> 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

META_FILE = Path(__file__).with_name("nyud_meta.json")
IGNORE_INDEX = 255
CLASS_COUNTS = (40, 13)  # the two NYUD-v2 label sets (Gupta et al. 2013; Silberman et al. 2012)
# ground-truth depth maps of the labeled set -> their arrays in the prepared layout
DEPTH_KINDS = {"depths": "depths", "rawDepths": "raw_depths"}


def require_class_count(classes: int) -> int:
    """``classes`` when NYUD-v2 has such a label set (40 or 13 classes); else a one-line error."""
    if classes not in CLASS_COUNTS:
        raise ValueError(f"NYUD-v2 has {' or '.join(map(str, CLASS_COUNTS))} classes (--classes), got {classes}")
    return classes


@dataclass(frozen=True)
class NYUDMeta:
    train: tuple[int, ...]  # 1-based frame numbers
    test: tuple[int, ...]
    lut40: tuple[int, ...]  # raw 0..894 -> 0..40
    lut13: tuple[int, ...]  # 40-class 0..40 -> 0..13
    names40: tuple[str, ...]
    names13: tuple[str, ...]
    raw_names: tuple[str, ...]  # raw label k has name raw_names[k - 1]

    def to_dict(self) -> dict[str, list]:
        return {key: list(value) for key, value in self.__dict__.items()}

    def class_names(self, classes: int) -> tuple[str, ...]:
        return {40: self.names40, 13: self.names13}[classes]

    def train_labels(self, raw: np.ndarray, classes: int) -> np.ndarray:
        """Raw labels (0 = unlabeled, 1..894) -> 0-based ``classes``-way ids, void = 255 (uint8)."""
        lut = np.asarray(self.lut40, dtype=np.uint8)
        if require_class_count(classes) == 13:
            lut = np.asarray(self.lut13, dtype=np.uint8)[lut]
        one_based = lut[raw]
        return np.where(one_based == 0, IGNORE_INDEX, one_based - 1).astype(np.uint8)


def _mat_strings(cells: np.ndarray) -> tuple[str, ...]:
    return tuple(str(cell[0]) for cell in cells.ravel())


def _mat_variables(path: Path, names: tuple[str, ...], layout: str) -> dict[str, np.ndarray]:
    """The variables ``names`` of a MATLAB (v5) file laid out like the official ``layout``; one-line errors."""
    import scipy.io

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected the official {layout})")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as error:
        raise ValueError(f"{path} is not a readable MATLAB file ({type(error).__name__}: {error})") from None
    missing = [name for name in names if name not in mat]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (expected the layout of the official {layout})")
    return {name: mat[name] for name in names}


def read_split_file(path: str | Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``trainNdxs`` and ``testNdxs`` (1-based) of a split file laid out like the official ``splits.mat``."""
    path = Path(path)
    mat = _mat_variables(path, ("trainNdxs", "testNdxs"), "splits.mat")
    train, test = (tuple(int(i) for i in mat[name].ravel()) for name in ("trainNdxs", "testNdxs"))
    if set(train) & set(test):
        raise ValueError(f"split file {path}: train and test share {len(set(train) & set(test))} frames")
    return train, test


def derive_meta(folder: str | Path) -> NYUDMeta:
    """Build the meta-data from the official ``splits.mat``, ``classMapping40.mat``, ``class13Mapping.mat``."""
    folder = Path(folder)
    train, test = read_split_file(folder / "splits.mat")
    mapping40 = _mat_variables(folder / "classMapping40.mat", ("mapClass", "className", "allClassName"),
                               "classMapping40.mat")
    mapping13 = _mat_variables(folder / "class13Mapping.mat", ("classMapping13",),
                               "class13Mapping.mat")["classMapping13"][0, 0]
    return NYUDMeta(
        train=train,
        test=test,
        lut40=(0, *(int(c) for c in mapping40["mapClass"].ravel())),
        lut13=(0, *(int(c) for c in mapping13["labels13"].ravel())),
        names40=_mat_strings(mapping40["className"]),
        names13=_mat_strings(mapping13["classNames"]),
        raw_names=_mat_strings(mapping40["allClassName"]),
    )


@lru_cache(maxsize=1)
def nyud_meta() -> NYUDMeta:
    """The shipped meta-data."""
    data = json.loads(META_FILE.read_text())
    return NYUDMeta(**{key: tuple(value) for key, value in data.items()})
