"""What every command line shares: errors a user can fix print one line and exit with status 2."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

from .registry import UnknownNameError

T = TypeVar("T")
# what a user can cause and fix (a bad name, file, setting or a diverging run): one line, no traceback
USER_ERRORS = (UnknownNameError, ValueError, OSError, FloatingPointError)


def report_user_errors(job: Callable[[], T]) -> tuple[int, T | None]:
    """``(0, job())``, or ``(2, None)`` after printing ``error: ...`` on stderr for a user error."""
    try:
        return 0, job()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2, None
