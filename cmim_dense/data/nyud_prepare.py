"""Prepare NYUD-v2 once: the labeled .mat -> a layout of uncompressed, memory-mappable arrays.

Layout of ``out`` (documented in docs/nyud.md)::

    meta.json                       format, source, frame size, split frame numbers, class names,
                                    how the normals were made
    train/ and test/                one folder per split, frames in increasing frame order
        frames.npy    (n,) int32            1-based frame numbers in the .mat
        images.npy    (n, H, W, 3) uint8    upright RGB
        depths.npy    (n, H, W) float32     filled depth (``depths``), metres
        raw_depths.npy (n, H, W) float32    raw Kinect depth (``rawDepths``), 0 = missing (when present)
        labels40.npy  (n, H, W) uint8       0-based 40-class ids, 255 = unlabeled
        labels13.npy  (n, H, W) uint8       0-based 13-class ids, 255 = unlabeled
        normals.npy   (n, H, W, 3) float16  unit surface normals in camera coordinates (x right, y down,
                                            z forward; towards the camera), (0, 0, 0) = invalid

Normals are computed once per frame while the layout is written, by the local plane fit of
:mod:`cmim_dense.data.normals` with NYUD-v2's RGB intrinsics (scaled to the frame size): from
``rawDepths`` when the file has them (the measured depth; invalid where it is missing), else from
the filled ``depths``; or copied from a file of precomputed normals (``normals=``, the synthetic
rooms' exact ones).  Layouts written before normals existed lack ``normals.npy`` and the meta's
``normals`` entry; they still serve segmentation and depth.

Everything is written into a sibling ``out.partial-PID`` folder and renamed to ``out`` only when
complete, so an interrupted run never leaves a layout that looks finished; the folders a prepare
makes beside ``out`` carry a marker file, and cleanup deletes nothing without it.  One prepare at a time
writes ``out`` (a lock beside it, ``.OUT.lock``), and ``--force`` replaces only a prepared layout.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..run_folder import exclusive_lock
from .normals import FRAME, NYUD_RGB, normals_from_depth, plane_fit_window
from .nyud_mat import LabeledMat
from .nyud_meta import nyud_meta, read_split_file

FORMAT = "cmim-dense-nyud-v1"
NormalsOf = Callable[[int, dict[str, np.ndarray]], np.ndarray]  # (1-based frame, its arrays) -> (H, W, 3) normals


def prepared_meta(root: str | Path) -> dict[str, Any] | None:
    """``root/meta.json`` of a finished layout of this format; None when ``root`` is not one
    (no such file, unreadable JSON, another format)."""
    path = Path(root) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def is_prepared(root: str | Path) -> bool:
    return prepared_meta(root) is not None


def _check_split(name: str, frames: tuple[int, ...], total: int, source: str) -> None:
    bad = [i for i in frames if not 1 <= i <= total]
    if bad:
        raise ValueError(f"{source}: {name} frame {bad[0]} is outside 1..{total}, the frames of the .mat "
                         "(split indices are 1-based; pass --splits for a file of another size)")


def prepare_nyud(mat: str | Path, out: str | Path, splits: str | Path | None = None, force: bool = False,
                 progress: bool = True, normals: str | Path | None = None) -> Path:
    """Convert ``mat`` into the prepared layout at ``out`` and return ``out``.

    ``splits``: a split file laid out like the official ``splits.mat`` (default: the official
    795/654 split shipped with the project).  ``normals``: an .npy of (frames, H, W, 3) unit
    normals of every frame of ``mat`` in its order (camera frame, 0 = invalid), used instead of
    the plane fit.
    """
    out = Path(out)
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symbolic link (to {os.readlink(out)}); give the folder it points to, "
                         "or another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock", str(out)):
        return _prepare_locked(mat, out, splits, force, progress, normals)


def _prepare_locked(mat: str | Path, out: Path, splits: str | Path | None, force: bool, progress: bool,
                    normals: str | Path | None) -> Path:
    """:func:`prepare_nyud` once this process holds ``out``'s lock, so no other prepare is writing
    beside it: the ``out.partial-*`` and ``out.replaced-*`` folders are a dead run's (see
    :func:`recover_interrupted_swap`)."""
    recover_interrupted_swap(out)
    if out.exists():
        if not is_prepared(out):
            raise FileExistsError(f"{out} exists and is not a prepared NYUD-v2 layout; --force replaces only a "
                                  "prepared one: move it away yourself or choose another --out")
        if not force:
            raise FileExistsError(f"{out} is already prepared; pass --force to replace it")
    meta = nyud_meta()
    train, test = read_split_file(splits) if splits is not None else (meta.train, meta.test)
    source = str(splits) if splits is not None else "the official split"
    partial = out.parent / f"{out.name}.partial-{os.getpid()}"
    partial.mkdir()
    try:
        own_folder(partial, "partial", out)
        with LabeledMat(mat) as labeled:
            _check_split("train", train, labeled.frames, source)
            _check_split("test", test, labeled.frames, source)
            names = labeled.raw_names()
            if names is not None and names != meta.raw_names:
                raise ValueError(f"{mat}: its 'names' differ from the official 894 NYUD-v2 class names; "
                                 "the 40/13-class mappings would be wrong")
            normals_of, normals_meta = _normals_plan(labeled, normals)
            _write_layout(labeled, partial, {"train": train, "test": test}, normals_of, progress)
            (partial / "meta.json").write_text(json.dumps({
                "format": FORMAT,
                "source": str(Path(mat).resolve()),
                "height": labeled.height,
                "width": labeled.width,
                "frames_in_source": labeled.frames,
                "splits": {"train": list(train), "test": list(test)},
                "split_source": source,
                "raw_depths": labeled.has_raw_depths,
                "classes": {"40": list(meta.names40), "13": list(meta.names13)},
                "normals": normals_meta,
            }, indent=1) + "\n")
        swap_in(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _normals_plan(labeled: LabeledMat, normals: str | Path | None) -> tuple[NormalsOf, dict[str, Any]]:
    """How each frame's normals are made, and its record for meta.json: copied from the file
    ``normals``, else the plane fit of the raw depth (the filled one when the file has none)."""
    if normals is not None:
        given = _read_normals(Path(normals), labeled)
        return (lambda frame, data: given[frame - 1]), {"source": str(Path(normals).resolve()), "method": "precomputed",
                                                        "frame": FRAME}
    camera, window = NYUD_RGB.scaled(labeled.width, labeled.height), plane_fit_window(labeled.width)
    key = "raw_depth" if labeled.has_raw_depths else "depth"
    return (lambda frame, data: normals_from_depth(data[key], camera, window)), {
        "source": "rawDepths" if labeled.has_raw_depths else "depths", "method": "local plane fit",
        "window": window, "intrinsics": asdict(camera), "frame": FRAME}


def _read_normals(path: Path, labeled: LabeledMat) -> np.ndarray:
    """The memory-mapped file of precomputed normals, checked against the .mat's frames."""
    try:
        given = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path} cannot be read as the normals of {labeled.path} ({error})") from None
    expected = (labeled.frames, labeled.height, labeled.width, 3)
    if given.shape != expected:
        raise ValueError(f"{path} holds normals of shape {given.shape}, expected {expected} for {labeled.path}")
    return given


TEMPORARY_MARKER = ".cmim_dense_temporary"  # in every folder a prepare may delete: its content names the role


def own_folder(folder: Path, role: str, out: Path) -> None:
    """Mark ``folder`` as this tool's ``role`` folder ("partial" or "replaced") for ``out``: cleanup
    deletes only folders that carry this mark, never one that merely has a matching name."""
    (folder / TEMPORARY_MARKER).write_text(json.dumps({"role": role, "out": out.name}) + "\n")


def _marked(folder: Path, role: str, out: Path) -> bool:
    try:
        return json.loads((folder / TEMPORARY_MARKER).read_text()) == {"role": role, "out": out.name}
    except (OSError, ValueError):
        return False


def leftover_folders(out: Path, role: str) -> list[Path]:
    """The ``out.ROLE-PID`` folders beside ``out`` that a prepare of ``out`` made and marked (the
    name is compared as text, not as a pattern: ``out`` may hold ``?`` or ``*``)."""
    prefix = f"{out.name}.{role}-"
    return sorted(entry for entry in out.parent.iterdir()
                  if entry.name.startswith(prefix) and entry.name[len(prefix):].isdigit()
                  and not entry.is_symlink() and entry.is_dir() and _marked(entry, role, out))


def recover_interrupted_swap(out: Path) -> None:
    """Clean up after a prepare that died: delete its unfinished ``out.partial-PID`` folders, and its
    ``out.replaced-PID`` (the previous layout moved aside by :func:`swap_in`): put back at ``out``
    when the new one never arrived, deleted otherwise.  Only folders it marked are touched."""
    for partial in leftover_folders(out, "partial"):
        shutil.rmtree(partial, ignore_errors=True)
    for aside in leftover_folders(out, "replaced"):
        if not out.exists() and is_prepared(aside):
            os.replace(aside, out)
            (out / TEMPORARY_MARKER).unlink()
        else:
            shutil.rmtree(aside, ignore_errors=True)


def swap_in(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out``: an old ``out`` is first marked and renamed aside,
    the new one renamed in (the old one is put back if that fails), and only then is the old one
    deleted, so at every moment a complete layout exists (at ``out`` or aside)."""
    (new / TEMPORARY_MARKER).unlink()
    if not out.exists():
        os.replace(new, out)
        return
    aside = out.parent / f"{out.name}.replaced-{os.getpid()}"
    own_folder(out, "replaced", out)
    os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(aside, out)
        (out / TEMPORARY_MARKER).unlink()
        raise
    shutil.rmtree(aside)


def _write_layout(labeled: LabeledMat, root: Path, splits: dict[str, tuple[int, ...]], normals_of: NormalsOf,
                  progress: bool) -> None:
    """Read every frame once, in file order, and write it and its normals into its split's arrays."""
    meta = nyud_meta()
    h, w = labeled.height, labeled.width
    arrays: dict[str, dict[str, np.ndarray]] = {}
    slot: dict[int, tuple[str, int]] = {}
    for split, frames in splits.items():
        folder = root / split
        folder.mkdir(parents=True)
        ordered = sorted(frames)
        np.save(folder / "frames.npy", np.asarray(ordered, dtype=np.int32))
        n = len(ordered)
        shapes = {"images": ((n, h, w, 3), np.uint8), "depths": ((n, h, w), np.float32),
                  "labels40": ((n, h, w), np.uint8), "labels13": ((n, h, w), np.uint8),
                  "normals": ((n, h, w, 3), np.float16)}
        if labeled.has_raw_depths:
            shapes["raw_depths"] = ((n, h, w), np.float32)
        arrays[split] = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                         for name, (shape, dtype) in shapes.items()}
        slot.update({frame: (split, position) for position, frame in enumerate(ordered)})
    for frame in tqdm(sorted(slot), desc="prepare NYUD-v2", unit="frame", disable=not progress):
        split, position = slot[frame]
        data = labeled.frame(frame - 1)
        if data["labels"].max() >= len(meta.lut40):
            raise ValueError(f"{labeled.path}: frame {frame} has raw label {data['labels'].max()}, "
                             f"beyond the {len(meta.lut40) - 1} NYUD-v2 classes")
        if not np.isfinite(data["depth"]).all():
            raise ValueError(f"{labeled.path}: frame {frame} has non-finite depth values")
        target = arrays[split]
        target["images"][position] = data["image"]
        target["depths"][position] = data["depth"]
        target["labels40"][position] = meta.train_labels(data["labels"], 40)
        target["labels13"][position] = meta.train_labels(data["labels"], 13)
        target["normals"][position] = normals_of(frame, data)
        if "raw_depths" in target:
            target["raw_depths"][position] = data["raw_depth"]
    for split_arrays in arrays.values():
        for array in split_arrays.values():
            array.flush()
