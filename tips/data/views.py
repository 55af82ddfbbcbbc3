"""The TIPS views of one image: one global crop and M local crops (TIPS.md §5.8).

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


def sample_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Box:
    """torchvision's RandomResizedCrop box rule with an explicit generator: up to 10 tries of (area fraction,
    log-uniform aspect) that fit, else the largest centre crop whose aspect lies within ``ratio``.

    The numbers of all 10 tries come from one draw of the generator (one call instead of up to 40: the call, not
    the numbers, is what costs in a worker's inner loop)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    draws = rng.random(40).tolist()
    for i in range(0, 40, 4):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[i])
        aspect = math.exp(log_lo + (log_hi - log_lo) * draws[i + 1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(draws[i + 2] * (height - h + 1)), height - h)
            left = min(int(draws[i + 3] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _color_jitter(crop: torch.Tensor, cfg: ViewConfig, rng: np.random.Generator) -> torch.Tensor:
    """ColorJitter (random order, p = jitter_p) then RandomGrayscale (p = grayscale_p) on a (3, h, w) uint8 crop."""
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


def random_view(
    image: np.ndarray, size: int, scale: tuple[float, float], cfg: ViewConfig, rng: np.random.Generator
) -> torch.Tensor:
    """(H, W, 3) uint8 image → (3, size, size) uint8 in channels-last memory: random resized crop (bilinear,
    antialias), h-flip, jitter."""
    top, left, h, w = sample_crop_box(image.shape[0], image.shape[1], scale, cfg.ratio, rng)
    # One copy of the box into a (1, h, w, 3) tensor seen as (1, 3, h, w): channels-last strides, the batch one
    # included, are what torch's uint8 antialiased resize needs for its fast path (kept for the output).
    region = torch.from_numpy(np.array(image[top : top + h, left : left + w])).view(1, h, w, 3)
    crop = F.interpolate(region.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0]
    if rng.random() < cfg.hflip_p:
        crop = crop.flip(-1)
    if cfg.color_jitter:
        crop = _color_jitter(crop, cfg, rng)
    return crop


def make_views(
    image: np.ndarray, cfg: ViewConfig, rng: np.random.Generator,
    global_out: torch.Tensor | None = None, local_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 image → global crop (S, S, 3) and local crops (M, s, s, 3), uint8, channels last.

    global_out, local_out: where to write them (e.g. this sample's rows of the batch), else new tensors.
    ``.permute(2, 0, 1)`` / ``.permute(0, 3, 1, 2)`` gives the (3, S, S) / (M, 3, s, s) views.
    """
    S, s, M = cfg.global_size, cfg.local_size, cfg.num_local
    global_out = torch.empty((S, S, 3), dtype=torch.uint8) if global_out is None else global_out
    local_out = torch.empty((M, s, s, 3), dtype=torch.uint8) if local_out is None else local_out
    global_out.copy_(random_view(image, S, cfg.global_scale, cfg, rng).permute(1, 2, 0))
    for m in range(M):
        local_out[m].copy_(random_view(image, s, cfg.local_scale, cfg, rng).permute(1, 2, 0))
    return global_out, local_out


def draft_size(width: int, height: int, cfg: ViewConfig) -> tuple[int, int] | None:
    """The smallest decoded (width, height) of a ``width`` x ``height`` image that the crops of ``cfg`` need, or
    None when nothing smaller will do (a ``tips.io.decode_rgb`` draft request).

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
