"""Weight initialisation schemes named by recipes."""

from __future__ import annotations

from torch import nn

from ..binary import BinaryConv2d
from ..binary.weight import LearnedScaleWeight

SCHEMES = ("kaiming_fan_out", "rbnn", "uniform_small", "pytorch")


def initialize(model: nn.Module, scheme: str) -> None:
    """Initialise ``model`` in place.

    - ``kaiming_fan_out``: convs N(0, 2 / (k^2 C_out)) (torchvision; IR-Net's code), BN gamma 1, beta 0.
    - ``rbnn``: convs kaiming_normal (fan in), every BatchNorm2d gamma 1e-8, beta 0 (RBNN's ImageNet code).
    - ``uniform_small``: latent binary weights U(0, 1e-3), so every binary weight starts at +1
      (Bi-Real/ReActNet code); other layers keep PyTorch's defaults.
    - ``pytorch``: PyTorch's own layer defaults, nothing re-initialised (RBNN's CIFAR ResNet-18).

    XNOR-Net++'s learned scale Gamma is then set to mean |W_i| of the final latent weights
    (it is built from the weights before this re-initialisation).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; valid: {', '.join(SCHEMES)}")
    if scheme != "pytorch":
        _reinitialize(model, scheme)
    for module in model.modules():
        if isinstance(module, BinaryConv2d) and isinstance(module.weight_binarizer, LearnedScaleWeight):
            module.weight_binarizer.reset_scale(module.weight)


def _reinitialize(model: nn.Module, scheme: str) -> None:
    for module in model.modules():
        if scheme == "uniform_small":
            if isinstance(module, BinaryConv2d) and module.binary_weights:
                nn.init.uniform_(module.weight, 0.0, 1e-3)
        elif isinstance(module, nn.Conv2d):
            if scheme == "rbnn":
                nn.init.kaiming_normal_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1e-8 if scheme == "rbnn" else 1.0)
            nn.init.zeros_(module.bias)
