"""The TIPS views of one image: one global crop and M local crops (random resized crops with horizontal flips).

All randomness comes from an explicit numpy ``Generator``, so a view is a pure function of (image, config, rng).
Crops stay uint8 until the batch is collated (4× less worker memory than float crops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode


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
    log-uniform aspect) that fit, else the largest centre crop whose aspect lies within ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
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
    image: torch.Tensor, size: int, scale: tuple[float, float], cfg: ViewConfig, rng: np.random.Generator
) -> torch.Tensor:
    """(3, H, W) uint8 image → (3, size, size) uint8: random resized crop (bilinear, antialias), h-flip, jitter."""
    top, left, h, w = sample_crop_box(image.shape[-2], image.shape[-1], scale, cfg.ratio, rng)
    crop = TF.resized_crop(
        image, top, left, h, w, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    if rng.random() < cfg.hflip_p:
        crop = crop.flip(-1)
    if cfg.color_jitter:
        crop = _color_jitter(crop, cfg, rng)
    return crop


def make_views(
    image: torch.Tensor, cfg: ViewConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) uint8 image → global crop (3, S, S) and local crops (M, 3, s, s), both uint8."""
    global_crop = random_view(image, cfg.global_size, cfg.global_scale, cfg, rng)
    locals_ = [random_view(image, cfg.local_size, cfg.local_scale, cfg, rng) for _ in range(cfg.num_local)]
    if locals_:
        local_crops = torch.stack(locals_)
    else:
        local_crops = torch.empty((0, 3, cfg.local_size, cfg.local_size), dtype=torch.uint8)
    return global_crop, local_crops


def to_float(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops of any shape → float32 in [0, 1]."""
    return crops.float().div_(255.0)
