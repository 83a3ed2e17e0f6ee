"""``python -m cmim_dense.predict --model FILE IMAGE... --out DIR``: a fine-tuned dense model on your own images.

``FILE`` is a 1-bit export of a fine-tuned model (``python -m cmim_dense.export RUN/last.pt --out
FILE``; it runs on the packed XNOR-popcount kernel) or the fine-tuned ``last.pt`` itself.  Each
image, of any size and in any format Pillow reads, is normalised as the backbone was pretrained,
padded at the bottom and right to the output stride, predicted, and cropped back to its own size.
``DIR/NAME.png`` shows the prediction (classes in the NYUD-v2 palette, depth on viridis from the
image's nearest to its farthest predicted point, normals as RGB = (n + 1) / 2) and
``DIR/NAME.npy`` holds it (class ids (H, W) uint8, metres (H, W) float32, or unit normals (H, W, 3)
float32).
"""

from __future__ import annotations

import argparse
import sys
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
from .cli import report_user_errors
from .dense import DenseTask, dense_model_from_checkpoint, get_task
from .dense.loading import input_normalization
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


@torch.no_grad()
def predict_image(model: nn.Module, meta: dict, image: np.ndarray) -> np.ndarray:
    """The model's prediction for one (H, W, 3) uint8 image at its own resolution: class ids, metres,
    or unit normals channels-last."""
    mean, std = input_normalization(meta["backbone_meta"])
    tensor = A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])(image=image)["image"]
    height, width = image.shape[:2]
    multiple = meta["output_stride"]
    padded = F.pad(tensor[None], (0, -width % multiple, 0, -height % multiple))
    output = model(padded)[..., :height, :width].float()
    prediction = get_task(meta["task"]).prediction(output)[0].numpy()
    return np.moveaxis(prediction, 0, -1) if prediction.ndim == 3 else prediction


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
    """Predict every image and write ``out/NAME.png`` and ``out/NAME.npy``; every image is read first,
    so an unreadable one stops the command before anything is written.  Returns the files written."""
    model, meta = load_dense_model(model_path)
    task = get_task(meta["task"])
    names = [Path(image).stem for image in images]
    if len(set(names)) < len(names):
        raise ValueError("two images share a file name; their predictions would overwrite each other")
    arrays = [read_image(image) for image in images]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, array in zip(names, arrays):
        prediction = predict_image(model, meta, array)
        picture = Image.fromarray(render(prediction, task, meta["config"]["classes"]))
        write_atomic(out / f"{name}.png", lambda handle: picture.save(handle, format="PNG"))
        write_atomic(out / f"{name}.npy", lambda handle: np.save(handle, stored(prediction, task)))
        written += [out / f"{name}.png", out / f"{name}.npy"]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmim_dense.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a fine-tuned model's 1-bit export or its last.pt")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--out", required=True, help="folder for NAME.png and NAME.npy")
    args = parser.parse_args(argv)
    status, written = report_user_errors(lambda: predict_files(args.model, args.images, args.out))
    if written is not None:
        print(f"wrote {len(written) // 2} predictions to {args.out}/ (NAME.png, NAME.npy)")
    return status


if __name__ == "__main__":
    sys.exit(main())
