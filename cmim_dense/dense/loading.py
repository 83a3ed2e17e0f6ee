"""Rebuild dense models from files: over a pretraining checkpoint's backbone (to fine-tune it), or
a fine-tuned model from its own checkpoint alone (to evaluate or draw it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import segmentation_models_pytorch as smp

from ..checkpoint_io import checkpoint_as, load_checkpoint_as
from ..cli import first_line
from ..data.classification import IMAGENET_MEAN, IMAGENET_STD
from ..data.nyud import JointTransform, NYUDv2, SeededSamples
from ..data.nyud_source import nyud_root
from ..models import backbone_checkpoint
from .encoder import BinaryResNetEncoder
from .model import create_dense_model, freeze_backbone
from .multitask import MultiTaskDenseModel
from .tasks import DenseTask, get_task

IMAGENET_NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def dense_model_from_backbone(path: str | Path, out_channels: int | dict[str, int], head: str = "deeplabv3",
                              output_stride: int = 8, decoder_channels: int = 256, freeze: bool = True,
                              binary_head: str | None = None
                              ) -> tuple[smp.SegmentationModel | MultiTaskDenseModel, dict[str, Any]]:
    """The dense model over the backbone at ``path`` (a checkpoint of ``pretrain/run.py`` or of
    ``python -m cmim_dense.convert``, or a torchvision/timm ResNet state dict), and that backbone's
    identity (:func:`backbone_identity`); ``out_channels`` a dict: the multi-task model of those tasks.

    ``freeze`` (the CMIM paper's protocol): no backbone parameter is trained, its BatchNorm
    statistics stay fixed, and it runs under ``no_grad``; only the head learns.
    """
    checkpoint = backbone_checkpoint(path)
    meta = checkpoint["meta"]
    model = create_dense_model(meta["arch"], meta["method"], out_channels, head, output_stride, decoder_channels,
                               meta.get("real_weights", False), binary_head)
    encoder: BinaryResNetEncoder = model.encoder
    encoder.load_backbone(checkpoint["model"], str(path))
    if freeze:
        freeze_backbone(model)
    return model, backbone_identity(meta)


BACKBONE_IDENTITY = ("method", "arch", "num_classes", "top1", "top5", "epoch", "data", "real_weights", "normalization")


def backbone_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What a dense model's checkpoint and metrics.json record of its backbone's meta: what rebuilds it,
    its input normalisation, and the ImageNet accuracy the charts draw."""
    return {key: meta[key] for key in BACKBONE_IDENTITY if key in meta}


def dense_skeleton(meta: dict[str, Any]) -> smp.SegmentationModel | MultiTaskDenseModel:
    """The untrained dense model a fine-tuned checkpoint's (or its export's) ``meta`` describes."""
    identity = meta["backbone_meta"]
    return create_dense_model(identity["arch"], identity["method"], meta["out_channels"], meta["head"],
                              meta["output_stride"], meta["decoder_channels"], identity.get("real_weights", False),
                              meta.get("binary_head"))


def dense_model_from_checkpoint(path: str | Path, contents: Any = None
                                ) -> tuple[smp.SegmentationModel | MultiTaskDenseModel, dict[str, Any]]:
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


def head_teacher(path: str | Path, task: str, out_channels: int | dict[str, int], backbone: str | Path
                 ) -> smp.SegmentationModel | MultiTaskDenseModel:
    """The fine-tuned model at ``path`` (frozen, eval mode) as the teacher of a head fine-tuned for
    ``task`` with ``out_channels`` over ``backbone`` (``--head-teacher``): one line when it was
    fine-tuned for other tasks or outputs or over another backbone (its outputs would not be targets
    for this head)."""
    model, meta = dense_model_from_checkpoint(path)
    if meta["task"] != task:
        raise ValueError(f"--head-teacher {path} was fine-tuned for {meta['task']}, not {task}; give a teacher of "
                         "the same task(s)")
    if meta["out_channels"] != out_channels:
        raise ValueError(f"--head-teacher {path} has {meta['out_channels']} outputs, this head {out_channels} "
                         "(another --classes?); give a teacher with the same outputs")
    if Path(meta["backbone"]).resolve() != Path(backbone).resolve():
        raise ValueError(f"--head-teacher {path} was fine-tuned over {meta['backbone']}, not {backbone}; give a "
                         "teacher over the same backbone")
    for parameter in model.parameters():
        parameter.requires_grad = False
    return model


def input_normalization(identity: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation the backbone was pretrained with (ImageNet's when not recorded)."""
    norm = identity.get("normalization", IMAGENET_NORMALIZATION)
    return tuple(norm["mean"]), tuple(norm["std"])


@dataclass(frozen=True)
class TaskData:
    """A task's two NYUD-v2 splits as a run reads them.

    ``train``: the training frames as stored (the head's initial bias and the constant baseline read
    them; :meth:`training_samples` augments them); ``test``: the test frames at full resolution,
    normalised as the backbone was pretrained (``normalization``)."""

    train: NYUDv2
    test: NYUDv2
    normalization: tuple[tuple[float, ...], tuple[float, ...]]

    def training_samples(self, crop: tuple[int, int], scale: tuple[float, float]) -> SeededSamples:
        """The training frames randomly scaled, cropped to ``crop`` and flipped, seeded per sample."""
        return SeededSamples(self.train, JointTransform(*self.normalization, crop=crop, scale=scale))


def open_task_data(root: Path, tasks: Sequence[DenseTask], classes: int, depth_gt: str, identity: dict[str, Any]
                   ) -> TaskData:
    """Both splits of the prepared layout at ``root`` with the targets of ``tasks``, for a backbone of ``identity``."""
    normalization = input_normalization(identity)
    options = {key: value for task in tasks for key, value in task.dataset_options().items()}
    train, test = (NYUDv2(root, split, classes, transform, depth=depth_gt, **options)
                   for split, transform in (("train", None), ("test", JointTransform(*normalization))))
    return TaskData(train, test, normalization)


def task_data_of(meta: dict[str, Any], data: str | None = None) -> TaskData:
    """The splits a fine-tuned model (its checkpoint's ``meta``) is evaluated on: its own ``--data``
    or ``data``, its classes, depth ground truth and task targets, for its backbone."""
    settings = meta["config"]
    tasks = [get_task(name) for name in meta["task"].split(",")]
    return open_task_data(nyud_root(data or settings["data"]), tasks, settings["classes"],
                          settings["depth_gt"], meta["backbone_meta"])
