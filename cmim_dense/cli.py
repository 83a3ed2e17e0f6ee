"""What every command line shares: errors a user can fix print one line and exit with status 2."""

from __future__ import annotations

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


def report_user_errors(job: Callable[[], T]) -> tuple[int, T | None]:
    """``(0, job())``, or ``(2, None)`` after printing ``error: ...`` on stderr for a user error."""
    try:
        return 0, job()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2, None
