"""Rebuild backbones from files: our self-describing checkpoints and plain ResNet state dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from ..checkpoint_io import load_checkpoint_as, read_weights, require_role
from ..data import ClassificationData, build_classification_data
from .factory import create_model
from .resnet import BinaryResNet


def require_meta(meta: Any, keys: Sequence[str], source: str | Path,
                 hint: str = "not written by pretrain/run.py?") -> dict[str, Any]:
    """``meta`` when it is a dict holding every one of ``keys``; otherwise a one-line ValueError
    naming what ``source`` lacks, so no reader meets a bare KeyError."""
    if not isinstance(meta, dict):
        raise ValueError(f"{source} holds no meta dict ({hint})")
    missing = [key for key in keys if key not in meta]
    if missing:
        raise ValueError(f"{source} meta lacks {', '.join(missing)} ({hint})")
    return meta


def model_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint", **kwargs: Any) -> BinaryResNet:
    """The backbone a checkpoint's ``meta`` describes, with its weights (``kwargs`` go to create_model)."""
    meta = require_meta(checkpoint["meta"], ("arch", "method", "num_classes"), source)
    kwargs.setdefault("real_weights", meta.get("real_weights", False))
    model = create_model(meta["arch"], meta["method"], num_classes=meta["num_classes"], **kwargs)
    load_strict(model, checkpoint["model"], source)
    return model


def load_strict(model: BinaryResNet, state: dict[str, Tensor], source: str) -> None:
    """load_state_dict(strict=True) with a one-line error naming what does not fit."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        detail = str(error).strip().splitlines()[-1].strip()
        raise ValueError(f"{source} does not fit a {model.arch} {model.recipe.name} model: {detail}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise ValueError(
            f"{source} does not fit a {model.arch} {model.recipe.name} model: {', '.join(problems)} keys"
        )


def resnet_from_state_dict(state: dict[str, Tensor], source: str) -> BinaryResNet:
    """A full-precision ResNet from a torchvision/timm-style state dict (arch and classes inferred)."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if "conv1.weight" not in state or "fc.weight" not in state:
        raise ValueError(f"{source} is not a ResNet state dict (no conv1.weight / fc.weight)")
    if state["conv1.weight"].shape[-1] == 3:
        arch = "resnet18_cifar"
    else:
        arch = "resnet34" if "layer3.5.conv1.weight" in state else "resnet18"
    model = create_model(arch, "fp", num_classes=state["fc.weight"].shape[0])
    load_strict(model, state, source)
    return model


def load_teacher(path: str | Path) -> BinaryResNet:
    """A frozen full-precision teacher from one of our checkpoints or a plain ResNet state dict."""
    obj = read_weights(path)
    if isinstance(obj, dict) and "model" in obj and "meta" in obj:
        require_role(obj, "backbone", f"teacher {path}")  # e.g. a fine-tuned dense model: no method to read
        if obj["meta"]["method"] != "fp":
            raise ValueError(f"teacher {path} is a {obj['meta']['method']} model; a teacher must be full precision (fp)")
        model = model_from_checkpoint(obj, f"teacher {path}")
    elif isinstance(obj, dict):
        model = resnet_from_state_dict(obj.get("state_dict", obj), f"teacher {path}")
    else:
        raise ValueError(f"teacher {path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


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
