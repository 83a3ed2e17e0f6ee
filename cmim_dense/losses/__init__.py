"""Training losses: CMIM and its memory bank, and the distillation objectives."""

from .cmim import CMIMLoss, CMIMOutput, EmbeddingHead, critic_logits, layer_weights, nce_loss
from .distill import representation_alignment, soft_cross_entropy
from .memory import MemoryBank

__all__ = ["CMIMLoss", "CMIMOutput", "EmbeddingHead", "MemoryBank", "critic_logits", "layer_weights", "nce_loss",
           "representation_alignment", "soft_cross_entropy"]
