"""Read and write NYUD-v2's labeled file ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5).

MATLAB stores arrays column-major, so h5py sees every axis reversed: ``images`` is
(N, 3, W, H), ``depths``/``rawDepths``/``labels`` are (N, W, H), and ``frame.T`` is upright.
Cell arrays of strings (``names``) are datasets of object references into ``#refs#``, each a
uint16 (UTF-16) char array.  :func:`write_labeled_mat` writes exactly that layout (with the
512-byte MAT header in the HDF5 user block), so tests and the built-in synthetic data go
through the same reader as the real file.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np

from ..cli import first_line

REQUIRED = ("images", "depths", "labels")


def _header() -> bytes:
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def write_labeled_mat(
    path: str | Path,
    images: np.ndarray,
    depths: np.ndarray,
    labels: np.ndarray,
    raw_depths: np.ndarray | None = None,
    names: tuple[str, ...] | None = None,
) -> None:
    """Write upright arrays (images (N, H, W, 3) uint8, depths (N, H, W) metres, labels (N, H, W)
    raw ids 0..894) as MATLAB v7.3 would: axes reversed, chunked per frame, deflate-compressed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:

        def frames(name: str, upright: np.ndarray, dtype: str, matlab_class: str) -> None:
            data = np.ascontiguousarray(upright.astype(dtype).transpose(0, *range(upright.ndim - 1, 0, -1)))
            ds = f.create_dataset(name, data=data, chunks=(1, *data.shape[1:]), compression="gzip", compression_opts=1)
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)

        frames("images", images, "uint8", "uint8")
        frames("depths", depths, "float32", "single")
        frames("labels", labels, "uint16", "uint16")
        if raw_depths is not None:
            frames("rawDepths", raw_depths, "float32", "single")
        if names is not None:
            refs = f.create_group("#refs#")
            pointers = np.empty((1, len(names)), dtype=h5py.ref_dtype)
            for k, name in enumerate(names):
                chars = refs.create_dataset(f"n{k}", data=np.array([[ord(c)] for c in name], dtype=np.uint16))
                chars.attrs["MATLAB_class"] = np.bytes_("char")
                chars.attrs["MATLAB_int_decode"] = np.int32(2)
                pointers[0, k] = chars.ref
            cell = f.create_dataset("names", data=pointers)
            cell.attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as handle:
        handle.write(_header())


class LabeledMat:
    """The labeled file, opened read-only and validated; ``frame(i)`` gives upright arrays (0-based i)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist (download nyu_depth_v2_labeled.mat from the NYU site)")
        if not h5py.is_hdf5(self.path):
            raise ValueError(f"{self.path} is not a MATLAB v7.3 (HDF5) file: expected nyu_depth_v2_labeled.mat")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(f"{self.path} cannot be opened, the file is truncated or corrupt ({first_line(error)}); "
                             "download nyu_depth_v2_labeled.mat again") from None
        try:
            self._check_layout()
        except (OSError, KeyError) as error:  # h5py's errors for a damaged object header or B-tree
            self.close()
            raise ValueError(f"{self.path} cannot be read, the file is truncated or corrupt ({first_line(error)}); "
                             "download nyu_depth_v2_labeled.mat again") from None
        except ValueError:
            self.close()
            raise

    def _check_layout(self) -> None:
        """The variables NYUD-v2 needs, with consistent shapes; sets ``frames``, ``width``, ``height``."""
        missing = [name for name in REQUIRED if name not in self.file]
        if missing:
            raise ValueError(f"{self.path} lacks the variable(s) {', '.join(missing)}: not the NYUD-v2 labeled file")
        images, depths, labels = (self.file[name] for name in REQUIRED)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.path}: images has shape {images.shape}, expected (N, 3, W, H) as h5py sees it")
        self.frames, _, self.width, self.height = images.shape
        for ds in (depths, labels, *([self.file["rawDepths"]] if "rawDepths" in self.file else [])):
            if ds.shape != (self.frames, self.width, self.height):
                raise ValueError(f"{self.path}: {ds.name[1:]} has shape {ds.shape}, expected "
                                 f"{(self.frames, self.width, self.height)} to match images")

    @property
    def has_raw_depths(self) -> bool:
        return "rawDepths" in self.file

    def raw_names(self) -> tuple[str, ...] | None:
        """The 894 class names of the raw labels (``names`` cell), or None when the file has none."""
        if "names" not in self.file:
            return None
        try:
            return tuple("".join(map(chr, self.file[ref][()].ravel())) for ref in self.file["names"][()].ravel())
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"{self.path}: its class names cannot be read, the file is truncated or corrupt "
                             f"({first_line(error)}); download nyu_depth_v2_labeled.mat again") from None

    def frame(self, index: int) -> dict[str, np.ndarray]:
        """Frame ``index`` (0-based) upright: image (H, W, 3) uint8, depth/raw_depth (H, W) float32 m, labels (H, W) uint16."""
        try:
            out = {
                "image": np.ascontiguousarray(self.file["images"][index].T),
                "depth": np.ascontiguousarray(self.file["depths"][index].T, dtype=np.float32),
                "labels": np.ascontiguousarray(self.file["labels"][index].T),
            }
            if self.has_raw_depths:
                out["raw_depth"] = np.ascontiguousarray(self.file["rawDepths"][index].T, dtype=np.float32)
        except (OSError, KeyError) as error:
            raise ValueError(f"{self.path}: frame {index + 1} cannot be read, the file is truncated or corrupt "
                             f"({first_line(error)}); download nyu_depth_v2_labeled.mat again") from None
        return out

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> LabeledMat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
