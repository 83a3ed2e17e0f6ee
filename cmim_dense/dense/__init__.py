"""Dense prediction over binary backbones: smp encoder plug-in, DeepLab models, task losses."""

from .encoder import BinaryResNetEncoder, register_encoder
from .losses import DEPTH_LOSSES, depth_loss
from .model import HEADS, create_dense_model, dense_model_from_backbone

__all__ = [
    "BinaryResNetEncoder",
    "DEPTH_LOSSES",
    "HEADS",
    "create_dense_model",
    "dense_model_from_backbone",
    "depth_loss",
    "register_encoder",
]
