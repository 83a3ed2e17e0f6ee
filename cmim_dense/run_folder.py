"""One run owns an output folder at a time: an OS lock held for the run's life.

Every command that writes a folder (pretraining, fine-tuning, NYUD-v2 preparation, the pipeline)
holds an exclusive ``flock`` on ``FOLDER/.lock`` while it runs, and removes the file when it ends.
The operating system releases the lock when the process ends, however it ends, so the file a
kill -9 leaves behind is simply taken over.  A second run into a busy folder is refused in one line
that names the owner.  On taking a folder, the temporary files of
an atomic write that a killed run left behind (``.NAME.*.cmim_dense.tmp``, see ``write_atomic``)
are removed: no live writer can own them, since writers hold the lock; nothing else is touched.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"
TEMPORARY_SUFFIX = ".cmim_dense.tmp"  # an atomic write's temporary file (checkpoint_io): .NAME.RANDOM.cmim_dense.tmp


class FolderInUseError(OSError):
    """Another live process holds the folder's lock."""


def describe_this_process() -> str:
    """``pid N on HOST: COMMAND``, what a refused run is told about the owner."""
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return f"pid {os.getpid()} on {socket.gethostname()}: {command}"


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the ``.NAME.*.cmim_dense.tmp`` files an interrupted atomic write left in ``folder``
    (a user's own ``.notes.tmp`` stays)."""
    for path in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        path.unlink(missing_ok=True)


_HELD: set[int] = set()  # the descriptors of the locks this process holds


def _release_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies of the held locks: a flock lasts while
    any descriptor of it is open, so a worker outliving a killed run would keep its folder locked."""
    for descriptor in _HELD:
        os.close(descriptor)
    _HELD.clear()


os.register_at_fork(after_in_child=_release_in_child)


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _lock_descriptor(lock_path: Path, subject: str, wait: bool) -> int:
    """A descriptor of ``lock_path`` holding its exclusive flock.  The previous owner removes the file
    as it leaves, so a lock won on a file no longer at ``lock_path`` guards nothing: open it anew."""
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            try:
                owner = lock_path.read_text(errors="replace").strip() or "an unnamed process"
            except FileNotFoundError:  # the owner has just left
                continue
            raise FolderInUseError(
                f"{subject} is in use by another run ({owner}); wait for it to end or choose another output folder"
            ) from None
        if _same_file(descriptor, lock_path):
            return descriptor
        os.close(descriptor)


@contextmanager
def exclusive_lock(lock_path: Path, subject: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed) until the block ends,
    writing this process's description into it, and remove the file then.  When another process
    holds it: wait for it with ``wait`` (a shared cache being built), else raise
    :class:`FolderInUseError` (one line, naming the owner); ``subject`` names what the lock guards."""
    descriptor = _lock_descriptor(lock_path, subject, wait)
    _HELD.add(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, (describe_this_process() + "\n").encode())
        yield
    finally:
        if _same_file(descriptor, lock_path):
            lock_path.unlink()  # while still locked: a run that opened it meanwhile finds it gone and retries
        _HELD.discard(descriptor)
        os.close(descriptor)  # closing the last descriptor releases the flock


@contextmanager
def owned_folder(folder: str | Path) -> Iterator[Path]:
    """Create ``folder`` if needed, hold its lock (``FOLDER/.lock``) until the block ends, and
    first remove the temporaries a killed atomic write left in it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder / LOCK_NAME, str(folder)):
        remove_stale_temporaries(folder)
        yield folder
