"""Patch masks for the masked global crop: uniformly random, or BEiT / DINOv2-style rectangles topped up at random.

Every generator is a pure function of its arguments and an explicit random generator (numpy ``Generator`` or
``torch.Generator``), returns a (N,) bool tensor in row-major patch order with True = masked, and masks
*exactly* ``num_masked`` patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

RNG = np.random.Generator | torch.Generator


@dataclass
class MaskConfig:
    """How the global crop is masked.

    mask_shape: ``"random"`` (uniform patches, argsort of noise; TIPS default) or ``"block"`` (BEiT/DINOv2
        rectangles topped up at random to the exact count).
    mask_ratio: a fixed fraction (0.75), or ``(low, high)`` to draw one ratio per image uniformly.
    min_block_area: smallest rectangle, in patches (block masks).
    block_aspect: (min, max) aspect ratio of a rectangle, drawn log-uniformly (block masks).
    max_block_fraction: largest rectangle as a fraction of N (DINOv2 caps it at 0.5).
    """

    mask_shape: str = "random"
    mask_ratio: float | tuple[float, float] = 0.75
    min_block_area: int = 4
    block_aspect: tuple[float, float] = (0.3, 1 / 0.3)
    max_block_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.mask_shape not in ("random", "block"):
            raise ValueError(f"mask_shape must be 'random' or 'block', got {self.mask_shape!r}")
        if isinstance(self.mask_ratio, (list, tuple)):
            if len(self.mask_ratio) != 2:
                raise ValueError(f"mask_ratio range must be [low, high], got {self.mask_ratio!r}")
            self.mask_ratio = (float(self.mask_ratio[0]), float(self.mask_ratio[1]))
            low, high = self.mask_ratio
        else:
            low = high = float(self.mask_ratio)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1] with low <= high, got {self.mask_ratio!r}")
        self.block_aspect = (float(self.block_aspect[0]), float(self.block_aspect[1]))


def _numpy_rng(rng: RNG) -> np.random.Generator:
    """A numpy generator; a torch generator is consumed for one 63-bit seed so results stay a function of it."""
    if isinstance(rng, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=rng)))
    return rng


def num_masked_patches(num_patches: int, ratio: float) -> int:
    """round(ratio · N), the exact number of masked patches (TIPS: 192 of 256 at 75 %)."""
    return int(round(ratio * num_patches))


def draw_mask_ratio(mask_ratio: float | tuple[float, float], rng: RNG) -> float:
    """The fixed ratio, or one drawn uniformly from the ``(low, high)`` range."""
    if isinstance(mask_ratio, (list, tuple)):
        low, high = mask_ratio
        return float(_numpy_rng(rng).uniform(low, high))
    return float(mask_ratio)


def random_mask(num_patches: int, num_masked: int, rng: RNG) -> torch.Tensor:
    """(N,) bool with exactly ``num_masked`` Trues at uniformly random positions (argsort of uniform noise)."""
    if isinstance(rng, torch.Generator):
        order = torch.rand(num_patches, generator=rng).argsort()
        mask = torch.zeros(num_patches, dtype=torch.bool)
        mask[order[:num_masked]] = True
        return mask
    flat = np.zeros(num_patches, dtype=bool)  # numpy indexing: a third of torch's cost per call in the workers
    flat[rng.random(num_patches).argsort()[:num_masked]] = True
    return torch.from_numpy(flat)


def _place_block(mask: np.ndarray, budget: int, cfg: MaskConfig, rng: np.random.Generator) -> int:
    """Try (≤ 10 times) to add one rectangle adding 1..budget new patches; returns how many were added."""
    height, width = mask.shape
    log_aspect = (math.log(cfg.block_aspect[0]), math.log(cfg.block_aspect[1]))
    for _ in range(10):
        area = rng.uniform(cfg.min_block_area, budget)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if w < width and h < height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            added = h * w - int(mask[top : top + h, left : left + w].sum())
            if 0 < added <= budget:
                mask[top : top + h, left : left + w] = True
                return added
    return 0


def block_mask(grid_h: int, grid_w: int, num_masked: int, rng: RNG, cfg: MaskConfig | None = None) -> torch.Tensor:
    """(grid_h·grid_w,) bool: BEiT/DINOv2 rectangles until the budget is met or nothing fits, then random
    unmasked patches are added so that exactly ``num_masked`` are True."""
    cfg = cfg or MaskConfig(mask_shape="block")
    rng = _numpy_rng(rng)
    mask = np.zeros((grid_h, grid_w), dtype=bool)
    max_block = max(cfg.min_block_area, int(cfg.max_block_fraction * grid_h * grid_w))
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        if budget < cfg.min_block_area:
            break
        added = _place_block(mask, budget, cfg, rng)
        if added == 0:
            break
        count += added
    flat = mask.reshape(-1)
    missing = num_masked - count
    if missing > 0:  # top up at random: the exact count matters more than perfect rectangles
        free = np.flatnonzero(~flat)
        flat[rng.permutation(free)[:missing]] = True
    return torch.from_numpy(flat.copy())


def make_mask(cfg: MaskConfig, grid_h: int, grid_w: int, rng: RNG) -> torch.Tensor:
    """(grid_h·grid_w,) bool mask of one global crop under ``cfg`` (ratio drawn first when it is a range)."""
    num_patches = grid_h * grid_w
    k = num_masked_patches(num_patches, draw_mask_ratio(cfg.mask_ratio, rng))
    if cfg.mask_shape == "block":
        return block_mask(grid_h, grid_w, k, rng, cfg)
    return random_mask(num_patches, k, rng)


def make_masks(cfg: MaskConfig, batch_size: int, grid_h: int, grid_w: int, rng: RNG) -> torch.Tensor:
    """(B, grid_h·grid_w) bool: one independent mask per image."""
    return torch.stack([make_mask(cfg, grid_h, grid_w, rng) for _ in range(batch_size)])
