"""One dense model for several tasks: one encoder forward, one smp decoder and output layer per task.

The layout of multi-task dense prediction on NYUD-v2 (a shared backbone, a head per task; Bi-MTDP's
with binary heads): :class:`MultiTaskDenseModel` runs the (frozen) backbone once per batch and
every task's branch on its features, so three tasks cost one backbone forward instead of three.
Each branch is the decoder and output layer of the single-task model of that task, built by the
same :func:`~cmim_dense.dense.model.create_dense_model` (a binary head too).

The task losses combine by a :class:`TaskWeighting` (``--task-weighting``): fixed weights, or the
homoscedastic uncertainty weighting of Kendall, Gal & Cipolla (CVPR 2018, Eq. 7).  With a frozen
backbone the branches share no trained parameter, so a task's weight only scales its own head's
gradient: fixed weights act as per-task learning rates (docs/binary_heads.md, "One multi-task model").
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn

from ..registry import Registry
from .tasks import DenseTask


class TaskBranch(nn.Module):
    """One task's decoder and output layer (smp's ``decoder`` and ``segmentation_head``) over shared features."""

    def __init__(self, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.decoder, self.head = decoder, head

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.head(self.decoder(features))


class MultiTaskDenseModel(nn.Module):
    """A shared encoder and a :class:`TaskBranch` per task; ``forward`` returns task name -> output.

    Freezing follows smp's models (``freeze_encoder``; ``train()`` leaves a frozen encoder alone),
    so :func:`~cmim_dense.dense.model.freeze_backbone` freezes both kinds alike."""

    def __init__(self, encoder: nn.Module, branches: dict[str, TaskBranch]) -> None:
        super().__init__()
        self.encoder = encoder
        self.branches = nn.ModuleDict(branches)
        self._is_encoder_frozen = False

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.encoder(x)
        return {name: branch(features) for name, branch in self.branches.items()}

    def freeze_encoder(self) -> None:
        for parameter in self.encoder.parameters():
            parameter.requires_grad = False
        self.encoder.eval()
        self._is_encoder_frozen = True

    def train(self, mode: bool = True) -> MultiTaskDenseModel:
        self.training = mode
        for name, module in self.named_children():
            if not (self._is_encoder_frozen and name == "encoder"):
                module.train(mode)
        return self


def multitask_from_models(models: dict[str, smp.SegmentationModel]) -> MultiTaskDenseModel:
    """The multi-task model of single-task models over the same backbone: the first one's encoder,
    every model's decoder and output layer (the other encoders are dropped)."""
    encoder = next(iter(models.values())).encoder
    return MultiTaskDenseModel(encoder, {name: TaskBranch(model.decoder, model.segmentation_head)
                                         for name, model in models.items()})


def task_outputs(output: Tensor | dict[str, Tensor], tasks: Sequence[DenseTask]) -> dict[str, Tensor]:
    """Task name -> output of a dense model: a multi-task model's dict, or a single-task model's tensor."""
    return output if isinstance(output, dict) else {tasks[0].name: output}


def decoders(model: nn.Module) -> list[nn.Module]:
    """The trained heads' decoders of a single- or multi-task dense model (what a binary head's
    estimator schedules follow)."""
    if isinstance(model, MultiTaskDenseModel):
        return [branch.decoder for branch in model.branches.values()]
    return [model.decoder]


def output_layers(model: nn.Module, tasks: Sequence[DenseTask]) -> dict[str, nn.Conv2d]:
    """Task name -> the convolution that makes that task's outputs (smp's ``SegmentationHead`` is
    conv, upsampling, activation): the one a task initialises."""
    if isinstance(model, MultiTaskDenseModel):
        return {name: branch.head[0] for name, branch in model.branches.items()}
    return {tasks[0].name: model.segmentation_head[0]}


class TaskWeighting(nn.Module, ABC):
    """Combines the task losses of one batch into the training objective."""

    def __init__(self, tasks: Sequence[DenseTask]) -> None:
        super().__init__()
        self.names = [task.name for task in tasks]

    @abstractmethod
    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        """The objective of the task losses (task name -> loss)."""

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """Each task loss's current weight in the objective."""


class FixedWeighting(TaskWeighting):
    """``sum_t w_t L_t`` with constant weights."""

    def __init__(self, tasks: Sequence[DenseTask], weights: Sequence[float]) -> None:
        super().__init__(tasks)
        self.register_buffer("weight", torch.tensor(list(weights), dtype=torch.float32))

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(w * losses[name] for name, w in zip(self.names, self.weight))

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.weight.tolist()))


class UncertaintyWeighting(TaskWeighting):
    """Kendall, Gal & Cipolla (2018), Eq. 7 with ``s_t = log sigma_t^2`` learned beside the heads:
    ``sum_t c_t exp(-s_t) L_t + s_t / 2``, with ``c_t = 1`` for a classification task (a softmax
    likelihood, Eq. 10) and ``1/2`` for a regression task (a Gaussian, Eq. 5).  The weights start at
    the fixed ones (``s_t = log(c_t / w_t)``) and move towards ``c_t exp(-s_t) = 1 / (2 L_t)``, where
    the gradient of ``s_t`` vanishes: a task whose loss is small gets a large weight."""

    def __init__(self, tasks: Sequence[DenseTask], weights: Sequence[float]) -> None:
        super().__init__(tasks)
        factors = [1.0 if task.classification else 0.5 for task in tasks]
        self.register_buffer("factor", torch.tensor(factors))
        self.log_variance = nn.Parameter(torch.tensor([math.log(c / w) for c, w in zip(factors, weights)]))

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        total = torch.zeros((), device=self.log_variance.device)
        for index, name in enumerate(self.names):
            s = self.log_variance[index]
            total = total + self.factor[index] * torch.exp(-s) * losses[name] + 0.5 * s
        return total

    def weights(self) -> dict[str, float]:
        effective = self.factor * torch.exp(-self.log_variance.detach())
        return dict(zip(self.names, effective.tolist()))


TASK_WEIGHTINGS: Registry[Callable[[Sequence[DenseTask], Sequence[float]], TaskWeighting]] = Registry(
    "task weighting")
TASK_WEIGHTINGS.add("fixed", FixedWeighting)
TASK_WEIGHTINGS.add("uncertainty", UncertaintyWeighting)
