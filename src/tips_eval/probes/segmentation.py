"""Linear semantic-segmentation probe (DINOv2 "lin."): BatchNorm + 1×1 conv on frozen patch tokens.

Logits at patch resolution are upsampled bilinearly to the label size; cross-entropy ignores 255 (mean over
the labelled pixels); mIoU comes from one confusion matrix over the whole validation split. With ``seg.upsample``
u ≥ 1 the logits are first taken to u× the patch grid by ``seg.upsampler`` (bilinear, or ``jbu`` guided by the
image). The head runs before the upsampling: BatchNorm (in eval) and the 1×1 conv are affine per pixel and both
upsamplers mix cells with weights summing to one, so this equals upsampling the features first.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import tips

from ..datasets import IGNORE_INDEX, DenseDataset
from ..features import FeatureCache, FeatureSpec, compute_features, image_to_tensor, probe_input
from .augment import augmented_batch, resize_short_side
from .common import (
    GuidedUpsample, ProbeOutcome, VisSample, centre_pad, forward_padded, head_device, make_optimizer,
    optimizer_step, training_batches, upsample_bilinear,
)
from .config import ProbeConfig
from .metrics import confusion_matrix, segmentation_metrics


class LinearSegHead(nn.Module):
    """(B, C, h, w) features → (B, K, h, w) logits: BatchNorm over channels, then a 1×1 conv (init N(0, 0.01))."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def upsampled_loss(logits: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """logits (B, K, h, w), seg (B, H, W) → CE over pixels whose label is not 255, logits resized to (H, W)."""
    return F.cross_entropy(upsample_bilinear(logits, seg.shape[-2:]), seg, ignore_index=IGNORE_INDEX)


def class_subset(cfg: ProbeConfig, class_names: list[str], object_classes: list[int]) -> list[int] | None:
    """Class ids of the subset mIoU: the named classes, or the dataset's objects with ``seg.object_classes``."""
    if cfg.seg.classes:
        unknown = [c for c in cfg.seg.classes if c not in class_names]
        if unknown:
            raise ValueError(f"seg.classes {unknown} not among the dataset's classes {class_names}")
        return [class_names.index(c) for c in cfg.seg.classes]
    if cfg.seg.object_classes:
        if not object_classes:
            raise ValueError("seg.object_classes: this dataset marks no class as an object (is_object)")
        return object_classes
    return None


# ------------------------------------------------------------------ fast protocol (cached features)
def train_fast(cache: FeatureCache, num_classes: int, cfg: ProbeConfig, device: torch.device,
               lift: GuidedUpsample | None = None) -> LinearSegHead:
    """Train the head on cached features and nearest-resized labels; no augmentation. lift: the logits' ×u."""
    torch.manual_seed(cfg.seed)
    head = LinearSegHead(cache.channels, num_classes).to(device)
    optimizer = make_optimizer(head, cfg.optim)
    head.train()
    for step, idx in training_batches(len(cache), cfg, "segmentation probe"):
        x, seg = cache.inputs(idx).to(device), cache.targets("seg", idx).to(device)
        logits = lift(head(x), idx) if lift is not None else head(x)
        optimizer_step(optimizer, upsampled_loss(logits, seg), step, cfg.optim)
    return head.eval()


@torch.no_grad()
def evaluate_fast(
    head: LinearSegHead, cache: FeatureCache, dataset: DenseDataset, subset: list[int] | None, num_vis: int,
    batch_size: int = 16, lift: GuidedUpsample | None = None,
) -> tuple[dict, list[VisSample]]:
    """Logits from cached val features, upsampled to each image's own label size."""
    K = dataset.info.num_classes
    conf = torch.zeros(K, K, dtype=torch.int64)
    vis: list[VisSample] = []
    device = head_device(head)
    for start in range(0, len(cache), batch_size):
        idx = np.arange(start, min(start + batch_size, len(cache)))
        logits = head(cache.inputs(idx).to(device))
        logits = (lift(logits, idx) if lift is not None else logits).cpu()
        for j, i in enumerate(idx):
            gt = dataset.load_seg(int(i))
            pred = F.interpolate(logits[j: j + 1], size=gt.shape, mode="bilinear", align_corners=False)[0].argmax(0)
            conf += confusion_matrix(pred, gt, K)
            if len(vis) < num_vis:
                vis.append(VisSample(dataset.keys[i], np.asarray(dataset.load_image(int(i))), gt.numpy(),
                                     pred.numpy(), np.asarray(cache.patch[i], dtype=np.float32)))
    return segmentation_metrics(conf, dataset.info.class_names, subset), vis


# ------------------------------------------------------------------ dinov2 protocol (augmented crops)
def _logits_fn(model: tips.TIPS, head: LinearSegHead, spec: FeatureSpec):
    """images (B, 3, H, W) with H, W multiples of the patch size → logits (B, K, H, W)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        patch, cls = compute_features(model, x, spec)
        return F.interpolate(head(probe_input(patch, cls)), size=x.shape[-2:], mode="bilinear", align_corners=False)

    return fn


def train_dinov2(model: tips.TIPS, dataset: DenseDataset, spec: FeatureSpec, cfg: ProbeConfig) -> LinearSegHead:
    """Features recomputed every step from random crops of rescaled, flipped, colour-jittered images."""
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    channels = model.width * len(spec.layers) * (2 if spec.cls else 1)
    head = LinearSegHead(channels, dataset.info.num_classes).to(device)
    optimizer = make_optimizer(head, cfg.optim)
    rng = np.random.default_rng(cfg.seed)
    aug = cfg.augment
    fn = _logits_fn(model, head, spec)
    head.train()
    for step, idx in training_batches(len(dataset), cfg, "segmentation probe (dinov2)"):
        images, seg, _ = augmented_batch(dataset, idx, tuple(aug.crop), tuple(aug.scale_range), aug.test_short_side,
                                         aug.flip, rng)
        logits = forward_padded(fn, images.to(device), model.patch_size)
        optimizer_step(optimizer, F.cross_entropy(logits, seg.to(device), ignore_index=IGNORE_INDEX), step, cfg.optim)
    return head.eval()


def slide_inference(fn, image: torch.Tensor, crop: tuple[int, int], stride: int, num_classes: int) -> torch.Tensor:
    """mmseg's sliding window: image (1, 3, H, W) → mean logits (1, K, H, W) over overlapping crop windows.

    Windows of size ``crop`` (smaller images: the whole image) every ``stride`` pixels, the last one flush
    with the border; ``fn`` maps a window (1, 3, h, w) to logits (1, K, h, w).
    """
    _, _, H, W = image.shape
    ch, cw = min(crop[0], H), min(crop[1], W)
    rows = max(H - ch + stride - 1, 0) // stride + 1
    cols = max(W - cw + stride - 1, 0) // stride + 1
    total = image.new_zeros(1, num_classes, H, W)
    count = image.new_zeros(1, 1, H, W)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + ch, H), min(c * stride + cw, W)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            total[..., y1:y2, x1:x2] += fn(image[..., y1:y2, x1:x2])
            count[..., y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def evaluate_dinov2(
    model: tips.TIPS, head: LinearSegHead, dataset: DenseDataset, spec: FeatureSpec, cfg: ProbeConfig,
    subset: list[int] | None,
) -> tuple[dict, list[VisSample]]:
    """Short side resized to ``augment.test_short_side``, sliding window, logits resized to the label size."""
    K = dataset.info.num_classes
    conf = torch.zeros(K, K, dtype=torch.int64)
    vis: list[VisSample] = []
    device = next(model.parameters()).device
    fn = _logits_fn(model, head, spec)
    p = model.patch_size
    for i in tqdm(range(len(dataset)), desc="segmentation eval (sliding window)", disable=not cfg.progress):
        sample = dataset[i]
        size = (sample.image.height, sample.image.width)
        if cfg.augment.test_short_side:
            size = resize_short_side(size, cfg.augment.test_short_side)
        x = image_to_tensor(sample.image, size)[None].to(device)
        logits = slide_inference(lambda w: forward_padded(fn, w, p), x, tuple(cfg.augment.crop), cfg.augment.stride, K)
        pred = F.interpolate(logits, size=sample.seg.shape, mode="bilinear", align_corners=False)[0].argmax(0).cpu()
        conf += confusion_matrix(pred, sample.seg, K)
        if len(vis) < cfg.num_vis:
            patch, _ = compute_features(model, centre_pad(x, p)[0], spec)
            vis.append(VisSample(sample.key, np.asarray(sample.image), sample.seg.numpy(), pred.numpy(),
                                 patch[0].cpu().numpy()))
    return segmentation_metrics(conf, dataset.info.class_names, subset), vis


# ------------------------------------------------------------------ one run
def run_segmentation(
    model: tips.TIPS, train: DenseDataset, val: DenseDataset, cfg: ProbeConfig, spec: FeatureSpec,
    cache_fn=None,
) -> ProbeOutcome:
    """Train and evaluate one probe. ``cache_fn(dataset, spec) → FeatureCache`` serves the fast protocol."""
    if not (train.info.has_seg and val.info.has_seg):
        raise ValueError(f"{train.info.name}: the segmentation probe needs seg maps in both splits")
    subset = class_subset(cfg, val.info.class_names, val.info.object_classes)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if cfg.protocol == "fast":
        train_cache, val_cache = cache_fn(train, spec), cache_fn(val, spec)
        timings["features_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        lifts = [GuidedUpsample(ds, cfg.seg.upsample, cfg.seg.upsampler) if cfg.seg.upsample else None
                 for ds in (train, val)]
        head = train_fast(train_cache, train.info.num_classes, cfg, next(model.parameters()).device, lifts[0])
        timings["train_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        metrics, vis = evaluate_fast(head, val_cache, val, subset, cfg.num_vis, cfg.extract_batch_size, lifts[1])
    else:
        head = train_dinov2(model, train, spec, cfg)
        timings["train_s"] = time.perf_counter() - t0
        t2 = time.perf_counter()
        metrics, vis = evaluate_dinov2(model, head, val, spec, cfg, subset)
    timings["eval_s"] = time.perf_counter() - t2
    protocol = {"subset_classes": None if subset is None else [val.info.class_names[i] for i in subset],
                "upsample": cfg.seg.upsample, "upsampler": cfg.seg.upsampler if cfg.seg.upsample else "bilinear"}
    if cfg.protocol == "dinov2":
        protocol.update(crop=list(cfg.augment.crop), stride=cfg.augment.stride, test_short_side=cfg.augment.test_short_side)
    return ProbeOutcome(metrics, vis, timings, protocol)
