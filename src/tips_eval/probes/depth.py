"""Linear depth probe (DINOv2 lin.1 / lin.4): ×4 bilinear upsampling, 1×1 conv to depth bins, expectation.

Features: block tokens without the final LayerNorm, CLS1 concatenated to every patch token (lin.1: last block;
lin.4: four blocks). Loss: SigLoss + 0.5 × gradient loss on the prediction resized to the ground truth.
Metrics per image, then averaged over images (metrics.DepthMetrics).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import tips

from ..datasets import DatasetInfo, DenseDataset
from ..features import FeatureCache, FeatureSpec, compute_features, image_to_tensor, probe_input
from .augment import augmented_batch
from .common import (
    GuidedUpsample, ProbeOutcome, VisSample, cache_channel_stats, centre_pad, forward_padded, make_optimizer, optimizer_step,
    training_batches, upsample_bilinear,
)
from .config import ProbeConfig
from .losses import GradientLoss, SigLoss
from .metrics import DepthMetrics


def bin_centers(bins: int, depth_min: float, depth_max: float, spacing: str = "uniform") -> torch.Tensor:
    """(bins,) centres from depth_min to depth_max: evenly spaced ("uniform", DINOv2's UD) or evenly spaced in
    log depth ("log": exp(linspace(log min, log max)); DINOv2's ``torch.logspace(min, max)`` would give
    10**min … 10**max instead)."""
    if not 0 < depth_min < depth_max:
        raise ValueError(f"depth range [{depth_min}, {depth_max}]: expected 0 < min < max")
    if spacing == "uniform":
        return torch.linspace(depth_min, depth_max, bins)
    if spacing == "log":
        return torch.exp(torch.linspace(math.log(depth_min), math.log(depth_max), bins))
    raise ValueError(f"spacing {spacing!r}: expected uniform or log")


class LinearDepthHead(nn.Module):
    """(B, C, h, w) features → (B, 1, u·h, u·w) metres.

    Bilinear ×u then a 1×1 conv to ``bins`` logits z; weights (ReLU(z) + 0.1) / Σ; depth = Σ weights × centres.
    The conv runs before the upsampling: both are linear and bilinear weights sum to one, so this equals
    DINOv2's upsample-then-conv while convolving u² fewer positions.
    """

    def __init__(self, in_channels: int, centers: torch.Tensor, upsample: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, centers.numel(), kernel_size=1)
        self.register_buffer("centers", centers.float().clone())
        self.register_buffer("input_mean", torch.zeros(in_channels))
        self.register_buffer("input_std", torch.ones(in_channels))
        self.upsample = upsample

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with fixed channel statistics: a reparametrisation of the same linear head that
        lets a short schedule converge on un-normalised (no final LayerNorm) tokens of any scale."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    def forward(self, x: torch.Tensor, lift: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, C, h, w) → depth (B, 1, u·h, u·w); lift: another ×u of the logits (B, bins, h, w) than bilinear,
        e.g. the joint bilateral upsampler guided by the images (``depth.upsampler=jbu``)."""
        x = (x - self.input_mean.view(1, -1, 1, 1)) / self.input_std.view(1, -1, 1, 1)
        z = self.conv(x)  # (B, bins, h, w)
        u = self.upsample
        if lift is not None:
            z = lift(z).permute(0, 2, 3, 1)  # (B, uh, uw, bins)
        else:
            z = upsample_bilinear(z, (z.shape[-2] * u, z.shape[-1] * u), channels_last=True)  # (B, uh, uw, bins)
        # Σ_k w_k c_k with w = (ReLU(z) + 0.1) / Σ_j (ReLU(z_j) + 0.1), as one matmul over the bins.
        r = F.relu(z) @ torch.stack([self.centers, torch.ones_like(self.centers)], dim=1)  # (B, uh, uw, 2)
        k = self.centers.numel()
        depth = (r[..., 0] + 0.1 * self.centers.sum()) / (r[..., 1] + 0.1 * k)
        return depth[:, None]


class DepthObjective(nn.Module):
    """SigLoss (mean term only during ``sig_warmup`` steps) + ``grad_weight`` × GradientLoss."""

    def __init__(self, depth_min: float, depth_max: float, grad_weight: float = 0.5, sig_warmup: int = 100) -> None:
        super().__init__()
        self.depth_min, self.depth_max = depth_min, depth_max
        self.grad_weight, self.sig_warmup = grad_weight, sig_warmup
        self.sig, self.grad = SigLoss(), GradientLoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor, step: int) -> torch.Tensor:
        """pred (B, 1, h, w), target (B, H, W) metres (0 invalid) → scalar; pred is resized to (H, W)."""
        pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        valid = (target > 0) & (target >= self.depth_min) & (target <= self.depth_max)
        loss = self.sig(pred, target, valid, warm_up=step < self.sig_warmup)
        return loss + self.grad_weight * self.grad(pred, target, valid) if self.grad_weight else loss


def depth_range(cfg: ProbeConfig, info: DatasetInfo) -> tuple[float, float]:
    lo = cfg.depth.depth_min if cfg.depth.depth_min is not None else info.depth_min
    hi = cfg.depth.depth_max if cfg.depth.depth_max is not None else info.depth_max
    if lo is None or hi is None:
        raise ValueError(f"{info.name}: no depth range in the dataset; set depth.depth_min=… depth.depth_max=…")
    return float(lo), float(hi)


def _build(channels: int, cfg: ProbeConfig, lo: float, hi: float, device) -> tuple[LinearDepthHead, DepthObjective]:
    torch.manual_seed(cfg.seed)
    head = LinearDepthHead(channels, bin_centers(cfg.depth.bins, lo, hi, cfg.depth.spacing), cfg.depth.upsample)
    return head.to(device), DepthObjective(lo, hi, cfg.depth.grad_loss_weight, cfg.depth.sig_warmup)


def _lift(guided: GuidedUpsample | None, index, flip: bool = False):
    return None if guided is None else (lambda z: guided(z, index, flip))


def train_fast(cache: FeatureCache, cfg: ProbeConfig, lo: float, hi: float, device,
               guided: GuidedUpsample | None = None) -> LinearDepthHead:
    head, objective = _build(cache.channels, cfg, lo, hi, device)
    if cfg.depth.standardize:
        head.set_input_stats(*cache_channel_stats(cache))
    optimizer = make_optimizer(head, cfg.optim)
    for step, idx in training_batches(len(cache), cfg, "depth probe"):
        x, depth = cache.inputs(idx).to(device), cache.targets("depth", idx).to(device)
        optimizer_step(optimizer, objective(head(x, _lift(guided, idx)), depth, step), step, cfg.optim)
    return head.eval()


class _Evaluator:
    """Per-image metrics on all valid pixels and, with ``depth.mask=objects``, on object pixels only."""

    def __init__(self, dataset: DenseDataset, cfg: ProbeConfig, lo: float, hi: float) -> None:
        eigen = cfg.depth.eigen_crop == "on" or (cfg.depth.eigen_crop == "auto" and dataset.info.eigen_crop)
        self.dataset, self.num_vis, self.eigen = dataset, cfg.num_vis, eigen
        self.all = DepthMetrics(lo, hi, eigen)
        self.objects = None
        if cfg.depth.mask == "objects":
            if not (dataset.info.has_seg and dataset.info.object_classes):
                raise ValueError(f"{dataset.info.name}: depth.mask=objects needs seg maps with object classes")
            self.objects = DepthMetrics(lo, hi, eigen)
            self.object_ids = torch.tensor(dataset.info.object_classes)
            self.object_rmse: dict[str, float] = {}  # per image key, so that two models compare image by image
        self.vis: list[VisSample] = []

    def add(self, i: int, pred: torch.Tensor, features: np.ndarray) -> None:
        """pred (1, 1, h, w) metres at any size; resized (bilinear) to the ground truth."""
        gt = self.dataset.load_depth(i)
        pred = F.interpolate(pred, size=gt.shape, mode="bilinear", align_corners=False)[0, 0].cpu()
        self.all.update(pred, gt)
        if self.objects is not None:
            one = self.objects.update(pred, gt, torch.isin(self.dataset.load_seg(i), self.object_ids))
            if one is not None:
                self.object_rmse[self.dataset.keys[i]] = one["rmse"]
        if len(self.vis) < self.num_vis:
            image = np.asarray(self.dataset.load_image(i))
            self.vis.append(VisSample(self.dataset.keys[i], image, gt.numpy(), pred.numpy(), features))

    def metrics(self) -> dict:
        out = {"all": self.all.compute(), "eigen_crop": self.eigen}
        if self.objects is not None:
            out["objects"] = {**self.objects.compute(), "per_image_rmse": self.object_rmse}
        return out


@torch.no_grad()
def evaluate_fast(
    head: LinearDepthHead, cache: FeatureCache, flipped: FeatureCache | None, dataset: DenseDataset,
    cfg: ProbeConfig, lo: float, hi: float, guided: GuidedUpsample | None = None,
) -> tuple[dict, list[VisSample]]:
    """Predictions from cached val features (guided: the ×u by ``depth.upsampler=jbu``); with ``flipped`` (features of mirrored images) averaged with the
    mirrored-back prediction of the flipped image (flip TTA)."""
    ev = _Evaluator(dataset, cfg, lo, hi)
    device = next(head.parameters()).device
    for start in range(0, len(cache), cfg.extract_batch_size):
        idx = np.arange(start, min(start + cfg.extract_batch_size, len(cache)))
        pred = head(cache.inputs(idx).to(device), _lift(guided, idx))
        if flipped is not None:
            pred = 0.5 * (pred + head(flipped.inputs(idx).to(device), _lift(guided, idx, flip=True)).flip(-1))
        for j, i in enumerate(idx):
            ev.add(int(i), pred[j: j + 1], np.asarray(cache.patch[i], dtype=np.float32))
    return ev.metrics(), ev.vis


def _depth_fn(model: tips.TIPS, head: LinearDepthHead, spec: FeatureSpec):
    """images (B, 3, H, W), multiples of the patch size → depth (B, 1, H, W)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        patch, cls = compute_features(model, x, spec)
        return F.interpolate(head(probe_input(patch, cls)), size=x.shape[-2:], mode="bilinear", align_corners=False)

    return fn


def train_dinov2(
    model: tips.TIPS, dataset: DenseDataset, spec: FeatureSpec, cfg: ProbeConfig, lo: float, hi: float
) -> LinearDepthHead:
    """Features recomputed every step from random crops (``augment.crop``) with flips."""
    device = next(model.parameters()).device
    head, objective = _build(model.width * len(spec.layers) * (2 if spec.cls else 1), cfg, lo, hi, device)
    optimizer = make_optimizer(head, cfg.optim)
    rng = np.random.default_rng(cfg.seed)
    aug, fn = cfg.augment, _depth_fn(model, head, spec)
    for step, idx in training_batches(len(dataset), cfg, "depth probe (dinov2)"):
        images, _, depth = augmented_batch(dataset, idx, tuple(aug.crop), tuple(aug.scale_range), aug.test_short_side,
                                           aug.flip, rng)
        pred = forward_padded(fn, images.to(device), model.patch_size)
        optimizer_step(optimizer, objective(pred, depth.to(device), step), step, cfg.optim)
    return head.eval()


@torch.no_grad()
def evaluate_dinov2(
    model: tips.TIPS, head: LinearDepthHead, dataset: DenseDataset, spec: FeatureSpec, cfg: ProbeConfig,
    lo: float, hi: float,
) -> tuple[dict, list[VisSample]]:
    """Full frames, centre-padded to the patch size, optional flip TTA."""
    ev = _Evaluator(dataset, cfg, lo, hi)
    device = next(model.parameters()).device
    fn, p = _depth_fn(model, head, spec), model.patch_size
    for i in tqdm(range(len(dataset)), desc="depth eval", unit="img", disable=not cfg.progress):
        image = dataset.load_image(i)
        x = image_to_tensor(image, (image.height, image.width))[None].to(device)
        pred = forward_padded(fn, x, p)
        if cfg.depth.flip_tta:
            pred = 0.5 * (pred + forward_padded(fn, x.flip(-1), p).flip(-1))
        features = compute_features(model, centre_pad(x, p)[0], spec)[0][0].cpu().numpy()
        ev.add(i, pred, features)
    return ev.metrics(), ev.vis


def run_depth(
    model: tips.TIPS, train: DenseDataset, val: DenseDataset, cfg: ProbeConfig, spec: FeatureSpec, cache_fn=None,
) -> ProbeOutcome:
    """Train and evaluate one depth probe. ``cache_fn(dataset, spec) → FeatureCache`` serves the fast protocol."""
    if not (train.info.has_depth and val.info.has_depth):
        raise ValueError(f"{train.info.name}: the depth probe needs depth maps in both splits")
    lo, hi = depth_range(cfg, val.info)
    device = next(model.parameters()).device
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if cfg.protocol == "fast":
        train_cache, val_cache = cache_fn(train, spec), cache_fn(val, spec)
        flipped = cache_fn(val, FeatureSpec(**{**spec.__dict__, "flip": True})) if cfg.depth.flip_tta else None
        timings["features_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        jbu = cfg.depth.upsampler == "jbu"
        guided = [GuidedUpsample(ds, cfg.depth.upsample, "jbu") if jbu else None for ds in (train, val)]
        head = train_fast(train_cache, cfg, lo, hi, device, guided[0])
        timings["train_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        metrics, vis = evaluate_fast(head, val_cache, flipped, val, cfg, lo, hi, guided[1])
    else:
        head = train_dinov2(model, train, spec, cfg, lo, hi)
        timings["train_s"] = time.perf_counter() - t0
        t2 = time.perf_counter()
        metrics, vis = evaluate_dinov2(model, head, val, spec, cfg, lo, hi)
    timings["eval_s"] = time.perf_counter() - t2
    protocol = {"depth_range": [lo, hi], "bins": cfg.depth.bins, "spacing": cfg.depth.spacing, "head": cfg.depth.head,
                "flip_tta": cfg.depth.flip_tta, "eigen_crop": metrics["eigen_crop"], "mask": cfg.depth.mask,
                "standardize": cfg.depth.standardize and cfg.protocol == "fast",
                "upsample": cfg.depth.upsample, "upsampler": cfg.depth.upsampler}
    if cfg.protocol == "dinov2":
        protocol["crop"] = list(cfg.augment.crop)
    return ProbeOutcome(metrics, vis, timings, protocol)
