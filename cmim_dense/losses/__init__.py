"""Training losses: CMIM and its memory bank."""

from .cmim import CMIMLoss, CMIMOutput, EmbeddingHead, critic_logits, layer_weights, nce_loss
from .memory import MemoryBank

__all__ = ["CMIMLoss", "CMIMOutput", "EmbeddingHead", "MemoryBank", "critic_logits", "layer_weights", "nce_loss"]
