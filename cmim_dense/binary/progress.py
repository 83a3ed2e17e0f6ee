"""Training-progress driven schedules.

Several methods change their backward estimator (IR-Net's EDE, RBNN, DIR-Net's DTE) or
their rotation matrices (RBNN) as training advances.  Instead of globals, every such
component implements :class:`ProgressAware` and the training engine makes one explicit
call, ``set_progress(model, epoch / epochs)``, at the start of every epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


class ProgressAware:
    """Mixin for anything whose behaviour depends on training progress in [0, 1]."""

    progress: float = 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = float(progress)


def set_progress(model: nn.Module, progress: float) -> None:
    """Tell every progress-aware part of ``model`` how far training has advanced.

    ``progress`` is ``epoch / epochs`` (0 at the start, approaching 1 at the last epoch),
    the quantity IR-Net and RBNN use for their t/k schedules.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    for module in model.modules():
        if isinstance(module, ProgressAware):
            module.set_progress(progress)


@dataclass(frozen=True)
class LogLinearSchedule:
    """The t/k schedule of IR-Net's EDE (IR-Net Eq. 9) and RBNN's estimator.

    ``t = T_min * 10 ** (progress * log10(T_max / T_min))`` grows log-linearly from T_min
    to T_max; ``k = max(1 / t, 1)`` keeps ``k * t = 1`` while ``t < 1`` (stage 1: update
    capability) and lets the estimator sharpen towards sign once ``t >= 1`` (stage 2).
    """

    t_min: float
    t_max: float

    def __post_init__(self) -> None:
        if not 0 < self.t_min <= self.t_max:
            raise ValueError(f"need 0 < t_min <= t_max, got {self.t_min}, {self.t_max}")

    def __call__(self, progress: float) -> tuple[float, float]:
        t = self.t_min * 10 ** (progress * math.log10(self.t_max / self.t_min))
        return t, max(1.0 / t, 1.0)
