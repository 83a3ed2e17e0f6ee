"""Weight binarizers: latent real-valued weights W -> binary weights used by the convolution.

Each binarizer returns a tensor of W's shape whose values per output channel i are
{-s_i, +s_i}; the scale s_i (1 for BNN) is documented per class.  Scales are per output
channel, so they commute with the convolution and BN that follows.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..registry import Registry
from .estimators import Sign
from ..spec import Spec
from .standardize import standardize_rows

WeightBinarizerBuilder = Callable[..., nn.Module]
WEIGHT_BINARIZERS: Registry[WeightBinarizerBuilder] = Registry("weight binarizer")


def channel_mean_abs(w: Tensor) -> Tensor:
    """mean |W_i| over each output filter, shaped to broadcast against W (XNOR-Net Eq. 7)."""
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


@WEIGHT_BINARIZERS.register("sign")
class SignWeight(nn.Module):
    """W_b = sign(W), no scale (BNN, Hubara et al. 2016)."""

    def __init__(self, weight: Tensor, estimator: Spec) -> None:
        super().__init__()
        self.sign = Sign.from_spec(estimator)

    def forward(self, w: Tensor) -> Tensor:
        return self.sign(w)


@WEIGHT_BINARIZERS.register("scaled_sign")
class ScaledSignWeight(nn.Module):
    """W_b = alpha_i sign(W_i), alpha_i = mean |W_i| (XNOR-Net Eq. 7; Bi-Real's magnitude-aware sign).

    ``scale_grad`` chooses how the scale enters the backward pass:

    - ``"through"``: autograd differentiates alpha too, giving XNOR-Net's exact gradient
      g alpha 1[|W|<=1] + sign(W) (1/n) sum(g sign(W)) (the paper's Eq. 8 approximates the
      second term by g / n).
    - ``"detached"``: alpha is a constant, gradient g alpha 1[|W|<=1] (Bi-Real Net Eq. 6).
    - ``"none"``: forward value alpha sign(W) but gradient g 1[|W|<=1], as the released
      Bi-Real and ReActNet PyTorch code intends.  Written (alpha sign W).detach() + (b - b.detach())
      the value is exactly alpha sign(W); the released form b + (b (alpha - 1)).detach() rounds
      alpha - 1, a relative error of 6e-5 at alpha = 5e-4 in float32.
    """

    def __init__(self, weight: Tensor, estimator: Spec, scale_grad: str = "detached") -> None:
        super().__init__()
        if scale_grad not in ("through", "detached", "none"):
            raise ValueError(f"scale_grad must be 'through', 'detached' or 'none', got {scale_grad!r}")
        self.sign = Sign.from_spec(estimator)
        self.scale_grad = scale_grad

    def forward(self, w: Tensor) -> Tensor:
        binary = self.sign(w)
        if self.scale_grad == "through":
            return binary * channel_mean_abs(w)
        scale = channel_mean_abs(w.detach())
        if self.scale_grad == "detached":
            return binary * scale
        return (binary * scale).detach() + (binary - binary.detach())

    def extra_repr(self) -> str:
        return f"scale_grad={self.scale_grad}"


@WEIGHT_BINARIZERS.register("learned_scale")
class LearnedScaleWeight(nn.Module):
    """W_b = Gamma_i sign(W_i) with a learnable per-output-channel Gamma (XNOR++ Eq. 4, case 1).

    Gamma starts at mean |W_i| of the weight the layer is built with; a model that
    re-initialises its weights afterwards calls :meth:`reset_scale`.
    """

    def __init__(self, weight: Tensor, estimator: Spec) -> None:
        super().__init__()
        self.sign = Sign.from_spec(estimator)
        self.scale = nn.Parameter(channel_mean_abs(weight.detach()).clone())

    @torch.no_grad()
    def reset_scale(self, weight: Tensor) -> None:
        """Gamma_i <- mean |W_i| of ``weight``."""
        self.scale.copy_(channel_mean_abs(weight))

    def forward(self, w: Tensor) -> Tensor:
        return self.sign(w) * self.scale


def power_of_two_scale(w: Tensor) -> Tensor:
    """2^round(log2(mean |W_i|)) per output filter, detached (IR-Net Eq. 6's bit-shift scale)."""
    return torch.exp2(torch.log2(channel_mean_abs(w.detach())).round())


@WEIGHT_BINARIZERS.register("libra_pb")
class LibraPBWeight(nn.Module):
    """IR-Net's Libra Parameter Binarization (Qin et al. 2020, Eq. 5-6); DIR-Net's IMB.

    Balance and standardize each filter, W_std = (W - mean) / std, then
    Q(W) = sign(W_std) 2^round(log2(mean |W_std|)).  Gradients flow through the
    standardization (autograd) and the sign's estimator; the scale is detached.
    """

    def __init__(self, weight: Tensor, estimator: Spec) -> None:
        super().__init__()
        self.sign = Sign.from_spec(estimator)

    def forward(self, w: Tensor) -> Tensor:
        standardized = standardize_rows(w)
        return self.sign(standardized) * power_of_two_scale(standardized)


def build_weight_binarizer(spec: Spec, weight: Tensor) -> nn.Module:
    """Instantiate the weight binarizer a :class:`Spec` names for ``weight``."""
    return WEIGHT_BINARIZERS.get(spec.name)(weight, **spec.kwargs)
