"""What every command line shares: errors a user can fix print one line and exit with status 2."""

from __future__ import annotations

import errno
import sys
from typing import Callable, TypeVar

from .registry import UnknownNameError

T = TypeVar("T")
# what a user can cause and fix (a bad name, file, setting or a diverging run): one line, no traceback
USER_ERRORS = (UnknownNameError, ValueError, OSError, FloatingPointError)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty),
    for wrapping a library's multi-line error into one line of ours."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def user_message(error: BaseException) -> str:
    """The one line a user sees for ``error``:

    - raised in a DataLoader worker, torch re-raises it as "Caught E in DataLoader worker
      process N." followed by the worker's traceback: the original message is its last line;
    - an OS error of the system's own (``[Errno 13] Permission denied: 'x'``) becomes the path,
      the reason and what to check;
    - anything else: its first line.
    """
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        original = text.splitlines()[-1]
        return original.split(": ", 1)[1] if ": " in original else original
    if isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename is not None:
        return (f"cannot write {error.filename}: no space left on device; free some space there and rerun (the "
                "files written before are kept)")
    if isinstance(error, OSError) and error.errno is not None and error.filename is not None:
        return (f"cannot use {error.filename}: {error.strerror.lower()}; check that the path exists and that you "
                "may read and write there")
    return first_line(error)


INTERRUPTED = ("interrupted: every file written so far is complete; rerun the same command (with --resume for a "
               "training run) to continue")


def report_user_errors(job: Callable[[], T]) -> tuple[int, T | None]:
    """``(0, job())``, or ``(2, None)`` after printing ``error: ...`` (:func:`user_message`) on
    stderr for a user error, or ``(130, None)`` and one line for Ctrl-C (the shell's code for SIGINT)."""
    try:
        return 0, job()
    except USER_ERRORS as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130, None
