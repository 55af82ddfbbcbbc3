"""The TIPS views of one image: one global crop and M local crops (random resized crops with horizontal flips).

All randomness comes from an explicit numpy ``Generator``, so a view is a pure function of (image, config, rng).
Crops stay uint8 through the collate and the host → device copy (4× fewer bytes than float crops); the trainer
converts them to float on the device (``Batch.for_model``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF


@dataclass
class ViewConfig:
    """Crop sizes, scales and augmentations. Defaults are the TIPS recipe (224 global + 6 × 98 local)."""

    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_size: int = 98
    local_scale: tuple[float, float] = (0.05, 0.32)
    num_local: int = 6
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    color_jitter: bool = False
    jitter_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2  # applied only with color_jitter

    def __post_init__(self) -> None:
        self.global_scale = (float(self.global_scale[0]), float(self.global_scale[1]))
        self.local_scale = (float(self.local_scale[0]), float(self.local_scale[1]))
        self.ratio = (float(self.ratio[0]), float(self.ratio[1]))
        self.jitter_strength = tuple(float(v) for v in self.jitter_strength)  # type: ignore[assignment]
        if self.num_local < 0:
            raise ValueError(f"num_local must be >= 0, got {self.num_local}")


Box = tuple[int, int, int, int]  # top, left, height, width


def sample_crop_boxes(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator,
    n: int,
) -> list[Box]:
    """``n`` boxes by torchvision's RandomResizedCrop rule with an explicit generator: up to 10 tries of (area
    fraction, log-uniform aspect) that fit, else the largest centre crop whose aspect lies within ``ratio``.

    All tries of all boxes come from one draw and are computed as arrays: in a worker's inner loop the number of
    generator and Python calls, not the arithmetic, is what costs."""
    u = rng.random((n, 10, 4))  # per try: area fraction, aspect, top, left
    target_area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = np.rint(np.sqrt(target_area * aspect)).astype(np.int64)  # (n, 10)
    h = np.rint(np.sqrt(target_area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    rows, first = np.arange(n), fits.argmax(axis=1)  # the first try that fits
    h, w, u = h[rows, first], w[rows, first], u[rows, first]
    top = np.minimum((u[:, 2] * (height - h + 1)).astype(np.int64), height - h)
    left = np.minimum((u[:, 3] * (width - w + 1)).astype(np.int64), width - w)
    boxes = list(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist()))
    if fits.any(axis=1).all():
        return boxes
    in_ratio = width / height
    if in_ratio < ratio[0]:
        cw, ch = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = height, int(round(height * ratio[1]))
    else:
        cw, ch = width, height
    centre = ((height - ch) // 2, (width - cw) // 2, ch, cw)
    return [box if ok else centre for box, ok in zip(boxes, fits.any(axis=1).tolist())]


def sample_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Box:
    """One box of :func:`sample_crop_boxes` (top, left, height, width)."""
    return sample_crop_boxes(height, width, scale, ratio, rng, 1)[0]


def _color_jitter(crop: torch.Tensor, cfg: ViewConfig, rng: np.random.Generator) -> torch.Tensor:
    """ColorJitter (random order, p = jitter_p) then RandomGrayscale (p = grayscale_p) on (..., 3, h, w) uint8 crops."""
    if rng.random() < cfg.jitter_p:
        b, c, s, hue = cfg.jitter_strength
        ops = [
            lambda x, f: TF.adjust_brightness(x, f),
            lambda x, f: TF.adjust_contrast(x, f),
            lambda x, f: TF.adjust_saturation(x, f),
            lambda x, f: TF.adjust_hue(x, f),
        ]
        factors = [rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
                   rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-hue, hue)]
        for i in rng.permutation(4):
            crop = ops[i](crop, float(factors[i]))
    if rng.random() < cfg.grayscale_p:
        crop = TF.rgb_to_grayscale(crop, num_output_channels=3)
    return crop


def resized_crop(image: np.ndarray, box: Box, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 image, box → (1, 3, size, size) uint8 in channels-last memory (bilinear, antialias)."""
    top, left, h, w = box
    # One copy of the box, as (1, h, w, 3) seen as (1, 3, h, w): channels-last strides, the batch one included,
    # are what torch's uint8 antialiased resize needs for its fast path (kept for the output). Few tensor calls:
    # with 7 views per sample their fixed cost is a large part of a worker's time.
    region = torch.from_numpy(np.array(image[top : top + h, left : left + w]).reshape(1, h, w, 3))
    return F.interpolate(region.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def make_views(
    image: np.ndarray, cfg: ViewConfig, rng: np.random.Generator,
    global_out: torch.Tensor | None = None, local_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 image → global crop (S, S, 3) and local crops (M, s, s, 3), uint8, channels last: random
    resized crops, h-flips, jitter. Draws, in order: the global box, the M local boxes, the 1 + M flips, then
    each view's jitter.

    global_out, local_out: where to write them (e.g. this sample's rows of the batch), else new tensors.
    ``.permute(2, 0, 1)`` / ``.permute(0, 3, 1, 2)`` gives the (3, S, S) / (M, 3, s, s) views.
    """
    S, s, M = cfg.global_size, cfg.local_size, cfg.num_local
    global_out = torch.empty((S, S, 3), dtype=torch.uint8) if global_out is None else global_out
    local_out = torch.empty((M, s, s, 3), dtype=torch.uint8) if local_out is None else local_out
    height, width = image.shape[:2]
    boxes = sample_crop_boxes(height, width, cfg.global_scale, cfg.ratio, rng, 1)
    if M:
        boxes += sample_crop_boxes(height, width, cfg.local_scale, cfg.ratio, rng, M)
    flips = (rng.random(1 + M) < cfg.hflip_p).tolist()
    targets = [global_out[None].permute(0, 3, 1, 2)] + list(local_out.permute(0, 3, 1, 2).split(1))
    for i, (box, flip, target) in enumerate(zip(boxes, flips, targets)):
        crop = resized_crop(image, box, S if i == 0 else s)  # (1, 3, size, size)
        if flip:
            crop = crop.flip(-1)
        if cfg.color_jitter:
            crop = _color_jitter(crop, cfg, rng)
        target.copy_(crop)
    return global_out, local_out


def draft_size(width: int, height: int, cfg: ViewConfig) -> tuple[int, int] | None:
    """The smallest decoded (width, height) of a ``width`` x ``height`` image that the crops of ``cfg`` need, or
    None when nothing smaller will do (a ``tips.io.decode_image`` draft request).

    Rule: decoding at reduced scale must never make a crop upsample where a full decode would not. The smallest
    box :func:`sample_crop_box` can draw on an image of area A has a shorter side of at least
    sqrt(scale_min · A · aspect_min) - 0.5 pixels (area fraction ≥ scale_min, aspect within ``ratio``, sides
    rounded), so every view of output size S keeps at least S pixels across while A ≥ (S + 0.5)² / (scale_min ·
    aspect_min). The decoded area is kept at least the largest such bound over the views.
    """
    aspect_min = min(cfg.ratio[0], 1 / cfg.ratio[1])
    views = [(cfg.global_size, cfg.global_scale[0])]
    if cfg.num_local:
        views.append((cfg.local_size, cfg.local_scale[0]))
    needed_area = max((size + 0.5) ** 2 / (scale_min * aspect_min) for size, scale_min in views)
    shrink = math.sqrt(needed_area / (width * height))  # linear factor the decode may keep
    if shrink > 0.5:  # the first DCT reduction halves both sides
        return None
    return math.ceil(width * shrink), math.ceil(height * shrink)
