"""cmim-dense: binary ResNet backbones, CMIM pretraining and dense-prediction transfer."""

from __future__ import annotations

from . import plugins
from .lazy import lazy_attributes

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "get_recipe", "list_archs", "list_recipes", "load_backbone"]

# imported on first use: a command line's --help and its argument checks then run without torch
__getattr__ = lazy_attributes(__name__, {"create_model": "models", "list_archs": "models", "load_backbone": "models",
                                         "get_recipe": "methods", "list_recipes": "methods"})

plugins.install()  # the backbones by name in timm and smp once either is imported
