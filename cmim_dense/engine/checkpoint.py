"""Checkpoints: written atomically, read without unpickling arbitrary objects."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from ..cli import first_line


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write ``obj`` with torch.save to a temporary file beside ``path``, then rename it.

    A crash at any moment leaves either the previous file or the new one, never a torn one.
    """
    write_atomic(path, lambda handle: torch.save(obj, handle))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would (0666 less the umask), not
    the owner-only ones of a temporary file, so checkpoints stay readable on shared machines.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | Path, record: Any) -> None:
    """``record`` as indented JSON at ``path``, written atomically (:func:`write_atomic`)."""
    text = json.dumps(record, indent=2) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode()))


def read_weights(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors for missing,
    corrupt or unsafe (arbitrary-pickle) files.  ``mmap=True`` maps the tensors instead of
    reading them, for callers that only look at the meta of a large file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"{path} is not a readable cmim-dense checkpoint ({first_line(error)})") from None


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A cmim-dense checkpoint (a dict with ``model`` and ``meta``), read without unpickling code
    (``mmap``: see :func:`read_weights`)."""
    obj = read_weights(path, mmap)
    if not isinstance(obj, dict) or "model" not in obj or "meta" not in obj:
        raise ValueError(f"{path} is not a cmim-dense checkpoint (expected a dict with 'model' and 'meta')")
    return obj


def resumable_state(out: str | Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint a run in ``out`` continues from: ``out/last.pt`` with ``--resume``, None
    when there is none.  A run already in ``out`` is never overwritten without ``--resume``."""
    last = Path(out) / "last.pt"
    if not last.exists():
        return None
    if not resume:
        raise ValueError(f"{last} exists; add --resume to continue that run or choose another --out")
    return load_checkpoint(last)


def result_settings(config: Any, volatile: tuple[str, ...]) -> dict[str, Any]:
    """A configuration dataclass's values that define the run's result (what ``--resume`` must
    match): every field but the ``volatile`` ones, tuples as lists (as JSON reads them back)."""
    values = dataclasses.asdict(config)
    for key in volatile:
        values.pop(key)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def require_same_settings(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """``--resume`` continues only the run that wrote ``path``: every result-defining setting must match."""
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"--resume found {path} from a run with other settings ({'; '.join(changed)}); "
                         "rerun the original command or choose another --out")


def optimization_state(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> dict[str, Any]:
    """What a checkpoint needs besides the model to continue training: optimizer, lr schedule, AMP scaler."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}}


def restore_optimization(state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> None:
    """The inverse of :func:`optimization_state` (a run without AMP ignores a saved scaler, and vice versa)."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
