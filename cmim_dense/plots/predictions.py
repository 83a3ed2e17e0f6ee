"""Predictions of fine-tuned models on chosen test images, for the qualitative grid (Fig. 5a)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..dense import TASKS, dense_model_from_checkpoint, get_task
from ..dense.loading import task_data_of
from .common import save_figure
from .qualitative import QualitativeRow, QualitativeSample, TaskPanels, qualitative_grid


@torch.no_grad()
def predict(path: str | Path, indices: Sequence[int]) -> tuple[dict[str, Any], list[tuple[np.ndarray, dict]]]:
    """The fine-tuned model at ``path`` on test images ``indices``: its meta, and (prediction, raw
    sample) pairs, the prediction shaped like the raw sample's target (normals channels-last)."""
    model, meta = dense_model_from_checkpoint(path)
    task = get_task(meta["task"])
    test = task_data_of(meta).test
    transform, test.transform = test.transform, None
    outputs = []
    for index in indices:
        if not 0 <= index < len(test):
            raise ValueError(f"test image {index} does not exist: the test split has {len(test)} images")
        raw = test[index]
        prediction = task.prediction(model(transform(raw)["image"][None]))[0].numpy()
        outputs.append((np.moveaxis(prediction, 0, -1) if prediction.ndim == 3 else prediction, raw))
    return meta, outputs


def qualitative_rows(runs: Sequence[str | Path], indices: Sequence[int]) -> tuple[list[QualitativeRow], int]:
    """One row per run folder holding ``TASK/last.pt`` for one or more tasks (as the main job writes
    them; the same tasks in every folder), and the segmentation class count."""
    rows, classes, shown = [], set(), None
    for run in runs:
        run = Path(run)
        tasks = [name for name in TASKS.registered() if (run / name / "last.pt").is_file()]
        if not tasks:
            raise ValueError(f"{run} holds no fine-tuned model (expected TASK/last.pt, TASK one of "
                             f"{', '.join(TASKS.registered())})")
        if shown is not None and tasks != shown:
            raise ValueError(f"{run} holds {', '.join(tasks)} runs, the first folder {', '.join(shown)}")
        shown = tasks
        metas, outputs = zip(*(predict(run / name / "last.pt", indices) for name in tasks))
        samples = []
        for per_task in zip(*outputs):  # one image: (prediction, raw sample) of each task
            panels = [TaskPanels(task.title, task.display, raw[task.target], prediction)
                      for task, (prediction, raw) in zip(map(get_task, tasks), per_task)]
            samples.append(QualitativeSample(per_task[0][1]["image"], panels))
        rows.append(QualitativeRow(metas[0]["backbone_meta"].get("method", run.name), samples))
        classes.update(meta["classes"] for meta in metas)
    if len(classes) > 1:
        raise ValueError(f"the runs segment into different class sets ({sorted(classes)}); choose runs of one")
    return rows, classes.pop()


def qualitative_chart(runs: Sequence[str | Path], indices: Sequence[int], out: str | Path) -> list[Path]:
    """The qualitative grid (Fig. 5a) of ``runs`` on test images ``indices``, saved as ``out``.png/.svg."""
    rows, classes = qualitative_rows(runs, indices)
    return save_figure(qualitative_grid(rows, classes=classes), out)
