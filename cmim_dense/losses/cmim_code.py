"""The official CMIM code's objective (42Shawn/CMIM), offered so its results can be reproduced.

It is CRD (Tian et al., ICLR 2020) between the binary network's penultimate feature and a
separate full-precision network's, not the paper's layer-wise binary/latent contrast; see
docs/methods.md for the eight differences.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..models.taps import Tap
from .cmim import CMIMOutput, crd_log_z, nce_loss
from .memory import MemoryBank


class EmbedL2(nn.Module):
    """Linear projection followed by L2 normalisation (CRD's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.linear(x), dim=1)


class OfficialCMIMLoss(nn.Module):
    """Two-sided CRD loss with one memory bank per side, as the official CMIM code computes it.

    For each side, the anchor embedding is scored against the *other* side's bank at the
    sample's own row (positive) and ``n_nce`` other rows (negatives, from other classes when
    ``labels`` are given); scores exp(s / tau) / Z with Z = M mean(exp(s / tau)) fixed on the
    first batch; CRD's loss (the same form as Eq. 13); both banks updated with momentum.
    ``train_heads=False`` reproduces the official code, whose projection heads are never
    given to the optimizer and stay at their random initialisation.

    As a :class:`~cmim_dense.losses.cmim.CMIMTerm` it taps no site: it reads the two networks' last
    feature maps and pools them with ``student_penultimate`` and ``teacher_penultimate`` (the
    networks' own ``penultimate``: what their classifiers see).
    """

    sites: list[str] = []

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        dataset_size: int,
        labels: Tensor | None = None,
        n_nce: int = 4096,
        tau: float = 0.1,
        lam: float = 3.2,
        momentum: float = 0.5,
        embed_dim: int = 128,
        train_heads: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        student_penultimate: Callable[[Tensor], Tensor] | None = None,
        teacher_penultimate: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.n_nce, self.tau, self.lam = n_nce, tau, lam
        self.student_penultimate, self.teacher_penultimate = student_penultimate, teacher_penultimate
        self.dataset_size = dataset_size
        self.embed_student = EmbedL2(student_dim, embed_dim)
        self.embed_teacher = EmbedL2(teacher_dim, embed_dim)
        for parameter in self.parameters():
            parameter.requires_grad_(train_heads)
        self.bank_student = MemoryBank(dataset_size, embed_dim, momentum, device=device, seed=seed)
        self.bank_teacher = MemoryBank(dataset_size, embed_dim, momentum, device=device, seed=seed + 1)
        if labels is not None:
            self.bank_student.set_labels(labels)
            self.bank_teacher.set_labels(labels)
        self.register_buffer("log_z", torch.full((2,), float("nan")))

    def _side(self, k: int, anchor: Tensor, bank: MemoryBank, indices: Tensor) -> Tensor:
        own = bank.values[indices.to(bank.values.device)].float()[:, None, :]
        contrast = torch.cat([own, bank.sample(indices, self.n_nce)], dim=1)
        scores = torch.einsum("bd,bnd->bn", anchor.float(), contrast) / self.tau
        if torch.isnan(self.log_z[k]):
            self.log_z[k] = crd_log_z(scores, self.dataset_size)
        scores = scores - self.log_z[k]
        return nce_loss(scores[:, 0], scores[:, 1:], self.n_nce / self.dataset_size)

    def forward(self, taps: dict[str, Tap], indices: Tensor, features: list[Tensor],
                teacher_features: list[Tensor] | None) -> CMIMOutput:
        """The term from the networks' last feature maps (no per-site diagnostics)."""
        if self.student_penultimate is None or self.teacher_penultimate is None or teacher_features is None:
            raise ValueError("the official code's CMIM contrasts the student with a full-precision teacher: build it "
                             "with both networks' penultimate functions and pass the teacher's features")
        loss = self.contrast(self.student_penultimate(features[-1]), self.teacher_penultimate(teacher_features[-1]),
                             indices)
        return CMIMOutput(loss, {})

    def contrast(self, student_feature: Tensor, teacher_feature: Tensor, indices: Tensor) -> Tensor:
        """lambda times the two-sided CRD loss of penultimate features, and the banks' momentum update."""
        student = self.embed_student(student_feature)
        teacher = self.embed_teacher(teacher_feature.detach())
        loss = self._side(0, student, self.bank_teacher, indices) + self._side(1, teacher, self.bank_student, indices)
        self.bank_student.update(indices, student)
        self.bank_teacher.update(indices, teacher)
        return self.lam * loss

    def bank_state(self) -> dict[str, dict[str, Tensor]]:
        return {"student": self.bank_student.state_dict(), "teacher": self.bank_teacher.state_dict()}

    def load_bank_state(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.bank_student.load_state_dict(state["student"])
        self.bank_teacher.load_state_dict(state["teacher"])
