"""Where a fine-tuning's ``--data`` lives: a prepared NYUD-v2 layout, or the built-in rooms."""

from __future__ import annotations

from pathlib import Path

from ..cache import cache_root
from .synthetic_nyud import ensure_synthetic_nyud


def nyud_root(data: str, progress: bool = False) -> Path:
    """A prepared layout: ``data`` itself, or for ``synthetic`` the built-in set, rendered and
    prepared on first use in the cache (:func:`cmim_dense.cache.cache_root`)."""
    if data == "synthetic":
        return ensure_synthetic_nyud(cache_root() / "nyud", progress=progress)
    return Path(data)
