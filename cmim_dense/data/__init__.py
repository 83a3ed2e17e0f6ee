"""Data sets: the built-in synthetic sets and loaders of the real on-disk formats."""

from .classification import (
    ClassificationData,
    WithIndex,
    build_classification_data,
    image_folder_data,
    synthetic_data,
)
from .synthetic import SyntheticShapes

__all__ = [
    "ClassificationData",
    "SyntheticShapes",
    "WithIndex",
    "build_classification_data",
    "image_folder_data",
    "synthetic_data",
]
