"""Dense-prediction evaluators, accumulated over a whole test set (and over DDP ranks).

Segmentation (NYUD-v2 protocol, see docs/nyud.md): one K x K confusion matrix C (rows = ground
truth, columns = prediction) summed over every labelled pixel of every test image, never
averaged per image.  With n_ii the diagonal, t_i = sum_j n_ij and p_i = sum_j n_ji:
pixel_acc = sum n_ii / sum t_i; mean_acc = mean over classes with t_i > 0 of n_ii / t_i;
IoU_i = n_ii / (t_i + p_i - n_ii); ``miou`` = mean IoU over the classes present in the ground
truth or the prediction (t_i + p_i > 0); classes absent from both are left out (NaN in
``per_class_iou``).

Depth (d prediction, d* ground truth, over valid pixels d* > 0, optionally d* <= cap and inside
the Eigen crop rows 45:471, cols 41:601 of a 480 x 640 frame; predictions clipped to
[min_depth, max_depth]): ``rmse`` = sqrt(mean (d - d*)^2) pooled over all valid test pixels;
``rmse_per_image`` = mean over images of each image's RMSE; ``neg_log_rmse`` = -ln(rmse), the
chart's x axis; ``rmse_log`` = sqrt(mean (ln d - ln d*)^2); ``abs_rel`` = mean |d - d*| / d*;
``sq_rel`` = mean (d - d*)^2 / d*; ``log10`` = mean |log10 d - log10 d*|; ``delta_k`` = fraction
with max(d / d*, d* / d) < 1.25^k.  All but ``rmse_per_image`` are pooled over pixels.

Surface normals (Eigen & Fergus, ICCV 2015; Fouhey et al., ICCV 2013): over the pixels whose
ground truth n* is not (0, 0, 0), the angle between the prediction n and n*, both scaled to unit
length, e_i = acos(clamp(n . n*, -1, 1)) in degrees (a zero or non-finite prediction counts as
90 degrees), pooled over all valid test pixels: ``mean_angle`` = mean e, ``median_angle`` =
median e, ``rmse_angle`` = sqrt(mean e^2), ``within_11_25``, ``within_22_5``, ``within_30`` =
fraction of pixels with e < 11.25, 22.5, 30 degrees.  The median is read from a histogram of
0.01-degree bins summed over the test set (and DDP ranks): the mean of the centres of the bins
holding the two middle values, within 0.005 degrees of the exact median.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

EIGEN_CROP = (slice(45, 471), slice(41, 601))


def _all_reduce_sum(x: Tensor, reduce: bool = True) -> Tensor:
    """Sum of ``x`` over DDP ranks (every rank must call it), or ``x`` itself when not ``reduce``."""
    if reduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


class SegmentationMeter:
    """Confusion matrix of integer predictions against labels, ``ignore_index`` pixels skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = class_names or [str(c) for c in range(num_classes)]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` (..., H, W) class ids or (N, K, H, W) logits; ``target`` (..., H, W)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        valid = target != self.ignore_index
        truth, guess = target[valid].long().cpu(), pred[valid].long().cpu()
        if truth.numel() and (truth.min() < 0 or truth.max() >= self.num_classes):
            raise ValueError(f"target has class ids outside 0..{self.num_classes - 1} (besides {self.ignore_index})")
        self.confusion += torch.bincount(truth * self.num_classes + guess,
                                         minlength=self.num_classes ** 2).view(self.num_classes, self.num_classes)

    def compute(self, reduce: bool = True) -> dict[str, object]:
        """The metrics over everything seen, summed over DDP ranks unless ``reduce`` is False."""
        c = _all_reduce_sum(self.confusion, reduce).double()
        hits, truth, predicted = c.diag(), c.sum(1), c.sum(0)
        union = truth + predicted - hits
        iou = torch.where(union > 0, hits / union.clamp(min=1), torch.full_like(hits, float("nan")))
        present = union > 0
        recall = hits[truth > 0] / truth[truth > 0]
        total = truth.sum().item()
        return {
            "miou": iou[present].mean().item() if present.any() else float("nan"),
            "pixel_acc": hits.sum().item() / total if total else float("nan"),
            "mean_acc": recall.mean().item() if recall.numel() else float("nan"),
            "per_class_iou": {name: iou[k].item() for k, name in enumerate(self.class_names)},
            "classes_present": int(present.sum().item()),
            "pixels": int(total),
        }


class DepthMeter:
    """Depth errors over valid pixels, pooled over the test set, plus the per-image RMSE mean."""

    SUMS = ("sq", "sq_log", "abs_rel", "sq_rel", "log10", "delta1", "delta2", "delta3")

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, cap: float | None = None,
                 eigen_crop: bool = False) -> None:
        self.min_depth, self.max_depth, self.cap, self.eigen_crop = min_depth, max_depth, cap, eigen_crop
        self.sums = torch.zeros(len(self.SUMS), dtype=torch.float64)
        self.pixels = torch.zeros((), dtype=torch.float64)
        self.image_rmse_sum = torch.zeros((), dtype=torch.float64)
        self.images = torch.zeros((), dtype=torch.float64)

    def valid_mask(self, target: Tensor) -> Tensor:
        valid = target > 0
        if self.cap is not None:
            valid &= target <= self.cap
        if self.eigen_crop:
            if tuple(target.shape[-2:]) != (480, 640):
                raise ValueError(f"the Eigen crop is defined on 480x640 frames, got {tuple(target.shape[-2:])}")
            crop = torch.zeros_like(valid)
            crop[..., EIGEN_CROP[0], EIGEN_CROP[1]] = True
            valid &= crop
        return valid

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` and ``target`` in metres, shape (N, H, W) or (N, 1, H, W); 0 in target = no ground truth."""
        pred, target = pred.detach().double().cpu(), target.detach().double().cpu()
        if pred.dim() == 4:
            pred = pred[:, 0]
        if target.dim() == 4:
            target = target[:, 0]
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred = torch.nan_to_num(pred, nan=self.min_depth, posinf=self.max_depth).clamp(self.min_depth, self.max_depth)
        valid = self.valid_mask(target)
        for d, g, v in zip(pred, target, valid):
            if not v.any():
                continue
            d, g = d[v], g[v]
            sq = (d - g) ** 2
            ratio = torch.maximum(d / g, g / d)
            self.sums += torch.stack([
                sq.sum(), ((d.log() - g.log()) ** 2).sum(), ((d - g).abs() / g).sum(), (sq / g).sum(),
                (d.log10() - g.log10()).abs().sum(), *((ratio < 1.25 ** k).sum().double() for k in (1, 2, 3)),
            ])
            self.pixels += v.sum()
            self.image_rmse_sum += sq.mean().sqrt()
            self.images += 1

    def compute(self, reduce: bool = True) -> dict[str, float]:
        """The metrics over everything seen, summed over DDP ranks unless ``reduce`` is False."""
        sums = _all_reduce_sum(self.sums, reduce)
        pixels, images = _all_reduce_sum(self.pixels, reduce).item(), _all_reduce_sum(self.images, reduce).item()
        if pixels == 0:
            raise ValueError("no valid ground-truth depth pixel was seen")
        mean = dict(zip(self.SUMS, (sums / pixels).tolist()))
        rmse = math.sqrt(mean["sq"])
        return {
            "rmse": rmse,
            "neg_log_rmse": -math.log(rmse) if rmse > 0 else math.inf,
            "rmse_per_image": _all_reduce_sum(self.image_rmse_sum, reduce).item() / images,
            "rmse_log": math.sqrt(mean["sq_log"]),
            "abs_rel": mean["abs_rel"],
            "sq_rel": mean["sq_rel"],
            "log10": mean["log10"],
            "delta1": mean["delta1"],
            "delta2": mean["delta2"],
            "delta3": mean["delta3"],
            "pixels": int(pixels),
            "images": int(images),
        }


class NormalsMeter:
    """Angular errors of surface normals over valid pixels, pooled over the test set."""

    BIN = 0.01  # degrees per histogram bin (the median's resolution)
    THRESHOLDS = (11.25, 22.5, 30.0)
    SUMS = ("angle", "sq_angle", "within_11_25", "within_22_5", "within_30")

    def __init__(self) -> None:
        self.histogram = torch.zeros(round(180 / self.BIN), dtype=torch.int64)
        self.sums = torch.zeros(len(self.SUMS), dtype=torch.float64)
        self.images = torch.zeros((), dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` (N, 3, H, W), any length; ``target`` (N, 3, H, W) unit normals, (0, 0, 0) = no ground truth."""
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
                             "(N, 3, H, W)")
        pred = torch.nan_to_num(pred.detach().double().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
        target = target.detach().double().cpu()
        valid = (target != 0).any(dim=1)
        dot = (pred * target).sum(dim=1)[valid]
        lengths = (pred.square().sum(dim=1) * target.square().sum(dim=1)).sqrt()[valid]
        cosine = torch.where(lengths > 0, dot / lengths, 0.0)  # n . n* / (|n| |n*|); a zero prediction: 90 degrees
        angles = torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))
        bins = (angles / self.BIN).long().clamp(max=len(self.histogram) - 1)
        self.histogram += torch.bincount(bins, minlength=len(self.histogram))
        self.sums += torch.stack([angles.sum(), (angles ** 2).sum(),
                                  *((angles < t).sum().double() for t in self.THRESHOLDS)])
        self.images += valid.flatten(1).any(dim=1).sum()

    def compute(self, reduce: bool = True) -> dict[str, float]:
        """The metrics over everything seen, summed over DDP ranks unless ``reduce`` is False."""
        histogram = _all_reduce_sum(self.histogram, reduce)
        pixels = int(histogram.sum().item())
        if pixels == 0:
            raise ValueError("no pixel with a ground-truth normal was seen")
        mean = dict(zip(self.SUMS, (_all_reduce_sum(self.sums, reduce) / pixels).tolist()))
        middle = torch.searchsorted(histogram.cumsum(0), torch.tensor([(pixels - 1) // 2, pixels // 2]), right=True)
        return {
            "mean_angle": mean["angle"],
            "median_angle": ((middle.double() + 0.5) * self.BIN).mean().item(),
            "rmse_angle": math.sqrt(mean["sq_angle"]),
            "within_11_25": mean["within_11_25"],
            "within_22_5": mean["within_22_5"],
            "within_30": mean["within_30"],
            "pixels": pixels,
            "images": int(_all_reduce_sum(self.images, reduce).item()),
        }
