"""Pretraining objectives, one registry entry each, named by a recipe's ``TrainingDefaults.loss``.

An :class:`Objective` turns one batch's student outputs (and the teacher's, when the recipe has
one) into the loss the optimizer minimises; the CMIM term is added on top by the engine.  Adding
an objective is one :func:`register_objective` call and a recipe naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry
from .distill import representation_alignment, soft_cross_entropy


@dataclass(frozen=True)
class ObjectiveInputs:
    """What an objective may read: the student's logits and stage features, the labels, the
    teacher's logits and features (None without a teacher), and the recipe's constants."""

    logits: Tensor
    features: list[Tensor]
    labels: Tensor
    teacher_logits: Tensor | None
    teacher_features: list[Tensor] | None
    label_smoothing: float = 0.0
    temperature: float = 1.0
    distill_weight: float = 1.0


@dataclass(frozen=True)
class Objective:
    """A named training objective: ``loss(inputs)``, and whether it reads the teacher's logits
    (then the teacher must predict the data's classes)."""

    name: str
    loss: Callable[[ObjectiveInputs], Tensor]
    reads_teacher_logits: bool
    description: str


OBJECTIVES: Registry[Objective] = Registry("training objective")


def register_objective(objective: Objective) -> Objective:
    return OBJECTIVES.add(objective.name, objective)


def cross_entropy(inputs: ObjectiveInputs) -> Tensor:
    """Cross-entropy with the recipe's label smoothing."""
    return F.cross_entropy(inputs.logits, inputs.labels, label_smoothing=inputs.label_smoothing)


def teacher_distribution(inputs: ObjectiveInputs) -> Tensor:
    """The teacher's softened distribution as the target (:func:`soft_cross_entropy`), labels unused."""
    assert inputs.teacher_logits is not None, "this objective needs a teacher"
    return soft_cross_entropy(inputs.logits, inputs.teacher_logits, inputs.temperature)


def cross_entropy_and_alignment(inputs: ObjectiveInputs) -> Tensor:
    """Cross-entropy plus ``distill_weight`` times DIR-Net's representation alignment of the stage
    features after the stem (:func:`representation_alignment`)."""
    assert inputs.teacher_features is not None, "this objective needs a teacher"
    alignment = representation_alignment(inputs.features[1:], inputs.teacher_features[1:])
    return cross_entropy(inputs) + inputs.distill_weight * alignment


register_objective(Objective("ce", cross_entropy, False, "cross-entropy"))
register_objective(Objective("kd", teacher_distribution, True,
                             "ReActNet's distributional loss from the teacher only (Liu et al. 2020, Eq. 4)"))
register_objective(Objective("gdc", teacher_distribution, True,
                             "S2-BNN's guided distribution calibration to the teacher, no labels"))
register_objective(Objective("ce+rbd", cross_entropy_and_alignment, False,
                             "DIR-Net's cross-entropy plus representation-align distillation"))
