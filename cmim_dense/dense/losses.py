"""Dense regression losses over pixels with ground truth: depth (> 0) and surface normals (non-zero)."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry

DepthLoss = Callable[[Tensor, Tensor, Tensor], Tensor]  # (prediction, target, valid mask) -> loss
DEPTH_LOSSES: Registry[DepthLoss] = Registry("depth loss")


@DEPTH_LOSSES.register("l1")
def l1_depth(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean |d - d*| over valid pixels, in metres."""
    return (pred - target).abs()[valid].mean()


@DEPTH_LOSSES.register("berhu")
def berhu_depth(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Reverse Huber (Laina et al. 2016, Eq. 3): |e| for |e| <= c, (e^2 + c^2) / 2c above,
    with c = 0.2 max |e| over the batch's valid pixels."""
    error = (pred - target).abs()[valid]
    c = (0.2 * error.max().detach()).clamp(min=1e-6)
    return error.where(error <= c, (error ** 2 + c ** 2) / (2 * c)).mean()


def depth_loss(name: str, pred: Tensor, target: Tensor) -> Tensor:
    """``pred`` (N, 1, H, W) or (N, H, W), ``target`` (N, H, W) metres with 0 = no ground truth."""
    loss = DEPTH_LOSSES.get(name)
    if pred.dim() == 4:
        pred = pred[:, 0]
    valid = target > 0
    if not valid.any():
        return pred.sum() * 0.0
    return loss(pred, target, valid)


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean of 1 − cos(n̂, n*) over pixels with ground truth, n̂ the prediction (N, 3, H, W)
    normalised to unit length, n* the unit target (N, 3, H, W) with (0, 0, 0) = no ground truth.

    The cosine loss of the multi-task NYUD-v2 literature: its gradient does not vanish at small
    angles as an angle loss's would, and it is blind to the prediction's length."""
    valid = target.abs().sum(dim=1) > 0
    if not valid.any():
        return pred.sum() * 0.0
    cosine = (F.normalize(pred, dim=1) * target).sum(dim=1)
    return (1.0 - cosine[valid]).mean()
