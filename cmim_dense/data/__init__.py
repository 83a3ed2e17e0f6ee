"""Data sets: the built-in synthetic world (object photographs and rooms) and loaders of the real on-disk formats."""

from typing import Any

from .classification import (
    ClassificationData,
    WithIndex,
    build_classification_data,
    image_folder_data,
    synthetic_data,
)
from .synthetic_objects import SyntheticObjects

__all__ = [
    "ClassificationData",
    "NYUDv2",
    "SyntheticObjects",
    "WithIndex",
    "build_classification_data",
    "image_folder_data",
    "synthetic_data",
]


def __getattr__(name: str) -> Any:
    """``NYUDv2`` on first use: it imports albumentations (seconds), which pretraining never needs."""
    if name == "NYUDv2":
        from .nyud import NYUDv2

        return NYUDv2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
