"""Checkpoint and JSON files: written atomically, read without unpickling arbitrary objects.

The ground floor of the package: the training engine, the models' and dense models' rebuilding
from files, the export and the figures all read and write through it.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch

from .cli import first_line
from .run_folder import TEMPORARY_SUFFIX


CHECKSUM_KEY = "checksum"  # a saved dict's entry: {"crc32": the CRC-32 of its tensors (tensor_checksum)}


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write ``obj`` and the checksum of its tensors (:func:`tensor_checksum`, read back by
    :func:`read_weights`) with torch.save to a temporary file beside ``path``, then rename it.

    A crash at any moment leaves either the previous file or the new one, never a torn one.
    """
    stamped = {**obj, CHECKSUM_KEY: {"crc32": tensor_checksum(obj)}}
    write_atomic(path, lambda handle: torch.save(stamped, handle))


def tensor_checksum(obj: Any) -> int:
    """CRC-32 of every tensor in ``obj`` (nested dicts, lists and tuples, in their order), each with
    its place, dtype and shape: a flipped byte in any tensor changes it (CRC-32 catches every error
    burst up to 32 bits).  A corruption check, not a signature against tampering."""
    crc = 0
    for place, tensor in _tensors_in(obj, ""):
        crc = zlib.crc32(f"{place}|{tensor.dtype}|{tuple(tensor.shape)}".encode(), crc)
        crc = zlib.crc32(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return crc


def _tensors_in(obj: Any, place: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield place, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors_in(value, f"{place}/{key}")
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _tensors_in(value, f"{place}/{index}")


def verified(obj: Any, path: Path) -> Any:
    """``obj`` without its checksum entry, once its tensors match it; a one-line error when they do
    not.  Files without one (other tools' state dicts, checkpoints of earlier versions) pass as they are."""
    if not (isinstance(obj, dict) and isinstance(obj.get(CHECKSUM_KEY), dict) and "crc32" in obj[CHECKSUM_KEY]):
        return obj
    expected = obj.pop(CHECKSUM_KEY)["crc32"]
    if tensor_checksum(obj) != expected:
        raise ValueError(f"{path} is corrupted: its tensors no longer match the checksum written with them; "
                         "use another copy (or rerun what wrote it)")
    return obj


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would (0666 less the umask), not
    the owner-only ones of a temporary file, so checkpoints stay readable on shared machines.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        writer = _KeepsWriteErrors(os.fdopen(fd, "wb"))
        try:
            with writer.handle as handle:  # closing flushes too: a full disk can fail there
                write(writer)  # torch.save reports a failed write as "unexpected pos": the OS's reason is kept
                handle.flush()
                os.fsync(handle.fileno())
        except Exception as error:
            cause = writer.error or error
            if not isinstance(cause, OSError) or cause.errno is None:
                raise
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _KeepsWriteErrors:
    """A binary file's ``write`` and ``flush`` that remember the OS error of a failed write (a full
    disk), which a caller such as torch.save replaces by its own message."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def strict_json(record: Any, indent: int | None = None) -> str:
    """``record`` as standard JSON: NaN and infinities (an IoU of a class absent from the test
    set, a diverged loss) are written as ``null``, which every JSON reader accepts, instead of
    Python's bare ``NaN`` (docs/nyud.md, "metrics.json")."""

    def finite_or_none(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {key: finite_or_none(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite_or_none(item) for item in value]
        return value

    return json.dumps(finite_or_none(record), indent=indent, allow_nan=False)


def write_json(path: str | Path, record: Any) -> None:
    """``record`` as indented strict JSON (:func:`strict_json`) at ``path``, written atomically
    (:func:`write_atomic`)."""
    text = strict_json(record, indent=2) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode()))


def read_weights(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, its tensors checked against the checksum
    :func:`save_atomic` wrote, with one-line errors for missing, corrupt or unsafe
    (arbitrary-pickle) files.  ``mmap=True`` maps the tensors instead of reading them, for callers
    that only look at the meta of a large file (the tensors are then not checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ValueError(unreadable(path, error)) from None
    if mmap:
        if isinstance(obj, dict):
            obj.pop(CHECKSUM_KEY, None)
        return obj
    return verified(obj, path)


def unreadable(path: Path, error: Exception) -> str:
    """The one line for a file torch.load refused: code it would have run, or why it is no
    checkpoint.  torch's own message goes on to suggest weights_only=False: never passed on."""
    text = str(error)
    unsafe = re.search(r"unsupported global(?:: GLOBAL)? (\S+)", text, re.IGNORECASE)  # torch's two wordings
    if unsafe:
        return (f"{path} was refused: reading it would run code ({unsafe.group(1)}); only tensors and plain "
                "containers are read, as in this toolkit's checkpoints")
    reason = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    detail = reason.group(1) if reason else "not a torch checkpoint" if "weights_only" in text else first_line(error)
    return f"{path} is not a readable checkpoint: the file is corrupt, truncated or of another kind ({detail})"


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A cmim-dense checkpoint (a dict with ``model`` and ``meta``), read without unpickling code
    (``mmap``: see :func:`read_weights`)."""
    return as_checkpoint(read_weights(path, mmap), path)


def as_checkpoint(obj: Any, path: str | Path) -> dict[str, Any]:
    """What :func:`read_weights` read from ``path``, when it is a cmim-dense checkpoint; else a one-line error."""
    if not isinstance(obj, dict) or "model" not in obj or "meta" not in obj:
        raise ValueError(f"{path} is not a cmim-dense checkpoint (expected a dict with 'model' and 'meta')")
    return obj


# What each kind of checkpoint is and the meta its readers need: a pretrained backbone (read by
# fine-tuning, export, summary, charts, --init-from, --evaluate) and a fine-tuned dense model.
CHECKPOINT_ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "backbone": ("a pretrained backbone (best.pt or last.pt of pretrain/run.py)", ("method", "arch", "num_classes")),
    "dense": ("a fine-tuned dense model (last.pt of finetune/nyud.py)",
              ("task", "classes", "out_channels", "head", "output_stride", "decoder_channels", "backbone_meta",
               "config")),
}


def checkpoint_role(meta: Any) -> str | None:
    """What a checkpoint is, from its meta: ``dense`` when it names a task, ``backbone`` when it
    names an architecture, None otherwise."""
    if not isinstance(meta, dict):
        return None
    return "dense" if "task" in meta else "backbone" if "arch" in meta else None


def load_checkpoint_as(path: str | Path, role: str, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint that must be of ``role`` (a key of :data:`CHECKPOINT_ROLES`): one place where
    every command checks what it reads, with a one-line error that says what the file is and
    what was expected (e.g. a fine-tuned last.pt given as a backbone), and whose weights are finite
    (a mapped read, for the meta, skips that)."""
    return checkpoint_as(read_weights(path, mmap), role, path, check_weights=not mmap)


def checkpoint_as(obj: Any, role: str, path: str | Path, check_weights: bool = True) -> dict[str, Any]:
    """:func:`load_checkpoint_as` of what :func:`read_weights` already read from ``path`` (a reader that
    had to look inside the file first need not read it twice)."""
    checkpoint = require_role(as_checkpoint(obj, path), role, path)
    if check_weights:
        require_finite_weights(checkpoint["model"], path)
    return checkpoint


def require_finite_weights(state: dict[str, Any], path: str | Path) -> None:
    """A one-line error naming the first floating-point tensor of ``state`` that holds NaN or inf:
    the engines never save one, so the file is a diverged run's from elsewhere, or damaged."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path} holds non-finite weights (NaN or inf in {key}), nothing can start from it; "
                             "use an earlier checkpoint")


def require_role(checkpoint: dict[str, Any], role: str, path: str | Path) -> dict[str, Any]:
    """``checkpoint`` (read from ``path``) when it is of ``role``; else the one-line error of
    :func:`load_checkpoint_as`."""
    expected, keys = CHECKPOINT_ROLES[role]
    found = checkpoint_role(checkpoint["meta"])
    if found != role:
        what = CHECKPOINT_ROLES[found][0] if found else "a checkpoint whose meta names neither a task nor an arch"
        raise ValueError(f"{path} is {what}; expected {expected}")
    missing = [key for key in keys if key not in checkpoint["meta"]]
    if missing:
        raise ValueError(f"{path} meta lacks {', '.join(missing)}; expected {expected} of this version")
    return checkpoint
