"""Binary ResNet backbones: ``create_model("resnet18", "irnet")``."""

from __future__ import annotations

from ..methods import CMIMConfig, get_recipe
from .resnet import ARCHS, BinaryResNet
from .taps import Tap, collect_taps, select_sites


def create_model(
    arch: str = "resnet18",
    method: str = "fp",
    num_classes: int = 1000,
    output_stride: int | None = None,
    in_chans: int = 3,
    real_weights: bool = False,
    cmim: CMIMConfig | None = None,
) -> BinaryResNet:
    """Build ``arch`` binarized by ``method`` (``NAME`` or ``NAME+cmim``)."""
    recipe = get_recipe(method, cmim)
    return BinaryResNet(recipe, arch, num_classes, output_stride, in_chans, real_weights)


def list_archs() -> list[str]:
    return ARCHS.names()


from .loading import load_teacher, model_from_checkpoint  # noqa: E402  (needs create_model)


__all__ = ["ARCHS", "BinaryResNet", "Tap", "collect_taps", "create_model", "list_archs", "load_teacher",
           "model_from_checkpoint", "select_sites"]
