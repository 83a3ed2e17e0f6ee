"""Training engine: configuration, checkpoints, optimizers and the pretraining loop."""

from .checkpoint import load_checkpoint, save_atomic
from .config import PretrainConfig, resolve_config
from .pretrain import evaluate_checkpoint, run_pretraining

__all__ = ["PretrainConfig", "load_checkpoint", "evaluate_checkpoint", "resolve_config", "run_pretraining", "save_atomic"]
