"""A fine-tuned dense model on one's own images: read, normalise, pad, predict, render and write
(:mod:`cmim_dense.predict` is its command line)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from matplotlib import colormaps
from PIL import Image, UnidentifiedImageError
from torch import nn

from .checkpoint_io import write_atomic
from .dense import DenseTask, dense_model_from_checkpoint, get_task
from .dense.loading import input_normalization
from .dense.multitask import task_outputs
from .export import load_exported
from .plots.palette import colorize
from .plots.qualitative import normals_rgb


def load_dense_model(path: str | Path) -> tuple[nn.Module, dict]:
    """A fine-tuned dense model in eval mode and its meta, from its 1-bit export (packed forward) or
    its ``last.pt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist")
    with path.open("rb") as handle:
        is_checkpoint = handle.read(2) == b"PK"  # torch.save writes a zip archive
    model, meta = dense_model_from_checkpoint(path) if is_checkpoint else load_exported(path, packed=True)
    if "task" not in meta:
        raise ValueError(f"{path} is a backbone export, not a fine-tuned dense model; export the last.pt of "
                         "finetune/nyud.py")
    return model, meta


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, or a one-line error naming it."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path} cannot be read as an image ({error})") from None


def input_transform(meta: dict) -> A.Compose:
    """(H, W, 3) uint8 -> a (3, H, W) float tensor normalised as the model's backbone was pretrained."""
    mean, std = input_normalization(meta["backbone_meta"])
    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])


@torch.no_grad()
def predict_image(model: nn.Module, meta: dict, transform: A.Compose, image: np.ndarray) -> dict[str, np.ndarray]:
    """Task name -> the model's prediction for one (H, W, 3) uint8 image at its own resolution (one
    task, or each of a multi-task model's; ``transform``: :func:`input_transform` of ``meta``): class
    ids, metres, or unit normals channels-last."""
    tensor = transform(image=image)["image"]
    height, width = image.shape[:2]
    multiple = meta["output_stride"]
    padded = F.pad(tensor[None], (0, -width % multiple, 0, -height % multiple))
    tasks = [get_task(name) for name in meta["task"].split(",")]
    outputs = task_outputs(model(padded), tasks)
    predictions = {}
    for task in tasks:
        prediction = task.prediction(outputs[task.name][..., :height, :width].float())[0].numpy()
        predictions[task.name] = np.moveaxis(prediction, 0, -1) if prediction.ndim == 3 else prediction
    return predictions


def render(prediction: np.ndarray, task: DenseTask, classes: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a prediction, drawn as the task displays it."""
    if task.display == "classes":
        return colorize(prediction, classes)
    if task.display == "unit_vectors":
        return (normals_rgb(prediction) * 255).round().astype(np.uint8)
    low, high = float(prediction.min()), float(prediction.max())
    scaled = (prediction - low) / max(high - low, 1e-6)
    return (colormaps["viridis"](scaled)[..., :3] * 255).round().astype(np.uint8)


def stored(prediction: np.ndarray, task: DenseTask) -> np.ndarray:
    """The array written to ``NAME.npy``: class ids as uint8, anything else as float32."""
    return prediction.astype(np.uint8 if task.display == "classes" else np.float32)


def predict_files(model_path: str | Path, images: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Predict every image and write ``out/NAME.png`` and ``out/NAME.npy`` (a multi-task model:
    ``out/NAME_TASK.*`` per task); every image is read first, so an unreadable one stops the command
    before anything is written.  Returns the files written."""
    model, meta = load_dense_model(model_path)
    multi_task = "," in meta["task"]
    names = [Path(image).stem for image in images]
    if len(set(names)) < len(names):
        raise ValueError("two images share a file name; their predictions would overwrite each other")
    arrays = [read_image(image) for image in images]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transform = input_transform(meta)
    written = []
    for name, array in zip(names, arrays):
        for task_name, prediction in predict_image(model, meta, transform, array).items():
            task, stem = get_task(task_name), f"{name}_{task_name}" if multi_task else name
            picture = Image.fromarray(render(prediction, task, meta["config"]["classes"]))
            write_atomic(out / f"{stem}.png", lambda handle: picture.save(handle, format="PNG"))
            write_atomic(out / f"{stem}.npy", lambda handle: np.save(handle, stored(prediction, task)))
            written += [out / f"{stem}.png", out / f"{stem}.npy"]
    return written
