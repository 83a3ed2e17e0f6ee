"""Input (activation) binarizers and ReActNet's learnable activation.

An input binarizer is ``pre`` (an optional real-valued transform) followed by a
:class:`~cmim_dense.binary.estimators.Sign`.  The output of ``pre`` is the latent
activation a_F that CMIM contrasts with its binary counterpart a_B = sign(a_F).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..registry import Registry
from .estimators import Sign
from .spec import Spec
from .standardize import standardize_rows

InputBinarizerBuilder = Callable[..., "InputBinarizer"]
INPUT_BINARIZERS: Registry[InputBinarizerBuilder] = Registry("input binarizer")


class InputBinarizer(nn.Module):
    """a_B = sign(pre(x)); ``pre`` is identity for the plain binarizers."""

    def __init__(self, sign: Sign, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.sign = sign

    def forward(self, x: Tensor) -> Tensor:
        return self.sign(self.pre(x))


class LearnableBias(nn.Module):
    """A learnable per-channel shift x + b_c, b initialised to 0 (ReActNet's "move")."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class PerSampleStandardize(nn.Module):
    """RBNN's activation pre-processing: (a - mean) / std over (C, H, W) of each sample.

    The mean acts as a per-sample threshold of the following sign; the std only changes
    the scale at which the backward estimator is evaluated.
    """

    def forward(self, x: Tensor) -> Tensor:
        return standardize_rows(x)


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al. 2020, Eq. 3): x - gamma_c, PReLU with slope beta_c, + zeta_c.

    f(x) = x - gamma + zeta if x > gamma, else beta (x - gamma) + zeta, with per-channel
    learnable gamma, beta, zeta (beta initialised to 0.25 as torch's PReLU).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels)
        self.shift_out = LearnableBias(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.shift_out(self.prelu(self.shift_in(x)))


@INPUT_BINARIZERS.register("sign")
def _plain_sign(channels: int, estimator: Spec) -> InputBinarizer:
    """a_B = sign(x) (BNN, XNOR-Net, Bi-Real, IR-Net, DIR-Net)."""
    return InputBinarizer(Sign.from_spec(estimator))


@INPUT_BINARIZERS.register("rsign")
def _react_sign(channels: int, estimator: Spec) -> InputBinarizer:
    """ReActNet's RSign (Eq. 2): sign(x + b_c), i.e. a learnable per-channel threshold -b_c."""
    return InputBinarizer(Sign.from_spec(estimator), LearnableBias(channels))


@INPUT_BINARIZERS.register("standardized_sign")
def _rbnn_sign(channels: int, estimator: Spec) -> InputBinarizer:
    """RBNN's activation binarizer: sign of the per-sample standardized input."""
    return InputBinarizer(Sign.from_spec(estimator), PerSampleStandardize())


def build_input_binarizer(spec: Spec, channels: int) -> InputBinarizer:
    """Instantiate the input binarizer a :class:`Spec` names for ``channels`` input channels."""
    return INPUT_BINARIZERS.get(spec.name)(channels, **spec.kwargs)
