"""CIFAR-10/100 from the official python-pickle folders, read without executing pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

CIFAR_FOLDERS = {"cifar-10-batches-py": 10, "cifar-100-python": 100}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels (N,) int64) of one CIFAR batch file."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing from the CIFAR folder") from None
    except Exception as error:
        raise ValueError(f"{path} is not a CIFAR python batch ({type(error).__name__}: {error})") from None
    if len(labels) != len(images):
        raise ValueError(f"{path} has {len(images)} images but {len(labels)} labels")
    return images, labels


def find_cifar(root: str | Path) -> tuple[Path, int] | None:
    """The CIFAR folder at or directly under ``root`` and its class count, or None."""
    root = Path(root)
    for name, classes in CIFAR_FOLDERS.items():
        for candidate in (root, root / name):
            if candidate.name == name and candidate.is_dir():
                return candidate, classes
    return None


class CIFAR(Dataset):
    """CIFAR train or test split; training adds 4-pixel reflect-padded random crops and flips."""

    def __init__(self, folder: Path, num_classes: int, split: str) -> None:
        if num_classes == 10:
            files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        else:
            files = ["train" if split == "train" else "test"]
        parts = [read_batch(folder / name) for name in files]
        self.images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        if self.labels.numel() and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            raise ValueError(f"{folder}: labels outside 0..{num_classes - 1}")
        self.augment = split == "train"
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index].permute(2, 0, 1).float() / 255.0
        if self.augment:
            padded = torch.nn.functional.pad(image[None], (4, 4, 4, 4), mode="reflect")[0]
            top, left = torch.randint(0, 9, (2,)).tolist()
            image = padded[:, top : top + 32, left : left + 32]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return (image - self.mean) / self.std, int(self.labels[index])
