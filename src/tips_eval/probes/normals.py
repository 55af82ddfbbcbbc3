"""Surface-normal probe on frozen cached features (fast protocol), probe3d's loss and metrics.

Heads: ``lin1`` / ``lin4`` (standardised inputs, 1×1 conv to 3 channels, or 4 with the uncertainty-aware loss's
κ, bilinear ×u) on the depth probe's features (no final LN, CLS1 concatenated), or ``dpt`` (``dense.py``).
Loss: the angular loss or probe3d's uncertainty-aware one, on the prediction resized to the ground truth over valid
pixels (non-zero ground-truth normal; the datasets zero the normals where depth is invalid). Metrics per image on
the prediction resized to each image's own ground truth, L2-normalised, then averaged over images.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import tips

from ..datasets import DenseDataset
from ..features import FeatureCache, FeatureSpec
from .common import (
    ProbeOutcome, Standardize, VisSample, cache_channel_stats, head_device, make_optimizer, optimizer_step,
    training_batches, upsample_bilinear,
)
from .config import ProbeConfig
from .losses import AngularLoss, UncertaintyAngularLoss
from .metrics import NormalMetrics


class LinearNormalsHead(nn.Module):
    """(B, C, h, w) features → (B, K, u·h, u·w) raw normals (K = 3, or 4 with κ's raw channel last).

    The 1×1 conv runs before the bilinear ×u (both linear: the same map, u² fewer positions convolved).
    """

    def __init__(self, in_channels: int, out_channels: int = 3, upsample: int = 4) -> None:
        super().__init__()
        self.standardize = Standardize(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(self.standardize(x))
        return upsample_bilinear(z, (z.shape[-2] * self.upsample, z.shape[-1] * self.upsample))


def resize_prediction(pred: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(B, K, h, w) → (B, K, H, W), ``bilinear`` (as ``predict``) or ``bicubic`` (probe3d), align_corners False."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred, size=size, mode=mode, align_corners=False)


class NormalsObjective(nn.Module):
    """The chosen angular loss on the prediction resized to the target; valid = non-zero target normal."""

    def __init__(self, loss: str = "angular", mode: str = "bilinear") -> None:
        super().__init__()
        self.loss = UncertaintyAngularLoss() if loss == "uncertainty" else AngularLoss()
        self.mode = mode

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred (B, K, h, w), target (B, 3, H, W) unit (0 = invalid) → scalar."""
        pred = resize_prediction(pred, target.shape[-2:], self.mode)
        return self.loss(pred, target, target.abs().sum(1) > 0)


def out_channels(cfg: ProbeConfig) -> int:
    return 4 if cfg.normals.loss == "uncertainty" else 3


def train_head(head: nn.Module, cache: FeatureCache, cfg: ProbeConfig, mode: str = "bilinear") -> nn.Module:
    """Train any head mapping cached probe inputs (B, C, h, w) to raw normals on the cache's normal targets."""
    objective = NormalsObjective(cfg.normals.loss, mode)
    optimizer = make_optimizer(head, cfg.optim)
    device = head_device(head)
    head.train()
    for step, idx in training_batches(len(cache), cfg, f"normals probe ({cfg.normals.head})"):
        x, target = cache.inputs(idx).to(device), cache.targets("normals", idx).to(device)
        optimizer_step(optimizer, objective(head(x), target), step, cfg.optim)
    return head.eval()


def train_linear(cache: FeatureCache, cfg: ProbeConfig, device) -> LinearNormalsHead:
    torch.manual_seed(cfg.seed)
    head = LinearNormalsHead(cache.channels, out_channels(cfg), cfg.normals.upsample).to(device)
    if cfg.normals.standardize:
        head.standardize.set_stats(*cache_channel_stats(cache))
    return train_head(head, cache, cfg)


def normals_picture(normals: np.ndarray) -> np.ndarray:
    """(3, H, W) normals (0 = invalid) → (H, W, 3) float RGB in [0, 1]: (n + 1) / 2, invalid pixels grey."""
    rgb = (np.clip(normals.transpose(1, 2, 0), -1, 1) + 1) / 2
    rgb[~np.any(normals != 0, axis=0)] = 0.6
    return rgb


@torch.no_grad()
def evaluate(
    head: nn.Module, cache: FeatureCache, dataset: DenseDataset, cfg: ProbeConfig, mode: str = "bilinear",
) -> tuple[dict, list[VisSample]]:
    """Per image: prediction resized (``mode``) to the image's ground truth, metrics on all valid pixels and, with
    ``normals.mask=objects``, on object pixels only."""
    everything, objects = NormalMetrics(), None
    if cfg.normals.mask == "objects":
        if not (dataset.info.has_seg and dataset.info.object_classes):
            raise ValueError(f"{dataset.info.name}: normals.mask=objects needs seg maps with object classes")
        objects, object_ids = NormalMetrics(), torch.tensor(dataset.info.object_classes)
    vis: list[VisSample] = []
    device = head_device(head)
    for start in range(0, len(cache), cfg.extract_batch_size):
        idx = np.arange(start, min(start + cfg.extract_batch_size, len(cache)))
        raw = head(cache.inputs(idx).to(device)).float().cpu()
        for j, i in enumerate(idx):
            gt = dataset.load_normals(int(i))
            pred = F.normalize(resize_prediction(raw[j: j + 1, :3], gt.shape[-2:], mode)[0], dim=0, eps=1e-12)
            everything.update(pred, gt)
            if objects is not None:
                objects.update(pred, gt, torch.isin(dataset.load_seg(int(i)), object_ids))
            if len(vis) < cfg.num_vis:
                vis.append(VisSample(dataset.keys[i], np.asarray(dataset.load_image(int(i))),
                                     normals_picture(gt.numpy()), normals_picture(pred.numpy()),
                                     np.asarray(cache.patch[i], dtype=np.float32)))
    metrics = {"all": everything.compute()}
    if objects is not None:
        metrics["objects"] = objects.compute()
    return metrics, vis


def run_normals(
    model: tips.TIPS, train: DenseDataset, val: DenseDataset, cfg: ProbeConfig, spec: FeatureSpec, cache_fn=None,
) -> ProbeOutcome:
    """Train and evaluate one normals probe. ``cache_fn(dataset, spec) → FeatureCache`` gives the cached features."""
    if not (train.info.has_normals and val.info.has_normals):
        raise ValueError(f"{train.info.name}: the normals probe needs surface normals in both splits "
                         "(scenes written by tips-scenes ≥ 2, folder *.normals.png, nyu-normals:, navi:)")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_cache, val_cache = cache_fn(train, spec), cache_fn(val, spec)
    timings["features_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    head = train_linear(train_cache, cfg, next(model.parameters()).device)
    timings["train_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    metrics, vis = evaluate(head, val_cache, val, cfg)
    timings["eval_s"] = time.perf_counter() - t2
    protocol = {"head": cfg.normals.head, "loss": cfg.normals.loss, "upsample_to_gt": "bilinear",
                "mask": cfg.normals.mask, "standardize": cfg.normals.standardize}
    return ProbeOutcome(metrics, vis, timings, protocol)
