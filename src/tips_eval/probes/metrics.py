"""Dense-probe metrics: dataset-level mIoU (mmseg), per-image depth and surface-normal metrics averaged over
images (DINOv2, probe3d)."""

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


class PerImageMean:
    """Per-image metric dicts averaged over images (not over pixels); images without valid pixels are counted."""

    def __init__(self) -> None:
        self.per_image: list[dict] = []
        self.skipped = 0

    def add(self, m: dict | None) -> dict | None:
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


class DepthMetrics(PerImageMean):
    """Accumulates per-image metrics and averages them over images (not over pixels), as DINOv2 and probe3d.

    depth_min / depth_max: valid ground truth lies in [min, max] (0 is always invalid); predictions are clamped
    to the same range. eigen_crop: restrict to the Eigen crop of 480x640 NYU frames.
    """

    def __init__(self, depth_min: float, depth_max: float, eigen_crop: bool = False) -> None:
        super().__init__()
        self.depth_min, self.depth_max, self.eigen_crop = depth_min, depth_max, eigen_crop

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
        return self.add(image_depth_metrics(pred, gt, self.valid_mask(gt, mask)))


# ------------------------------------------------------------------ surface normals
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees


def image_normal_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> dict | None:
    """One image: pred (3, H, W) any length, gt (3, H, W) unit (zero vector = invalid), valid optional (H, W) →
    angular-error statistics in degrees over the valid pixels (None if there are none).

    mean, median (numpy's: the two middle values averaged), rmse (root of the mean squared angle) and pct_11.25 / pct_22.5 / pct_30: the percentage of
    pixels whose error is below the threshold (probe3d, Ladicky et al.). Unclamped arccos, in float64.
    """
    mask = gt.abs().sum(0) > 0
    if valid is not None:
        mask &= valid
    p, g = pred.permute(1, 2, 0)[mask].double(), gt.permute(1, 2, 0)[mask].double()
    if g.shape[0] == 0:
        return None
    cos = (torch.nn.functional.normalize(p, dim=-1, eps=1e-12) * torch.nn.functional.normalize(g, dim=-1)).sum(-1)
    err = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    # quantile, not Tensor.median: the latter returns the lower middle value of an even count
    out = {"mean": float(err.mean()), "median": float(err.quantile(0.5)), "rmse": float((err**2).mean().sqrt())}
    for t in NORMAL_THRESHOLDS:
        out[f"pct_{t:g}"] = float((err < t).double().mean() * 100)
    return out


class NormalMetrics(PerImageMean):
    """Per-image angular-error metrics averaged over images (probe3d)."""

    def update(self, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> dict | None:
        """pred (3, H, W), gt (3, H, W) (zero = invalid), valid optional (H, W) bool restricting the pixels."""
        return self.add(image_normal_metrics(pred, gt, valid))
