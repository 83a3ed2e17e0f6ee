"""The one way to build a backbone: ``create_model("resnet18", "irnet")``."""

from __future__ import annotations

from ..methods import CMIMConfig, Recipe, get_recipe
from .resnet import ARCHS, BinaryResNet


def create_model(
    arch: str = "resnet18",
    method: str | Recipe = "fp",
    num_classes: int = 1000,
    output_stride: int | None = None,
    in_chans: int = 3,
    real_weights: bool = False,
    cmim: CMIMConfig | None = None,
) -> BinaryResNet:
    """Build ``arch`` binarized by ``method``: a name (``NAME`` or ``NAME+cmim``, resolved here
    with ``cmim``'s settings) or a recipe already resolved by the caller."""
    recipe = method if isinstance(method, Recipe) else get_recipe(method, cmim)
    return BinaryResNet(recipe, arch, num_classes, output_stride, in_chans, real_weights)


def list_archs() -> list[str]:
    return ARCHS.names()
