"""Dense prediction over binary backbones: the smp encoder plug-in, registered heads and tasks,
task losses, and dense models rebuilt from checkpoints."""

from .encoder import BinaryResNetEncoder, register_encoder
from .loading import dense_model_from_backbone, dense_model_from_checkpoint
from .losses import DEPTH_LOSSES, depth_loss, normals_loss
from .model import HEADS, DenseHead, create_dense_model, freeze_backbone, head_parameters, register_head
from .tasks import TASKS, DenseTask, Display, Metric, evaluate_constant, get_task, register_task

__all__ = ["DEPTH_LOSSES", "HEADS", "TASKS", "BinaryResNetEncoder", "DenseHead", "DenseTask", "Display", "Metric",
           "create_dense_model", "dense_model_from_backbone", "dense_model_from_checkpoint", "depth_loss",
           "evaluate_constant", "freeze_backbone", "get_task", "head_parameters", "normals_loss", "register_encoder",
           "register_head", "register_task"]
