"""Where a fine-tuning's ``--data`` lives: a prepared NYUD-v2 layout, or the built-in rooms."""

from __future__ import annotations

import os
from pathlib import Path

from .synthetic_nyud import ensure_synthetic_nyud


def nyud_root(data: str, progress: bool = False) -> Path:
    """A prepared layout: ``data`` itself, or for ``synthetic`` the built-in set, rendered and
    prepared on first use under $CMIM_DENSE_CACHE (default ``runs/data``)."""
    if data == "synthetic":
        return ensure_synthetic_nyud(Path(os.environ.get("CMIM_DENSE_CACHE", "runs/data")) / "nyud", progress=progress)
    return Path(data)
