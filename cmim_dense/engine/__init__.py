"""Training engine: configuration, run state, optimizers and the pretraining and fine-tuning loops."""

from .config import PretrainConfig, resolve_config
from .pretrain import evaluate_checkpoint, run_pretraining

__all__ = ["PretrainConfig", "evaluate_checkpoint", "resolve_config", "run_pretraining"]
