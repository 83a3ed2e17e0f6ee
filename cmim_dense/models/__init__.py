"""Binary ResNet backbones: ``create_model("resnet18", "irnet")``, and their rebuilding from files."""

from __future__ import annotations

from .factory import create_model, list_archs
from .conversion import backbone_checkpoint, convert_checkpoint, converted_checkpoint, load_backbone
from .loading import checkpoint_with_data, load_teacher, model_from_checkpoint
from .published import LAYOUTS
from .resnet import ARCHS, BinaryResNet
from .taps import Tap, collect_taps, select_sites

__all__ = ["ARCHS", "LAYOUTS", "BinaryResNet", "Tap", "backbone_checkpoint", "checkpoint_with_data", "collect_taps",
           "convert_checkpoint", "converted_checkpoint", "create_model", "list_archs", "load_backbone", "load_teacher",
           "model_from_checkpoint", "select_sites"]
