"""Depth regression losses over valid pixels (ground truth > 0)."""

from __future__ import annotations

from torch import Tensor


def l1_depth(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean |d - d*| over valid pixels, in metres."""
    return (pred - target).abs()[valid].mean()


def berhu_depth(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Reverse Huber (Laina et al. 2016, Eq. 3): |e| for |e| <= c, (e^2 + c^2) / 2c above,
    with c = 0.2 max |e| over the batch's valid pixels."""
    error = (pred - target).abs()[valid]
    c = (0.2 * error.max().detach()).clamp(min=1e-6)
    return error.where(error <= c, (error ** 2 + c ** 2) / (2 * c)).mean()


DEPTH_LOSSES = {"l1": l1_depth, "berhu": berhu_depth}


def depth_loss(name: str, pred: Tensor, target: Tensor) -> Tensor:
    """``pred`` (N, 1, H, W) or (N, H, W), ``target`` (N, H, W) metres with 0 = no ground truth."""
    if name not in DEPTH_LOSSES:
        raise ValueError(f"unknown depth loss {name!r}; valid: {', '.join(DEPTH_LOSSES)}")
    if pred.dim() == 4:
        pred = pred[:, 0]
    valid = target > 0
    if not valid.any():
        return pred.sum() * 0.0
    return DEPTH_LOSSES[name](pred, target, valid)
