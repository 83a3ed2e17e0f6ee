"""The one folder where cmim-dense keeps what it can rebuild on demand: the built-in NYUD-v2 rooms
(``nyud/``) and the compiled 1-bit kernel (``native/``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CACHE_VARIABLE = "CMIM_DENSE_CACHE"


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """``$CMIM_DENSE_CACHE`` when set, else ``$XDG_CACHE_HOME/cmim_dense``, else ``~/.cache/cmim_dense``
    (the place torch and Hugging Face also use): the same folder whatever the working directory."""
    if environ.get(CACHE_VARIABLE):
        return Path(environ[CACHE_VARIABLE]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cmim_dense"
