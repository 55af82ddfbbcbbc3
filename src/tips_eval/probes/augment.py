"""Training-time augmentation of the dinov2 protocol: random rescale, random crop with padding, flip and a light
photometric distortion, applied jointly to an image and its targets."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import IGNORE_INDEX, DenseSample
from ..features import image_to_tensor, resize_target


def resize_short_side(size: tuple[int, int], short: float) -> tuple[int, int]:
    """(H, W) → the (H, W) whose shorter side is ``short``, aspect kept."""
    H, W = size
    s = short / min(H, W)
    return max(1, round(H * s)), max(1, round(W * s))


def augment_sample(
    sample: DenseSample,
    crop: tuple[int, int],
    scale_range: tuple[float, float],
    base_short_side: int,
    flip: bool,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One sample → image (3, ch, cw) in [0, 1], seg (ch, cw) int64 (255 padded), depth (ch, cw) (0 padded).

    The image is rescaled so that its short side is ``base_short_side × r`` (``base_short_side`` 0 = its own
    short side), r ~ U(scale_range); then a random crop (padded when smaller), a horizontal flip with
    probability 0.5 and, with probability 0.5 each, brightness ±32/255 and contrast ×[0.5, 1.5].
    """
    H, W = sample.image.height, sample.image.width
    r = float(rng.uniform(*scale_range))
    size = (H, W) if (r == 1.0 and base_short_side == 0) else resize_short_side((H, W), (base_short_side or min(H, W)) * r)
    image = image_to_tensor(sample.image, size)
    seg = resize_target(sample.seg, size) if sample.seg is not None else None
    depth = resize_target(sample.depth, size) if sample.depth is not None else None
    ch, cw = crop
    ph, pw = max(0, ch - size[0]), max(0, cw - size[1])
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        seg = F.pad(seg, (0, pw, 0, ph), value=IGNORE_INDEX) if seg is not None else None
        depth = F.pad(depth, (0, pw, 0, ph), value=0.0) if depth is not None else None
    y = int(rng.integers(0, image.shape[1] - ch + 1))
    x = int(rng.integers(0, image.shape[2] - cw + 1))
    do_flip = flip and rng.random() < 0.5
    out = []
    for t in (image, seg, depth):
        if t is not None:
            t = t[..., y: y + ch, x: x + cw]
            t = t.flip(-1) if do_flip else t
        out.append(t)
    image = out[0]
    if rng.random() < 0.5:
        image = image + float(rng.uniform(-32, 32)) / 255.0
    if rng.random() < 0.5:
        image = (image - image.mean()) * float(rng.uniform(0.5, 1.5)) + image.mean()
    return image.clamp(0, 1).contiguous(), out[1], out[2]


def augmented_batch(
    dataset, indices: np.ndarray, crop: tuple[int, int], scale_range: tuple[float, float],
    base_short_side: int, flip: bool, rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Stacked :func:`augment_sample` outputs: images (B, 3, ch, cw), seg (B, ch, cw), depth (B, ch, cw)."""
    items = [augment_sample(dataset[int(i)], crop, scale_range, base_short_side, flip, rng) for i in indices]
    return tuple(torch.stack(col) if col[0] is not None else None for col in zip(*items))  # type: ignore[return-value]
