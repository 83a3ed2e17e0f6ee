"""Every backbone by name in timm: ``timm.create_model("cmim_resnet18_rbnn", checkpoint_path=...,
features_only=True)``.

One entry point per (architecture, method) recipe, named ``cmim_{arch}_{method}``.  The
features-only network accepts a whole classifier checkpoint (this package's best.pt / last.pt or
a converted one): the classifier's own keys (``head_norm``, ``fc``) are not features and are set
aside, every other key must fit.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

from timm.models import FeatureListNet, build_model_with_cfg, register_model
from timm.models import is_model as timm_has_model
from torch import nn

from ..data.classification import IMAGENET_MEAN, IMAGENET_STD
from ..methods import list_recipes
from .factory import create_model
from .resnet import ARCHS

CLASSIFIER_PREFIXES = ("fc.", "head_norm.")


class BackboneFeatures(FeatureListNet):
    """timm's feature-list wrapper over a binary ResNet that loads classifier checkpoints."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        features = {key: value for key, value in state_dict.items() if not key.startswith(CLASSIFIER_PREFIXES)}
        return super().load_state_dict(features, strict=strict, assign=assign)


def timm_name(arch: str, method: str) -> str:
    return f"cmim_{arch}_{method}"


def _entry_point(arch: str, method: str) -> Callable[..., nn.Module]:
    def build(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if kwargs.get("features_only"):
            kwargs.setdefault("feature_cls", BackboneFeatures)
        if kwargs.get("pretrained_cfg") is None:  # no hub weights: the file comes as checkpoint_path
            kwargs["pretrained_cfg"] = {"input_size": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                        "first_conv": "conv1", "classifier": "fc", "num_classes": 1000}
        return build_model_with_cfg(lambda **options: create_model(arch, method, **options), timm_name(arch, method),
                                    pretrained, feature_cfg={"flatten_sequential": False}, **kwargs)

    build.__name__ = timm_name(arch, method)
    build.__module__ = __name__
    build.__doc__ = f"{arch} binarized by {method} (cmim-dense)."
    return build


def register_timm_models() -> list[str]:
    """Register ``cmim_{arch}_{method}`` for every architecture and recipe (idempotent)."""
    names = []
    for arch in ARCHS.names():
        for method in (recipe.name for recipe in list_recipes()):
            name = timm_name(arch, method)
            if not timm_has_model(name):
                entry = _entry_point(arch, method)
                setattr(sys.modules[__name__], name, entry)
                register_model(entry)
            names.append(name)
    return names


register_timm_models()  # on import: cmim_dense.plugins imports this module once the library is imported
