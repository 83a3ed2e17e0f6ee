"""Predictions of fine-tuned models on chosen test images, for the qualitative grid (Fig. 5a)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..engine.finetune import load_head_checkpoint, test_split
from .common import save_figure
from .qualitative import QualitativeRow, QualitativeSample, qualitative_grid


@torch.no_grad()
def predict(path: str | Path, indices: Sequence[int]) -> tuple[dict, list[tuple[np.ndarray, dict]]]:
    """The fine-tuned model at ``path`` on test images ``indices``: its meta, and (output, raw sample) pairs."""
    model, meta, config = load_head_checkpoint(path)
    test = test_split(config, meta["backbone_meta"])
    transform, test.transform = test.transform, None
    outputs = []
    for index in indices:
        if not 0 <= index < len(test):
            raise ValueError(f"test image {index} does not exist: the test split has {len(test)} images")
        raw = test[index]
        output = model(transform(raw)["image"][None])[0]
        outputs.append((output.argmax(0).numpy() if meta["task"] == "seg" else output[0].numpy(), raw))
    return meta, outputs


def qualitative_rows(runs: Sequence[str | Path], indices: Sequence[int]) -> tuple[list[QualitativeRow], int]:
    """One row per run folder holding ``seg/last.pt`` and ``depth/last.pt`` (as the main job writes
    them), and the segmentation class count."""
    rows, classes = [], set()
    for run in runs:
        run = Path(run)
        seg_meta, seg = predict(run / "seg" / "last.pt", indices)
        _, depth = predict(run / "depth" / "last.pt", indices)
        samples = [QualitativeSample(raw["image"], raw["label"], label, raw["depth"], predicted_depth)
                   for (label, raw), (predicted_depth, _) in zip(seg, depth)]
        rows.append(QualitativeRow(seg_meta["backbone_meta"].get("method", run.name), samples))
        classes.add(seg_meta["classes"])
    if len(classes) > 1:
        raise ValueError(f"the runs segment into different class sets ({sorted(classes)}); choose runs of one")
    return rows, classes.pop()


def qualitative_chart(runs: Sequence[str | Path], indices: Sequence[int], out: str | Path) -> list[Path]:
    """The qualitative grid (Fig. 5a) of ``runs`` on test images ``indices``, saved as ``out``.png/.svg."""
    rows, classes = qualitative_rows(runs, indices)
    return save_figure(qualitative_grid(rows, classes=classes), out)
