"""Binary ResNet backbones: ``create_model("resnet18", "irnet")``, and their rebuilding from files."""

from __future__ import annotations

from .factory import create_model, list_archs
from .loading import checkpoint_with_data, load_teacher, model_from_checkpoint
from .resnet import ARCHS, BinaryResNet
from .taps import Tap, collect_taps, select_sites

__all__ = ["ARCHS", "BinaryResNet", "Tap", "checkpoint_with_data", "collect_taps", "create_model", "list_archs",
           "load_teacher", "model_from_checkpoint", "select_sites"]
