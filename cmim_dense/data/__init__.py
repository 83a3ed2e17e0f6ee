"""Data sets: the built-in synthetic world (object photographs and rooms) and loaders of the real on-disk formats.

The names below are imported on first use: ``NYUDv2`` imports albumentations (seconds), which
pretraining never needs, and the dataset scripts' ``--help`` needs neither it nor torch.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

__all__ = ["ClassificationData", "NYUDv2", "SyntheticObjects", "WithIndex", "build_classification_data",
           "image_folder_data", "synthetic_data"]

__getattr__ = lazy_attributes(__name__, {
    **dict.fromkeys(("ClassificationData", "WithIndex", "build_classification_data", "image_folder_data",
                     "synthetic_data"), "classification"),
    "SyntheticObjects": "synthetic_objects", "NYUDv2": "nyud"})
