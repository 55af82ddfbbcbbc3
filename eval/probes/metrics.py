"""Dense-probe metrics: dataset-level mIoU (mmseg), per-image depth metrics averaged over images (DINOv2,
probe3d)."""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = 255
EIGEN_CROP = (45, 471, 41, 601)  # rows 45:471, cols 41:601 of a 480x640 NYU frame
NYU_FRAME = (480, 640)


# ------------------------------------------------------------------ segmentation
def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """pred, target: same shape, class ids → (K, K) int64 counts, rows = ground truth, cols = prediction.

    Pixels whose target is ``ignore_index`` are left out.
    """
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.max() >= num_classes or t.min() < 0):
        raise ValueError(f"target class id {int(t.max())} outside 0..{num_classes - 1}")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(conf: torch.Tensor, class_names: list[str], subset: list[int] | None = None) -> dict:
    """(K, K) dataset-level confusion matrix → mIoU, per-class IoU, pixel accuracy (and mIoU over ``subset``).

    IoU_c = I_c / (G_c + P_c − I_c) summed over the whole set; classes with an empty union (absent from both
    ground truth and prediction) are left out of every mean and reported as None.
    """
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.full_like(inter, math.nan))
    out = {
        "miou": _nanmean(iou),
        "pixel_accuracy": float(inter.sum() / conf.sum()) if conf.sum() > 0 else math.nan,
        "per_class_iou": {name: (None if math.isnan(v) else v) for name, v in zip(class_names, iou.tolist())},
        "classes_counted": int(present.sum()),
    }
    if subset is not None:
        out["miou_subset"] = _nanmean(iou[list(subset)]) if subset else math.nan
        out["subset"] = [class_names[i] for i in subset]
    return out


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


# ------------------------------------------------------------------ depth
def eigen_crop_mask(height: int, width: int) -> torch.Tensor:
    """(480, 640) bool mask of the Eigen crop; other frame sizes are an error (the crop is in NYU pixels)."""
    if (height, width) != NYU_FRAME:
        raise ValueError(f"the Eigen crop is defined on 480x640 NYU frames, got {height}x{width}")
    mask = torch.zeros(height, width, dtype=torch.bool)
    r0, r1, c0, c1 = EIGEN_CROP
    mask[r0:r1, c0:c1] = True
    return mask


def align_scale_shift(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Least-squares s, t minimising ‖s·pred + t − gt‖² over the given (valid) pixels → s·pred + t (probe3d)."""
    a = torch.stack([pred, torch.ones_like(pred)], dim=1).double()  # (M, 2)
    sol = torch.linalg.lstsq(a, gt.double()[:, None]).solution  # (2, 1)
    return (a @ sol)[:, 0].to(pred.dtype)


def image_depth_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> dict | None:
    """One image: pred, gt (H, W) metres, valid (H, W) bool → metrics over valid pixels (None if there are none).

    rmse, abs_rel, log10 (mean |log10 p − log10 g|), d1..d3 (fraction with max(p/g, g/p) < 1.25^k),
    rmse_aligned: RMSE after a per-image least-squares scale and shift of the prediction (probe3d), and
    bias: the mean signed error p − g in metres (negative = predicted too near), which tells a head that is off
    by a constant apart from one that does not follow the scene.
    """
    p, g = pred[valid].double(), gt[valid].double()
    if g.numel() == 0:
        return None
    ratio = torch.maximum(p / g, g / p)
    err = p - g
    out = {
        "rmse": float((err**2).mean().sqrt()),
        "abs_rel": float((err.abs() / g).mean()),
        "log10": float((p.log10() - g.log10()).abs().mean()),
        "bias": float(err.mean()),
    }
    for k in (1, 2, 3):
        out[f"d{k}"] = float((ratio < 1.25**k).double().mean())
    out["rmse_aligned"] = float(((align_scale_shift(p, g) - g) ** 2).mean().sqrt()) if g.numel() > 1 else out["rmse"]
    return out


class DepthMetrics:
    """Accumulates per-image metrics and averages them over images (not over pixels), as DINOv2 and probe3d.

    depth_min / depth_max: valid ground truth lies in [min, max] (0 is always invalid); predictions are clamped
    to the same range. eigen_crop: restrict to the Eigen crop of 480x640 NYU frames.
    """

    def __init__(self, depth_min: float, depth_max: float, eigen_crop: bool = False) -> None:
        self.depth_min, self.depth_max, self.eigen_crop = depth_min, depth_max, eigen_crop
        self.per_image: list[dict] = []
        self.skipped = 0

    def valid_mask(self, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = (gt > 0) & (gt >= self.depth_min) & (gt <= self.depth_max)
        if self.eigen_crop:
            valid &= eigen_crop_mask(*gt.shape).to(gt.device)
        if mask is not None:
            valid &= mask
        return valid

    def update(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> dict | None:
        """pred, gt: (H, W) metres; mask: optional (H, W) bool restricting the pixels (e.g. objects only)."""
        pred = pred.clamp(self.depth_min, self.depth_max)
        m = image_depth_metrics(pred, gt, self.valid_mask(gt, mask))
        if m is None:
            self.skipped += 1
        else:
            self.per_image.append(m)
        return m

    def compute(self) -> dict:
        if not self.per_image:
            return {"images": 0, "images_without_valid_pixels": self.skipped}
        out = {k: sum(m[k] for m in self.per_image) / len(self.per_image) for k in self.per_image[0]}
        return {**out, "images": len(self.per_image), "images_without_valid_pixels": self.skipped}
