"""Pieces both probes share: learning-rate schedules (pure functions of the step), the optimiser, batch order,
and centre-padded forward passes for images whose size is not a multiple of the patch size."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tips.inference.upsample import Upsampler

from ..features import image_to_tensor
from .config import OptimSection, ProbeConfig


def learning_rate(step: int, cfg: OptimSection) -> float:
    """Linear warm-up from 0 over ``cfg.warmup`` steps, then poly (power 1) or cosine decay to 0 at the end."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    if cfg.schedule == "poly":
        return cfg.lr * max(0.0, 1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(head: nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    return torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int, cfg: OptimSection) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    optimizer.step()


def batch_order(num_items: int, batch_size: int, iterations: int, seed: int) -> Iterator[np.ndarray]:
    """``iterations`` batches of indices: shuffled epochs, every item once per epoch (last batch may wrap)."""
    rng = np.random.default_rng(seed)
    pool = np.empty(0, dtype=np.int64)
    for _ in range(iterations):
        while pool.size < min(batch_size, num_items):
            pool = np.concatenate([pool, rng.permutation(num_items)])
        yield pool[: min(batch_size, num_items)]
        pool = pool[min(batch_size, num_items):]


def training_batches(num_items: int, cfg: ProbeConfig, desc: str) -> Iterator[tuple[int, np.ndarray]]:
    """(step, batch indices) for ``cfg.optim.iterations`` steps, with a progress bar when ``cfg.progress``."""
    order = batch_order(num_items, cfg.optim.batch_size, cfg.optim.iterations, cfg.seed)
    return enumerate(tqdm(order, total=cfg.optim.iterations, desc=desc, unit="it", disable=not cfg.progress))


def centre_pad(x: torch.Tensor, multiple: int, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(..., H, W) → padded to multiples of ``multiple``, centred; returns the padding (left, right, top, bottom)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pad, value=value) if any(pad) else x), pad


def forward_padded(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Run ``fn`` (B, 3, H', W') → (B, K, H', W') on centre-padded images and crop its output back to (H, W)."""
    x, (left, right, top, bottom) = centre_pad(images, multiple)
    out = fn(x)
    return out[..., top: out.shape[-2] - bottom, left: out.shape[-1] - right]


class GuidedUpsample:
    """(B, K, h, w) maps of dataset rows → (B, K, u·h, u·w): bilinear, or the joint bilateral upsampler guided by
    the rows' images (:mod:`tips.inference.upsample`). ``u`` = 0 returns the maps as they are.

    The images are resized to the output grid once and kept (uint8); rows are taken in sorted order, as
    :meth:`tips_eval.features.FeatureCache.inputs` returns them. flip: the mirrored images (flip TTA)."""

    def __init__(self, dataset, factor: int, name: str = "bilinear") -> None:
        self.dataset, self.factor, self.up = dataset, factor, Upsampler(name)
        self._guides: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}

    def guides(self, index, size: tuple[int, int], flip: bool = False) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] of the rows ``index`` (sorted) at ``size``."""
        out = []
        for i in np.sort(np.asarray(index)):
            key = (int(i), tuple(size))
            if key not in self._guides:
                image = image_to_tensor(self.dataset.load_image(int(i)), size)
                self._guides[key] = (image * 255).round().to(torch.uint8)
            out.append(self._guides[key])
        guide = torch.stack(out).float() / 255
        return guide.flip(-1) if flip else guide

    def __call__(self, z: torch.Tensor, index, flip: bool = False) -> torch.Tensor:
        if self.factor < 1:
            return z
        size = (z.shape[-2] * self.factor, z.shape[-1] * self.factor)
        if not self.up.needs_guide:
            return upsample_bilinear(z, size)  # the same numbers; its backward is faster on a CPU
        return self.up(z, self.guides(index, size, flip).to(z.device), size)


def bilinear_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """(n_in, n_out) weights of 1-D linear interpolation, half-pixel centres (``align_corners=False``)."""
    eye = torch.eye(n_in, device=device)[None]  # (1, n_in, n_in): each input sample as a channel
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0]


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int], channels_last: bool = False) -> torch.Tensor:
    """(B, C, h, w) → (B, C, H, W), or (B, H, W, C) with ``channels_last``; equals ``F.interpolate(...,
    mode="bilinear", align_corners=False)`` (bilinear is separable) but runs as two matmuls, several times
    faster forward and backward on CPU for many channels."""
    mh = bilinear_matrix(x.shape[-2], size[0], x.device).to(x.dtype)
    mw = bilinear_matrix(x.shape[-1], size[1], x.device).to(x.dtype)
    return torch.einsum("bchw,hH,wW->bHWc" if channels_last else "bchw,hH,wW->bcHW", x, mh, mw)


class Standardize(nn.Module):
    """(B, C, h, w) → (x − mean) / std with fixed channel statistics (buffers, saved with the head): a
    reparametrisation of a linear head that lets a short schedule converge on un-normalised tokens of any scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def cache_channel_stats(cache, samples: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and std (C,) of a feature cache's probe inputs over up to ``samples`` evenly spread rows."""
    sample = cache.inputs(np.linspace(0, len(cache) - 1, min(len(cache), samples)).round().astype(int))
    return sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3))


def head_device(head: nn.Module) -> torch.device:
    return next(head.parameters()).device


@dataclass
class VisSample:
    """One validation image for the report picture.

    image (H, W, 3) uint8; target / pred (H, W) (class ids or metres); features (h, w, C) patch features.
    """

    key: str
    image: np.ndarray
    target: np.ndarray
    pred: np.ndarray
    features: np.ndarray


@dataclass
class ProbeOutcome:
    """What a probe run measured: ``metrics`` (JSON-ready), pictures, and where the time went (seconds)."""

    metrics: dict
    vis: list[VisSample] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)  # settings resolved at run time (layers, crop, bins, …)
    head: nn.Module | None = None  # a trained DPT head, saved beside the results by ``run_probe``
