"""Distillation objectives of the teacher-based recipes (ReActNet, S2-BNN, DIR-Net)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """-sum_c softmax(z_T / T)_c log softmax(z_S / T)_c, averaged over the batch.

    ReActNet's distributional loss (Liu et al. 2020, Eq. 4) at T = 1: it differs from
    KL(p_T || p_S) only by the teacher's entropy, so the student's gradient is the same.
    S2-BNN's guided distribution calibration uses the same form at T = 0.2.
    """
    target = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return -(target * F.log_softmax(student_logits.float() / temperature, dim=1)).sum(dim=1).mean()


def representation_alignment(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """DIR-Net's representation-align distillation, as reconstructed in docs/methods.md.

    Sum over stages of the mean squared distance between each sample's L2-normalised
    student and teacher feature maps (flattened); the teacher side is detached.
    """
    if len(student) != len(teacher):
        raise ValueError(f"got {len(student)} student and {len(teacher)} teacher feature maps")
    terms = []
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"student feature {tuple(s.shape)} and teacher feature {tuple(t.shape)} differ")
        s_n = F.normalize(s.flatten(1).float(), dim=1)
        t_n = F.normalize(t.detach().flatten(1).float(), dim=1)
        terms.append((s_n - t_n).square().sum(dim=1).mean())
    return sum(terms[1:], terms[0])
