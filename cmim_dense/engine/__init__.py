"""Training engine: configuration, checkpoints, optimizers and the pretraining loop."""

from .checkpoint import load_checkpoint, save_atomic
from .config import PretrainConfig, resolve_config
from .pretrain import run_pretraining

__all__ = ["PretrainConfig", "load_checkpoint", "resolve_config", "run_pretraining", "save_atomic"]
