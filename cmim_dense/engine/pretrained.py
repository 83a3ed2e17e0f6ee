"""A pretraining checkpoint together with the classification data to run it on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import ClassificationData, build_classification_data
from ..models.loading import require_meta
from .checkpoint import load_checkpoint_as


def checkpoint_with_data(path: str | Path, data: str | None = None, synthetic_samples: int | None = None
                         ) -> tuple[dict[str, Any], ClassificationData]:
    """A checkpoint of pretrain/run.py and its data: ``data``, or the data it was trained on, at
    its image size and seed (``synthetic_samples`` sizes the built-in set's training split, its
    validation split then a quarter of it; default: both as trained).
    A checkpoint from elsewhere, or data with another number of classes, is refused in one line."""
    checkpoint = load_checkpoint_as(path, "backbone")
    meta = require_meta(checkpoint["meta"], ("image_size", "config"), path)
    settings = meta["config"]
    sizes = ((synthetic_samples, None) if synthetic_samples is not None
             else (settings.get("synthetic_samples", 2000), settings.get("synthetic_val_samples")))
    dataset = build_classification_data(data or settings["data"], meta["image_size"], settings["seed"], *sizes)
    if dataset.num_classes != meta["num_classes"]:
        raise ValueError(f"{path} predicts {meta['num_classes']} classes but {dataset.description} has "
                         f"{dataset.num_classes}")
    return checkpoint, dataset
