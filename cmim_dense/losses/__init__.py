"""Training losses: CMIM and its memory bank, the distillation objectives, and the objectives registry."""

from .cmim import CMIMLoss, CMIMOutput, CMIMTerm, EmbeddingHead, critic_logits, layer_weights, nce_loss
from .distill import representation_alignment, soft_cross_entropy
from .memory import MemoryBank
from .objectives import OBJECTIVES, Objective, ObjectiveInputs, register_objective

__all__ = ["OBJECTIVES", "CMIMLoss", "CMIMOutput", "CMIMTerm", "EmbeddingHead", "MemoryBank", "Objective", "ObjectiveInputs",
           "critic_logits", "layer_weights", "nce_loss", "register_objective", "representation_alignment",
           "soft_cross_entropy"]
