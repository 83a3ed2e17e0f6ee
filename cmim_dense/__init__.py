"""cmim-dense: binary ResNet backbones, CMIM pretraining and dense-prediction transfer."""

from __future__ import annotations

import importlib
from typing import Any

from . import plugins

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "get_recipe", "list_archs", "list_recipes", "load_backbone"]

# the public names and the submodule each lives in, imported on first use: a command line's
# --help and its argument checks (cmim_dense.arguments) then run without importing torch
_LAZY = {"create_model": "models", "list_archs": "models", "load_backbone": "models", "get_recipe": "methods",
         "list_recipes": "methods"}

plugins.install()  # the backbones by name in timm and smp once either is imported


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
