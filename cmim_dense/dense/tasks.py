"""Dense tasks on NYUD-v2: everything that differs between segmentation, depth and surface normals.

A :class:`DenseTask` declares what the rest of the toolkit needs to know about one task: which
sample key holds its ground truth, how many output channels its head has, its loss, its
evaluator and the metrics it reports (the first is the headline of charts and tables), the
constant predictor it must beat, its training augmentation range, how its head starts, how a
prediction is read off the head's output and how it is drawn.  The fine-tuning engine, the
command line, the pipeline and the figures look tasks up in :data:`TASKS` and hold no branch on a
task's name, so adding a task is one subclass registered here (docs/architecture.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.nyud import NYUDv2, normals_channels_first
from ..metrics import DepthMeter, NormalsMeter, SegmentationMeter
from ..registry import Registry
from .losses import DEPTH_LOSSES, depth_loss, normals_loss

Display = Literal["classes", "metres", "unit_vectors"]


class TaskSettings(Protocol):
    """The fine-tuning settings a task reads (a :class:`~cmim_dense.engine.finetune_config.FinetuneConfig`)."""

    classes: int
    depth_loss: str
    depth_gt: str
    depth_cap: float | None
    eigen_crop: bool


class Meter(Protocol):
    """An evaluator accumulated over a test set: ``update(prediction, target)``, then ``compute()``."""

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self, reduce: bool = True) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Metric:
    """One reported number of a task: its metrics.json key, its label, whether it is a fraction
    shown in %, whether higher is better, and the decimals tables show it with (fractions: 2 in %)."""

    key: str
    label: str
    percent: bool = False
    higher_is_better: bool = True
    decimals: int = 4


class DenseTask(ABC):
    """One dense prediction task (a registry entry of :data:`TASKS`).

    Class attributes: ``name`` (the ``--task`` value and the run folder name), ``title``,
    ``target`` (the sample key of its ground truth), ``metrics`` (reported, headline first),
    ``table`` (the keys of the results table's columns, unique across tasks), ``printed`` (the
    keys the command line prints), ``scale`` (the random-scale range of the training
    augmentation), ``synthetic_schedule`` (overrides of the built-in data's fine-tuning schedule),
    ``display`` (how predictions are drawn), ``protocol_keys`` (metrics.json keys that must
    agree across runs compared in one chart) and ``classification`` (a per-pixel classifier, not a
    regression: how the uncertainty weighting of a multi-task run scales its loss).  Geometric target transforms (crops, flips, and the
    x component of a normal negated by a flip) belong to the data's joint transform, which knows
    each array's kind (:class:`~cmim_dense.data.nyud.JointTransform`).
    """

    name: str
    title: str
    target: str
    metrics: tuple[Metric, ...]
    table: tuple[str, ...]
    printed: tuple[str, ...]
    scale: tuple[float, float] = (1.0, 1.0)
    synthetic_schedule: ClassVar[dict[str, Any]] = {}
    display: Display
    protocol_keys: tuple[str, ...] = ()
    classification: ClassVar[bool] = False  # a softmax likelihood (uncertainty weighting, dense/multitask.py)

    @property
    def headline(self) -> Metric:
        return self.metrics[0]

    def metric(self, key: str) -> Metric:
        return next(m for m in self.metrics if m.key == key)

    @abstractmethod
    def out_channels(self, settings: TaskSettings) -> int:
        """The head's output channels."""

    @abstractmethod
    def loss(self, output: Tensor, target: Tensor, settings: TaskSettings) -> Tensor:
        """The training loss of the head's ``output`` (N, C, H, W) against the batch's target."""

    def distillation(self, output: Tensor, teacher: Tensor) -> Tensor:
        """The distillation loss of the head's ``output`` towards a teacher head's output (both N, C, H,
        W) over every pixel, ground truth or not (``--head-teacher``); default: the mean squared
        difference of the outputs (Ba & Caruana 2014)."""
        return F.mse_loss(output.float(), teacher.float())

    @abstractmethod
    def meter(self, settings: TaskSettings, dataset: NYUDv2) -> Meter:
        """A fresh evaluator for the test split ``dataset``."""

    @abstractmethod
    def prediction(self, output: Tensor) -> Tensor:
        """What the evaluator and the figures take from the head's output (N, C, H, W)."""

    @abstractmethod
    def constant(self, train: NYUDv2) -> tuple[Tensor, str]:
        """The trivial baseline, a prediction constant over pixels and images computed on the
        training split, broadcastable to one test target; and its description."""

    def dataset_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~cmim_dense.data.NYUDv2` that load this task's target
        (segmentation labels and depth are always loaded)."""
        return {}

    def stored_target(self, frame: np.ndarray) -> Tensor:
        """One frame of the prepared layout's target array as a batch of one, shaped like a
        transformed batch's target."""
        return torch.from_numpy(np.array(frame))[None]

    def initialise_head(self, bias: Tensor, train: NYUDv2) -> None:
        """Start the head's last convolution (its ``bias``) somewhere sensible; default: as built."""

    def check_record(self, record: dict[str, Any]) -> None:
        """One-line ValueError when the metrics of a metrics.json of this task hold impossible
        values (``record``: those of its metrics it has, checked to be finite numbers)."""
        for metric in self.metrics:
            if metric.percent and metric.key in record and not 0.0 <= record[metric.key] <= 1.0:
                raise ValueError(f"{metric.key} {record[metric.key]} is not a fraction in [0, 1]")

    def record_extras(self, settings: TaskSettings) -> dict[str, Any]:
        """Protocol details written into metrics.json beside the metrics."""
        return {}


def evaluate_constant(task: DenseTask, settings: TaskSettings, train: NYUDv2, test: NYUDv2) -> dict[str, Any]:
    """The metrics of ``task``'s constant predictor over the whole test split (computed by one
    process, without collective calls), with its description under ``predictor``."""
    constant, description = task.constant(train)
    meter = task.meter(settings, test)
    for frame in test.array(task.target):
        target = task.stored_target(frame)
        meter.update(constant.expand_as(target), target)
    result = meter.compute(reduce=False)
    return {"predictor": description, **{m.key: result[m.key] for m in task.metrics}}


TASKS: Registry[DenseTask] = Registry("task")


def register_task(task: type[DenseTask]) -> type[DenseTask]:
    """Class decorator: add one instance of ``task`` to :data:`TASKS` under its name."""
    TASKS.add(task.name, task())
    return task


def get_task(name: str) -> DenseTask:
    return TASKS.get(name)


@register_task
class Segmentation(DenseTask):
    """Semantic segmentation into the 40 or 13 NYUD-v2 classes: cross-entropy with unlabelled
    pixels (255) ignored; mIoU over the accumulated confusion matrix (metrics.py)."""

    name, title, target, display = "seg", "semantic segmentation", "label", "classes"
    metrics = (Metric("miou", "mIoU", percent=True), Metric("pixel_acc", "pixel acc.", percent=True),
               Metric("mean_acc", "mean acc.", percent=True))
    table = ("miou", "pixel_acc")
    printed = ("miou", "pixel_acc", "mean_acc")
    scale = (0.5, 2.0)
    protocol_keys = ("classes",)
    classification = True

    def out_channels(self, settings: TaskSettings) -> int:
        return settings.classes

    def loss(self, output: Tensor, target: Tensor, settings: TaskSettings) -> Tensor:
        return F.cross_entropy(output.float(), target, ignore_index=255)

    def distillation(self, output: Tensor, teacher: Tensor) -> Tensor:
        """Hinton et al. (2015) at temperature 1, per pixel: KL(p_teacher || p_student) over the
        classes, averaged over pixels."""
        student, target = F.log_softmax(output.float(), dim=1), F.log_softmax(teacher.float(), dim=1)
        return (target.exp() * (target - student)).sum(dim=1).mean()

    def meter(self, settings: TaskSettings, dataset: NYUDv2) -> Meter:
        return SegmentationMeter(dataset.classes, class_names=dataset.class_names)

    def prediction(self, output: Tensor) -> Tensor:
        return output.argmax(1)

    def constant(self, train: NYUDv2) -> tuple[Tensor, str]:
        majority = train.majority_class
        return torch.tensor(majority), f"class {majority} ({train.class_names[majority]}) everywhere"


@register_task
class Depth(DenseTask):
    """Monocular depth in metres: L1 (or berHu) on pixels with ground truth; RMSE pooled over
    the test pixels and its companions (metrics.py).  The head starts at the mean training depth."""

    name, title, target, display = "depth", "depth", "depth", "metres"
    metrics = (Metric("neg_log_rmse", "−ln RMSE"), Metric("rmse", "RMSE (m)", higher_is_better=False),
               Metric("abs_rel", "abs. rel.", higher_is_better=False), Metric("delta1", "δ<1.25", percent=True))
    table = ("neg_log_rmse", "rmse", "delta1")
    printed = ("rmse", "neg_log_rmse", "abs_rel", "delta1")
    synthetic_schedule: ClassVar[dict[str, Any]] = {"lr": 3e-3, "iters": 600, "lr_step": 400}
    protocol_keys = ("depth_gt",)

    def out_channels(self, settings: TaskSettings) -> int:
        return 1

    def loss(self, output: Tensor, target: Tensor, settings: TaskSettings) -> Tensor:
        return depth_loss(settings.depth_loss, output.float(), target)

    def distillation(self, output: Tensor, teacher: Tensor) -> Tensor:
        """Mean |d - d_teacher| in metres over every pixel."""
        return (output.float() - teacher.float()).abs().mean()

    def meter(self, settings: TaskSettings, dataset: NYUDv2) -> Meter:
        return DepthMeter(cap=settings.depth_cap, eigen_crop=settings.eigen_crop)

    def prediction(self, output: Tensor) -> Tensor:
        return output[:, 0]

    def constant(self, train: NYUDv2) -> tuple[Tensor, str]:
        return torch.tensor(train.mean_depth, dtype=torch.float64), f"{train.mean_depth:.3f} m everywhere"

    def initialise_head(self, bias: Tensor, train: NYUDv2) -> None:
        with torch.no_grad():
            bias.fill_(train.mean_depth)

    def check_record(self, record: dict[str, Any]) -> None:
        super().check_record(record)
        if record["rmse"] <= 0:
            raise ValueError(f"rmse {record['rmse']} is not positive")
        if not math.isclose(record["neg_log_rmse"], -math.log(record["rmse"]), abs_tol=1e-3):
            raise ValueError(f"neg_log_rmse {record['neg_log_rmse']} is not -ln(rmse {record['rmse']})")

    def record_extras(self, settings: TaskSettings) -> dict[str, Any]:
        return {"depth_gt": settings.depth_gt, "eigen_crop": settings.eigen_crop, "depth_cap": settings.depth_cap,
                "rmse_aggregation": "pooled over all valid test pixels (rmse_per_image: mean of per-image RMSE)",
                "neg_log_rmse_definition": "-ln(rmse in metres)"}


@register_task
class SurfaceNormals(DenseTask):
    """Surface normals, unit vectors in camera coordinates (x right, y down, z forward): the head's
    three channels are normalised and trained with the cosine loss 1 − cos(n̂, n*) over pixels with
    ground truth; angular errors in degrees and the fractions within 11.25°, 22.5° and 30° (metrics.py)."""

    name, title, target, display = "normals", "surface normals", "normals", "unit_vectors"
    metrics = (Metric("mean_angle", "mean angle (°)", higher_is_better=False, decimals=2),
               Metric("median_angle", "median angle (°)", higher_is_better=False, decimals=2),
               Metric("rmse_angle", "RMSE angle (°)", higher_is_better=False, decimals=2),
               Metric("within_11_25", "< 11.25°", percent=True), Metric("within_22_5", "< 22.5°", percent=True),
               Metric("within_30", "< 30°", percent=True))
    table = ("mean_angle", "median_angle", "within_11_25", "within_30")
    printed = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
    # the cosine loss is bounded and its gradients small, hence the large lr (its sweep: docs/nyud.md)
    synthetic_schedule: ClassVar[dict[str, Any]] = {"lr": 3e-1, "iters": 600, "lr_step": 400}

    def out_channels(self, settings: TaskSettings) -> int:
        return 3

    def loss(self, output: Tensor, target: Tensor, settings: TaskSettings) -> Tensor:
        return normals_loss(output.float(), target)

    def distillation(self, output: Tensor, teacher: Tensor) -> Tensor:
        """Mean 1 − cos between the student's and the teacher's normalised normals over every pixel."""
        return (1.0 - F.cosine_similarity(output.float(), teacher.float(), dim=1)).mean()

    def meter(self, settings: TaskSettings, dataset: NYUDv2) -> Meter:
        return NormalsMeter()

    def prediction(self, output: Tensor) -> Tensor:
        return F.normalize(output.float(), dim=1)

    def constant(self, train: NYUDv2) -> tuple[Tensor, str]:
        total = np.zeros(3)
        for frame in train.array("normals"):
            total += np.asarray(frame, dtype=np.float64).reshape(-1, 3).sum(0)  # invalid pixels are 0
        mean = torch.from_numpy(total / max(np.linalg.norm(total), 1e-12))
        x, y, z = mean.tolist()
        return mean.view(1, 3, 1, 1), f"({x:.2f}, {y:.2f}, {z:.2f}) everywhere (mean training normal)"

    def dataset_options(self) -> dict[str, Any]:
        return {"normals": True}

    def stored_target(self, frame: np.ndarray) -> Tensor:
        return normals_channels_first(np.array(frame, dtype=np.float32))[None]

    def check_record(self, record: dict[str, Any]) -> None:
        super().check_record(record)
        for key in ("mean_angle", "median_angle", "rmse_angle"):
            if key in record and not 0.0 <= record[key] <= 180.0:
                raise ValueError(f"{key} {record[key]} is not an angle in [0, 180] degrees")


__all__ = ["DEPTH_LOSSES", "DenseTask", "Metric", "TASKS", "TaskSettings", "evaluate_constant", "get_task",
           "register_task"]
