"""Input (activation) binarizers and ReActNet's learnable activation.

An input binarizer is ``pre`` (an optional real-valued shift), then ``rescale`` (an optional
positive, per-sample rescaling that leaves every sign unchanged), then a
:class:`~cmim_dense.binary.estimators.Sign`.  The output of ``pre`` is the latent activation
a_F that CMIM contrasts with its binary counterpart a_B = sign(a_F): ``rescale`` only sets the
scale at which the sign's backward estimator is evaluated, so sign(rescale(a_F)) = sign(a_F).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..registry import Registry
from .estimators import Sign
from ..spec import Spec
from .standardize import EPSILON, unbiased_std

InputBinarizerBuilder = Callable[..., "InputBinarizer"]
INPUT_BINARIZERS: Registry[InputBinarizerBuilder] = Registry("input binarizer")


class InputBinarizer(nn.Module):
    """a_B = sign(rescale(a_F)) with a_F = pre(x); ``pre`` and ``rescale`` are identities for
    the plain binarizers.

    Keeping the rescaling out of a_F matters for a loss on a_F (CMIM): a scale-invariant a_F
    would pass that loss's gradient on multiplied by 1 / scale, which is 1e8 for RBNN at its
    BatchNorm initialisation (gamma = 1e-8).
    """

    def __init__(self, sign: Sign, pre: nn.Module | None = None, rescale: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.rescale = rescale if rescale is not None else nn.Identity()
        self.sign = sign

    @property
    def rescales(self) -> bool:
        return not isinstance(self.rescale, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        return self.sign(self.rescale(self.pre(x)))

    def sign_past_rescale(self, latent: Tensor, rescaled: Tensor) -> Tensor:
        """a_B = sign(rescale(a_F)) for a loss on a_B (CMIM's anchor), differentiated as the sign's
        estimator at the rescaled value, but without ``rescale``'s Jacobian: the rescale only
        chooses where the estimator is evaluated, so the loss's gradient reaches a_F at a_F's scale."""
        return self.sign(latent + (rescaled - latent).detach())


class LearnableBias(nn.Module):
    """A learnable per-channel shift x + b_c, b initialised to 0 (ReActNet's "move")."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class PerSampleCenter(nn.Module):
    """a - mean(a) over (C, H, W) of each sample: RBNN's per-sample threshold of the sign."""

    def forward(self, x: Tensor) -> Tensor:
        return x - x.mean(dim=tuple(range(1, x.dim())), keepdim=True)


class PerSampleStandardize(nn.Module):
    """a / std(a) over (C, H, W) of each (already centred) sample: RBNN's activation rescale.

    Applied after :class:`PerSampleCenter` it divides by the unbiased std only, as the official
    code does (a2 = a1 / std(a1)): the sign of a2 is then exactly the sign of a1, where
    re-centring would move values within rounding of the mean across zero.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x / unbiased_std(x, dim=tuple(range(1, x.dim())), keepdim=True).clamp_min(EPSILON)


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
    """RBNN's activation binarizer: sign of the per-sample standardized input.

    a_F is the per-sample centred input; the division by its std is the ``rescale`` step.
    """
    return InputBinarizer(Sign.from_spec(estimator), PerSampleCenter(), PerSampleStandardize())


def build_input_binarizer(spec: Spec, channels: int) -> InputBinarizer:
    """Instantiate the input binarizer a :class:`Spec` names for ``channels`` input channels."""
    return INPUT_BINARIZERS.get(spec.name)(channels, **spec.kwargs)
