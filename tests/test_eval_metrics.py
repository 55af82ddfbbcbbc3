"""Dense-probe metrics and losses against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from tips_eval.probes.common import learning_rate, upsample_bilinear
from tips_eval.probes.config import OptimSection
from tips_eval.probes.depth import bin_centers
from tips_eval.probes.losses import GradientLoss, SigLoss
from tips_eval.probes.metrics import (
    DepthMetrics,
    confusion_matrix,
    eigen_crop_mask,
    image_depth_metrics,
    segmentation_metrics,
)
from tips_eval.probes.segmentation import slide_inference


# ------------------------------------------------------------------ segmentation
def test_miou_ignores_255_pixels_and_leaves_classes_absent_from_gt_and_prediction_out_of_the_mean():
    # 4 classes; class 3 never appears in either map.
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])  # the two 255 pixels predict 3 and 0: not counted
    conf = confusion_matrix(pred, gt, num_classes=4)
    assert conf.sum() == 6
    m = segmentation_metrics(conf, ["a", "b", "c", "d"])
    # class 0: I=1, G=2, P=2 → 1/3; class 1: I=2, G=2, P=3 → 2/3; class 2: I=1, G=2, P=1 → 1/2; class 3: U=0.
    assert m["per_class_iou"]["a"] == pytest.approx(1 / 3)
    assert m["per_class_iou"]["b"] == pytest.approx(2 / 3)
    assert m["per_class_iou"]["c"] == pytest.approx(1 / 2)
    assert m["per_class_iou"]["d"] is None
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["classes_counted"] == 3


def test_miou_is_accumulated_over_the_dataset_not_averaged_per_image():
    gt1, pred1 = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    gt2, pred2 = torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 0, 0, 0]])
    conf = confusion_matrix(pred1, gt1, 2) + confusion_matrix(pred2, gt2, 2)
    m = segmentation_metrics(conf, ["x", "y"])
    # class 0: I=4, U=4+3 → 4/7; class 1: I=1, U=4 → 1/4 (per-image means would give (1 + (0+1/4)/2)/2).
    assert m["miou"] == pytest.approx((4 / 7 + 1 / 4) / 2)


def test_subset_miou_averages_only_the_chosen_classes_that_occur():
    gt = torch.tensor([0, 0, 1, 2, 2])
    pred = torch.tensor([0, 0, 2, 2, 2])
    m = segmentation_metrics(confusion_matrix(pred, gt, 4), ["sky", "ground", "sphere", "cube"], subset=[2, 3])
    assert m["miou_subset"] == pytest.approx(2 / 3)  # sphere I=2 U=3; cube absent → excluded
    assert m["subset"] == ["sphere", "cube"]


def test_slide_inference_covers_every_pixel_and_averages_overlaps():
    image = torch.arange(2 * 7 * 10, dtype=torch.float32).reshape(1, 2, 7, 10)
    calls = []

    def fn(window):
        calls.append(tuple(window.shape[-2:]))
        return window[:, :1] * 2  # position-independent: the average of overlaps equals the full-image result

    out = slide_inference(fn, image, crop=(4, 4), stride=3, num_classes=1)
    torch.testing.assert_close(out, image[:, :1] * 2)
    assert all(c == (4, 4) for c in calls) and len(calls) == 2 * 3  # rows from 0, 3; cols from 0, 3, 6
    small = slide_inference(fn, image, crop=(16, 16), stride=8, num_classes=1)  # image smaller than the crop
    torch.testing.assert_close(small, image[:, :1] * 2)


# ------------------------------------------------------------------ depth metrics
def test_delta_thresholds_abs_rel_and_log10_by_hand():
    gt = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    pred = torch.tensor([[1.2, 1.3, 1.6, 2.0]])
    m = image_depth_metrics(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    assert m["d1"] == pytest.approx(1 / 4)  # only 1.2 < 1.25
    assert m["d2"] == pytest.approx(2 / 4)  # 1.2, 1.3 < 1.5625
    assert m["d3"] == pytest.approx(3 / 4)  # and 1.6 < 1.953125
    assert m["abs_rel"] == pytest.approx((0.2 + 0.3 + 0.6 + 1.0) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.04 + 0.09 + 0.36 + 1.0) / 4))
    assert m["log10"] == pytest.approx(sum(math.log10(v) for v in (1.2, 1.3, 1.6, 2.0)) / 4)
    assert m["bias"] == pytest.approx((0.2 + 0.3 + 0.6 + 1.0) / 4)


def test_bias_is_signed_and_blind_to_errors_that_cancel():
    gt = torch.tensor([[2.0, 4.0]])
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert image_depth_metrics(gt - 0.5, gt, valid)["bias"] == pytest.approx(-0.5)  # too near everywhere
    m = image_depth_metrics(torch.tensor([[3.0, 3.0]]), gt, valid)  # flat: too far on one pixel, too near on the other
    assert m["bias"] == pytest.approx(0.0) and m["rmse"] == pytest.approx(1.0)


def test_rmse_is_computed_per_image_then_averaged_over_images():
    metrics = DepthMetrics(0.1, 10.0)
    # image 1: one valid pixel off by 3; image 2: three valid pixels exact.
    metrics.update(torch.tensor([[4.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    metrics.update(torch.tensor([[2.0, 2.0, 2.0]]), torch.tensor([[2.0, 2.0, 2.0]]))
    out = metrics.compute()
    assert out["rmse"] == pytest.approx((3.0 + 0.0) / 2)
    # image 3: four pixels off by 1 → per-image mean (3 + 0 + 1) / 3, not the pooled sqrt((9 + 4) / 8)
    metrics.update(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[2.0, 2.0, 2.0, 2.0]]))
    assert metrics.compute()["rmse"] == pytest.approx((3.0 + 0.0 + 1.0) / 3)
    assert metrics.compute()["images"] == 3


def test_predictions_are_clamped_and_ground_truth_outside_the_range_is_invalid():
    metrics = DepthMetrics(1.0, 10.0)
    m = metrics.update(torch.tensor([[50.0, 0.01, 3.0]]), torch.tensor([[10.0, 1.0, 20.0]]))
    assert m["rmse"] == pytest.approx(0.0)  # 50 → 10 and 0.01 → 1; the gt of 20 m is out of range
    assert metrics.update(torch.zeros(1, 2), torch.zeros(1, 2)) is None
    assert metrics.compute()["images_without_valid_pixels"] == 1


def test_eigen_crop_keeps_rows_45_to_470_and_cols_41_to_600_of_a_480x640_frame():
    mask = eigen_crop_mask(480, 640)
    assert mask.sum() == (471 - 45) * (601 - 41)
    assert mask[45, 41] and mask[470, 600] and not mask[44, 41] and not mask[45, 40] and not mask[471, 600]
    assert not mask[45, 601]
    with pytest.raises(ValueError, match="480x640"):
        eigen_crop_mask(240, 320)
    gt = torch.full((480, 640), 2.0)
    pred = gt.clone()
    pred[0, 0] = 9.0  # wrong only outside the crop
    metrics = DepthMetrics(0.001, 10.0, eigen_crop=True)
    assert metrics.update(pred, gt)["rmse"] == 0.0
    assert DepthMetrics(0.001, 10.0).update(pred, gt)["rmse"] > 0


def test_scale_and_shift_aligned_rmse_forgives_an_affine_error():
    gt = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = image_depth_metrics(2 * gt + 1, gt, torch.ones_like(gt, dtype=torch.bool))
    assert m["rmse"] > 1 and m["rmse_aligned"] == pytest.approx(0.0, abs=1e-6)


def test_object_mask_restricts_depth_metrics():
    metrics = DepthMetrics(0.1, 10.0)
    gt = torch.tensor([[1.0, 2.0]])
    m = metrics.update(torch.tensor([[1.0, 5.0]]), gt, mask=torch.tensor([[True, False]]))
    assert m["rmse"] == 0.0


# ------------------------------------------------------------------ bins and losses
def test_log_spaced_bins_run_from_min_to_max_evenly_in_log_depth():
    c = bin_centers(256, 0.001, 10.0, "log")
    assert c[0].item() == pytest.approx(0.001, rel=1e-5) and c[-1].item() == pytest.approx(10.0, rel=1e-5)
    assert bool((c[1:] > c[:-1]).all())
    ratios = c[1:] / c[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()), rtol=1e-4, atol=0)
    buggy = torch.logspace(0.001, 10.0, 256)  # DINOv2's: 10**0.001 … 10**10
    assert buggy[-1] > 1e9 and not torch.allclose(c, buggy)


def test_uniform_bins_are_dinov2_ud_centres():
    c = bin_centers(256, 0.001, 10.0, "uniform")
    assert c[0].item() == pytest.approx(0.001) and c[-1].item() == pytest.approx(10.0)
    assert c[1].item() - c[0].item() == pytest.approx((10.0 - 0.001) / 255, rel=1e-4)
    with pytest.raises(ValueError):
        bin_centers(8, 0.0, 1.0, "log")


def test_sigloss_is_zero_for_a_perfect_prediction_and_scale_invariant_up_to_its_mean_term():
    gt = torch.tensor([[[1000.0, 2000.0, 4000.0]]])
    valid = torch.ones_like(gt, dtype=torch.bool)
    loss = SigLoss()
    assert loss(gt, gt, valid).item() == pytest.approx(0.0, abs=1e-6)
    # pred = 2 × gt: g = log 2 everywhere (ε negligible at these depths), Var(g) = 0 → sqrt(0.15) log 2
    assert loss(2 * gt, gt, valid).item() == pytest.approx(math.sqrt(0.15) * math.log(2), rel=1e-4)
    # g = (log 2, 0, 0): unbiased Var = (log 2)²/3, mean = log 2 / 3
    pred = gt * torch.tensor([[[2.0, 1.0, 1.0]]])
    l2 = math.log(2)
    expected = math.sqrt(l2**2 / 3 + 0.15 * (l2 / 3) ** 2)
    assert loss(pred, gt, valid).item() == pytest.approx(expected, rel=1e-4)
    assert loss(pred, gt, valid, warm_up=True).item() == pytest.approx(math.sqrt(0.15) * l2 / 3, rel=1e-4)
    assert loss(pred, gt, torch.zeros_like(valid)).item() == 0.0


def test_gradient_loss_ignores_a_global_scale_and_sees_a_local_bump():
    gt = torch.full((1, 5, 5), 1000.0)
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert GradientLoss()(3 * gt, gt, valid).item() == pytest.approx(0.0, abs=1e-6)
    pred = gt.clone()
    pred[0, 2, 2] *= math.e  # r = 1 at the centre, 0 elsewhere
    # stride 1: pairs two apart through the centre: (0,2)-(2,2), (2,2)-(4,2), (2,0)-(2,2), (2,2)-(2,4) → 4 / 25
    assert GradientLoss(strides=(1,))(pred, gt, valid).item() == pytest.approx(4 / 25, rel=1e-4)
    # stride 2 sees the 3x3 map (0,2,4)², centre (1,1): no pair two apart passes through it → 0
    assert GradientLoss(strides=(2,))(pred, gt, valid).item() == pytest.approx(0.0, abs=1e-6)
    invalid = valid.clone()
    invalid[0, 0, 2] = False  # breaks one vertical pair and drops a pixel from the count
    assert GradientLoss(strides=(1,))(pred, gt, invalid).item() == pytest.approx(3 / 24, rel=1e-4)


# ------------------------------------------------------------------ helpers
def test_matrix_bilinear_upsampling_equals_interpolate():
    x = torch.randn(2, 5, 3, 4)
    for size in ((12, 16), (7, 9)):
        ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsample_bilinear(x, size), ref, atol=1e-5, rtol=1e-5)
        last = upsample_bilinear(x, size, channels_last=True)
        torch.testing.assert_close(last, ref.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    poly = OptimSection(iterations=110, lr=1.0, warmup=10, schedule="poly")
    assert learning_rate(0, poly) == pytest.approx(0.1) and learning_rate(9, poly) == pytest.approx(1.0)
    assert learning_rate(60, poly) == pytest.approx(0.5) and learning_rate(110, poly) == 0.0
    cos = OptimSection(iterations=110, lr=1.0, warmup=10, schedule="cosine")
    assert learning_rate(60, cos) == pytest.approx(0.5) and learning_rate(110, cos) == pytest.approx(0.0)
