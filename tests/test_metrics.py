"""Segmentation and depth evaluators against hand-computed values."""

import math

import pytest
import torch

from cmim_dense.metrics import DepthMeter, SegmentationMeter


def test_confusion_matrix_metrics_by_hand() -> None:
    meter = SegmentationMeter(4, class_names=["a", "b", "c", "d"])
    # image 1: truth a a b b, prediction a b b b; image 2: truth b c and an ignored pixel, prediction b a (and c)
    meter.update(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))
    meter.update(torch.tensor([[1, 0, 2]]), torch.tensor([[1, 2, 255]]))
    assert meter.confusion.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    result = meter.compute()
    # IoU: a 1/(2+2-1) = 1/3, b 3/(3+4-3) = 3/4, c 0/(1+0-0) = 0, d absent from truth and prediction
    assert result["per_class_iou"]["a"] == pytest.approx(1 / 3)
    assert result["per_class_iou"]["b"] == pytest.approx(3 / 4)
    assert result["per_class_iou"]["c"] == 0.0 and math.isnan(result["per_class_iou"]["d"])
    assert result["miou"] == pytest.approx((1 / 3 + 3 / 4 + 0) / 3)
    assert result["pixel_acc"] == pytest.approx(4 / 6)
    assert result["mean_acc"] == pytest.approx((1 / 2 + 3 / 3 + 0 / 1) / 3)
    assert result["classes_present"] == 3 and result["pixels"] == 6


def test_one_matrix_over_the_set_not_a_mean_over_images() -> None:
    """Averaged per image: image 1 has mIoU 1.0, image 2 (IoU 0 and 1/2) 0.25, mean 0.625; pooled: 0.65."""
    meter = SegmentationMeter(2)
    meter.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]))
    meter.update(torch.tensor([1, 1]), torch.tensor([1, 0]))
    # C = [[4, 1], [0, 1]]: IoU0 = 4/5, IoU1 = 1/2
    assert meter.compute()["miou"] == pytest.approx((4 / 5 + 1 / 2) / 2)


def test_logits_are_reduced_with_argmax_and_bad_targets_rejected() -> None:
    meter = SegmentationMeter(3)
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 2, 0, 0] = 1.0
    logits[0, 1, 0, 1] = 1.0
    meter.update(logits, torch.tensor([[[2, 0]]]))
    assert meter.confusion[2, 2] == 1 and meter.confusion[0, 1] == 1
    with pytest.raises(ValueError, match="outside 0..2"):
        meter.update(torch.tensor([0]), torch.tensor([7]))


def test_depth_metrics_by_hand() -> None:
    meter = DepthMeter()
    # image 1: prediction 2, 4 against truth 1, 4 (a pixel without ground truth is skipped); image 2: 3 vs 2
    meter.update(torch.tensor([[[2.0, 4.0, 9.0]]]), torch.tensor([[[1.0, 4.0, 0.0]]]))
    meter.update(torch.tensor([[[3.0]]]), torch.tensor([[[2.0]]]))
    r = meter.compute()
    assert r["pixels"] == 3 and r["images"] == 2
    assert r["rmse"] == pytest.approx(math.sqrt((1 + 0 + 1) / 3))
    assert r["neg_log_rmse"] == pytest.approx(-math.log(math.sqrt(2 / 3)))
    assert r["rmse_per_image"] == pytest.approx((math.sqrt(1 / 2) + 1.0) / 2)
    assert r["abs_rel"] == pytest.approx((1 / 1 + 0 + 1 / 2) / 3)
    assert r["sq_rel"] == pytest.approx((1 / 1 + 0 + 1 / 2) / 3)
    assert r["rmse_log"] == pytest.approx(math.sqrt((math.log(2) ** 2 + 0 + math.log(1.5) ** 2) / 3))
    assert r["log10"] == pytest.approx((math.log10(2) + 0 + math.log10(1.5)) / 3)
    # ratios 2, 1, 1.5: delta1 (< 1.25) 1/3, delta2 (< 1.5625) 2/3, delta3 (< 1.953) 2/3
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))


def test_depth_predictions_clipped_and_cap_and_eigen_crop() -> None:
    meter = DepthMeter(min_depth=1e-3, max_depth=10.0, cap=5.0)
    meter.update(torch.tensor([[[-1.0, 50.0, 1.0]]]), torch.tensor([[[1.0, 4.0, 8.0]]]))  # 8 m is beyond the cap
    r = meter.compute()
    assert r["pixels"] == 2
    assert r["rmse"] == pytest.approx(math.sqrt(((1e-3 - 1) ** 2 + 36) / 2))
    cropped = DepthMeter(eigen_crop=True)
    target = torch.ones(1, 480, 640)
    cropped.update(torch.full((1, 480, 640), 2.0), target)
    assert cropped.compute()["pixels"] == 426 * 560
    with pytest.raises(ValueError, match="480x640"):
        DepthMeter(eigen_crop=True).update(torch.ones(1, 4, 4), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="no valid ground-truth"):
        DepthMeter().compute()
