"""RBNN's bi-rotation weight binarizer (Lin et al., NeurIPS 2020, Sec. 3.1-3.3)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .estimators import Sign, binary_sign
from .progress import ProgressAware
from ..spec import Spec
from .standardize import standardize_rows
from .weight import WEIGHT_BINARIZERS, channel_mean_abs


def rotation_shape(n: int) -> tuple[int, int]:
    """(a, b) with a the largest divisor of n not above sqrt(n), b = n / a (RBNN Sec. 3.1)."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def random_orthogonal(size: int, generator: torch.Generator | None = None) -> Tensor:
    """A Haar-distributed random orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def rotate_filters(x: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
    """R1^T X_i R2 for every filter X_i of x, shape (C_out, a, b) (RBNN Eq. 2), in the official
    code's order, (R1^T X_i) R2: the other association rounds differently in float32 and flips
    the sign of rotated weights within ~1e-7 of zero against a published checkpoint's own run."""
    return (r1.T @ x) @ r2


def alignment(x: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
    """sum_i tr(B_i^T R1^T X_i R2) with B_i = sign(R1^T X_i R2): the objective RBNN's update maximizes."""
    rotated = rotate_filters(x, r1, r2)
    return (binary_sign(rotated) * rotated).sum()


def update_rotations(x: Tensor, r1: Tensor, r2: Tensor, iterations: int = 3) -> tuple[Tensor, Tensor]:
    """Alternating SVD updates of R1 and R2 for filters x of shape (C_out, a, b) (RBNN Eq. 8-10).

    Each iteration fixes B_i = sign(R1^T X_i R2) and sets R1 = V1 U1^T from the SVD
    sum_i B_i R2^T X_i^T = U1 S1 V1^T, then R2 = U2 V2^T from sum_i X_i^T R1 B_i = U2 S2 V2^T.
    All filters are processed in one batched product (no Python loop over channels).
    """
    for _ in range(iterations):
        b = binary_sign(rotate_filters(x, r1, r2))
        d1 = torch.einsum("cab,cdb->ad", b, x @ r2)
        u1, _, v1t = torch.linalg.svd(d1)
        r1 = v1t.T @ u1.T
        d2 = torch.einsum("cab,cad->bd", r1.T @ x, b)
        u2, _, v2t = torch.linalg.svd(d2)
        r2 = u2 @ v2t
    return r1, r2


@WEIGHT_BINARIZERS.register("rotation")
class BiRotationWeight(ProgressAware, nn.Module):
    """RBNN: W_b = alpha sign(w2 + |sin theta| (R1^T X R2 - w2)) (RBNN Eq. 2, 13).

    - w2: each filter standardized (zero mean, unit std);
    - X: each filter viewed as an a x b matrix, rotated by R1 (a x a) and R2 (b x b), two
      orthogonal matrices shared by all output channels of the layer (buffers);
    - theta: learnable per output channel, initialised to pi/2 (adjustable rotated weight);
      the rotated tensor is detached, as in RBNN's code, so W receives task gradient only
      through (1 - |sin theta|);
    - alpha: learnable per-output-channel scale, initialised to mean |W_i| at construction.

    The rotations are re-fitted (3 alternating SVD iterations) on the first training forward
    after each :func:`~cmim_dense.binary.set_progress` that changes the progress, i.e. once
    per epoch, as RBNN does on the first batch of every epoch.  The progress value of the
    last update is stored in the state dict, so resuming mid-epoch does not repeat it.

    Whether a re-fit is due is decided outside the forward, when the progress is set or a
    state is loaded (a Python flag, ``_refit_due``); the forward only reads that flag and the
    progress as a tensor (a non-persistent buffer).  A compiled model therefore has two
    programs, with and without the re-fit, each compiled once for the whole run, and reads
    no Python number that changes from epoch to epoch.
    """

    def __init__(self, weight: Tensor, estimator: Spec, iterations: int = 3) -> None:
        super().__init__()
        out_channels = weight.shape[0]
        self.shape_ab = rotation_shape(weight[0].numel())
        self.iterations = iterations
        self.sign = Sign.from_spec(estimator)
        self.theta = nn.Parameter(torch.full((out_channels, 1, 1, 1), math.pi / 2))
        self.scale = nn.Parameter(channel_mean_abs(weight.detach()).clone())
        self.register_buffer("r1", random_orthogonal(self.shape_ab[0]))
        self.register_buffer("r2", random_orthogonal(self.shape_ab[1]))
        self.register_buffer("updated_at", torch.tensor(-1.0))
        self.register_buffer("progress_now", torch.tensor(self.progress), persistent=False)
        self._updated_at = -1.0  # the progress the rotations were last fitted at, while a re-fit is due
        self._refit_due = True
        self.register_load_state_dict_post_hook(_read_loaded_update)

    def set_progress(self, progress: float) -> None:
        if not self._refit_due:  # the rotations are fitted at the current progress (re-fitted or not)
            self._updated_at = self.progress
        super().set_progress(progress)
        self.progress_now.fill_(self.progress)
        self._refit_due = self._updated_at != self.progress

    def _needs_update(self) -> bool:
        return self.training and self._refit_due

    @torch.no_grad()
    def refit(self, standardized: Tensor) -> None:
        """Re-fit R1 and R2 to the current (detached) standardized weights, in float32 whatever
        autocast is on (CUDA has no half-precision SVD)."""
        x = standardized.float().reshape(standardized.shape[0], *self.shape_ab)
        with torch.autocast(x.device.type, enabled=False):
            r1, r2 = update_rotations(x, self.r1.float(), self.r2.float(), self.iterations)
        self.r1.copy_(r1)
        self.r2.copy_(r2)
        self.updated_at.copy_(self.progress_now)
        self._refit_due = False

    def forward(self, w: Tensor) -> Tensor:
        w2 = standardize_rows(w)
        if self._needs_update():
            self.refit(w2.detach())
        x = w2.detach().reshape(w.shape[0], *self.shape_ab)
        rotated = rotate_filters(x, self.r1, self.r2).view_as(w).to(w2.dtype)  # autocast computes it in half
        w3 = w2 + self.theta.sin().abs() * (rotated - w2)  # the official order of Eq. 13 (not lerp's)
        return self.sign(w3) * self.scale

    def extra_repr(self) -> str:
        return f"rotation={self.shape_ab}, iterations={self.iterations}"


def _read_loaded_update(module: Any, incompatible_keys: Any) -> None:
    """After a state is loaded: a re-fit is due unless the loaded rotations were fitted at the
    current progress."""
    module._updated_at = float(module.updated_at)
    module._refit_due = module._updated_at != module.progress
