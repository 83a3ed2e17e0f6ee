"""Classification data for pretraining: the built-in synthetic world, CIFAR or an ImageNet-style folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from ..cli import first_line
from .cifar import CIFAR, CIFAR_MEAN, CIFAR_STD, find_cifar
from .synthetic_objects import SyntheticObjects

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WithIndex(Dataset):
    """Yields (image, label, index): the index addresses the sample's memory-bank row."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        image, label = self.dataset[index]
        return image, label, index


@dataclass
class ClassificationData:
    train: Dataset
    val: Dataset
    num_classes: int
    description: str
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the input normalisation, recorded in checkpoints
    std: tuple[float, float, float] = IMAGENET_STD


def synthetic_data(
    image_size: int = 32, num_classes: int = 13, train_size: int = 2000, val_size: int = 500, seed: int = 0
) -> ClassificationData:
    """The built-in pretraining world: object photographs of the built-in NYUD-v2 rooms' 13 classes
    (see :mod:`cmim_dense.data.synthetic_objects`)."""
    return ClassificationData(
        SyntheticObjects(train_size, num_classes, image_size, seed, "train"),
        SyntheticObjects(val_size, num_classes, image_size, seed, "val"),
        num_classes,
        f"synthetic(objects, {num_classes} classes, {train_size}/{val_size}, {image_size}px, seed {seed})",
        SyntheticObjects.mean,
        SyntheticObjects.std,
    )


def read_image(path: str) -> Image.Image:
    """The RGB image at ``path`` (ImageFolder's loader); a file PIL cannot decode is a one-line
    ValueError naming it, in the main process or in a DataLoader worker."""
    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError: OSError
        raise ValueError(f"{path} cannot be decoded as an image ({first_line(error)}); replace or delete the "
                         "file") from None


def image_folder_data(root: str | Path, image_size: int = 224) -> ClassificationData:
    """ImageNet-style ``root/train/<class>/*`` and ``root/val/<class>/*`` read by torchvision.

    Training: RandomResizedCrop + flip; evaluation: resize to image_size / 0.875 and
    centre crop (the standard 256 -> 224 protocol).
    """
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{root / split} is not a folder; --data expects an ImageNet-style folder with train/ and val/ "
                "sub-folders of one folder per class, a CIFAR python folder, or 'synthetic'"
            )
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(round(image_size / 0.875)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    try:
        train = datasets.ImageFolder(str(root / "train"), train_tf, loader=read_image)
        val = datasets.ImageFolder(str(root / "val"), val_tf, loader=read_image)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{root}: {error}; each split needs one sub-folder per class with images") from None
    if train.classes != val.classes:
        raise ValueError(f"{root}: train/ and val/ have different class folders")
    return ClassificationData(train, val, len(train.classes), f"imagefolder({root})")


def build_classification_data(
    data: str, image_size: int, seed: int = 0, synthetic_samples: int = 2000, synthetic_val_samples: int | None = None
) -> ClassificationData:
    """``data`` is ``synthetic`` (``synthetic_samples`` training images, ``synthetic_val_samples``
    for validation, default a quarter as many), a CIFAR-10/100 python folder, or an ImageNet-style folder."""
    if data == "synthetic":
        val_size = synthetic_samples // 4 if synthetic_val_samples is None else synthetic_val_samples
        return synthetic_data(image_size, train_size=synthetic_samples, val_size=val_size, seed=seed)
    cifar = find_cifar(data)
    if cifar is not None:
        if image_size != 32:
            raise ValueError(f"CIFAR images are 32x32; drop --image-size {image_size}")
        folder, classes = cifar
        return ClassificationData(
            CIFAR(folder, classes, "train"), CIFAR(folder, classes, "test"), classes, f"cifar{classes}({folder})",
            CIFAR_MEAN, CIFAR_STD,
        )
    return image_folder_data(data, image_size)
