"""Rebuild dense models from files: over a pretraining checkpoint's backbone (to fine-tune it), or
a fine-tuned model from its own checkpoint alone (to evaluate or draw it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp

from ..checkpoint_io import checkpoint_as, load_checkpoint_as
from ..cli import first_line
from ..data.classification import IMAGENET_MEAN, IMAGENET_STD
from ..data.nyud import JointTransform, NYUDv2
from ..data.nyud_source import nyud_root
from ..models import backbone_checkpoint
from .encoder import BinaryResNetEncoder
from .model import create_dense_model, freeze_backbone
from .tasks import DenseTask, get_task

IMAGENET_NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def dense_model_from_backbone(path: str | Path, out_channels: int, head: str = "deeplabv3", output_stride: int = 8,
                              decoder_channels: int = 256, freeze: bool = True
                              ) -> tuple[smp.SegmentationModel, dict[str, Any]]:
    """The dense model over the backbone at ``path`` (a checkpoint of ``pretrain/run.py`` or of
    ``python -m cmim_dense.convert``, or a torchvision/timm ResNet state dict), and that backbone's meta.

    ``freeze`` (the CMIM paper's protocol): no backbone parameter is trained, its BatchNorm
    statistics stay fixed, and it runs under ``no_grad``; only the head learns.
    """
    checkpoint = backbone_checkpoint(path)
    meta = checkpoint["meta"]
    model = create_dense_model(meta["arch"], meta["method"], out_channels, head, output_stride, decoder_channels,
                               meta.get("real_weights", False))
    encoder: BinaryResNetEncoder = model.encoder
    encoder.load_backbone(checkpoint["model"], str(path))
    if freeze:
        freeze_backbone(model)
    return model, meta


def dense_skeleton(meta: dict[str, Any]) -> smp.SegmentationModel:
    """The untrained dense model a fine-tuned checkpoint's (or its export's) ``meta`` describes."""
    identity = meta["backbone_meta"]
    return create_dense_model(identity["arch"], identity["method"], meta["out_channels"], meta["head"],
                              meta["output_stride"], meta["decoder_channels"], identity.get("real_weights", False))


def dense_model_from_checkpoint(path: str | Path, contents: Any = None) -> tuple[smp.SegmentationModel, dict[str, Any]]:
    """A fine-tuned dense model rebuilt from its ``last.pt`` alone (frozen, eval mode), and its meta
    (``contents``: the file as :func:`~cmim_dense.checkpoint_io.read_weights` already read it)."""
    checkpoint = load_checkpoint_as(path, "dense") if contents is None else checkpoint_as(contents, "dense", path)
    meta = checkpoint["meta"]
    model = dense_skeleton(meta)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit its own description ({first_line(error)})") from None
    return freeze_backbone(model).eval(), meta


def input_normalization(backbone_meta: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation the backbone was pretrained with (ImageNet's when not recorded)."""
    norm = backbone_meta.get("normalization", IMAGENET_NORMALIZATION)
    return tuple(norm["mean"]), tuple(norm["std"])


def task_split(root: Path, split: str, task: DenseTask, classes: int, depth_gt: str,
               backbone_meta: dict[str, Any] | None = None) -> NYUDv2:
    """One split of the prepared layout at ``root`` with ``task``'s target loaded; with
    ``backbone_meta``, transformed for evaluation (normalised as that backbone was pretrained)."""
    transform = None if backbone_meta is None else JointTransform(*input_normalization(backbone_meta))
    return NYUDv2(root, split, classes, transform, depth=depth_gt, **task.dataset_options())


def evaluation_split(meta: dict[str, Any], data: str | None = None) -> NYUDv2:
    """The test split a fine-tuned model (its checkpoint's ``meta``) is evaluated on: its own
    ``--data`` or ``data``, its classes, depth ground truth and task target, normalised as its
    backbone was pretrained."""
    settings = meta["config"]
    return task_split(nyud_root(data or settings["data"]), "test", get_task(meta["task"]), settings["classes"],
                      settings["depth_gt"], meta["backbone_meta"])
