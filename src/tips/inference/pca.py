"""PCA pictures of patch features: the first three principal components as RGB, beside the input image.

As in the official README: one PCA is fitted jointly over the patches of all pictured images, so colours are
comparable across images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..io.atomic import atomic_file
from .pictures import display_size

CAPTION_HEIGHT = 14
PCA_SIDE = (256, 512)  # longest side of each drawn image: small inputs upscaled, large ones capped


def fit_pca(features: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """features (M, D) → (mean (D,), components (D, k)), exact and deterministic (eigh of the covariance).

    Each component's sign is fixed so that its largest-magnitude loading is positive.
    """
    x = features.double()
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(x.shape[0] - 1, 1)  # (D, D)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    comps = vecs[:, -k:].flip(-1)  # (D, k), largest first
    signs = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    return mean.float(), (comps * signs).float()


def pca_rgb(patch_tokens: Sequence[torch.Tensor], quantile: float = 0.01) -> list[torch.Tensor]:
    """Patch grids [(h_i, w_i, D)] → RGB maps [(h_i, w_i, 3)] in [0, 1] from one PCA fitted over all patches.

    Each component is scaled to [0, 1] between its ``quantile`` and ``1 - quantile`` over all patches.
    """
    flat = torch.cat([p.reshape(-1, p.shape[-1]).float() for p in patch_tokens])  # (M, D)
    mean, comps = fit_pca(flat, k=min(3, flat.shape[1]))
    proj = (flat - mean) @ comps  # (M, k)
    if proj.shape[1] < 3:
        proj = F.pad(proj, (0, 3 - proj.shape[1]))
    lo = torch.quantile(proj, quantile, dim=0)
    hi = torch.quantile(proj, 1 - quantile, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    sizes = [p.shape[0] * p.shape[1] for p in patch_tokens]
    return [c.reshape(p.shape[0], p.shape[1], 3) for c, p in zip(rgb.split(sizes), patch_tokens)]


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(H, W, 3) float in [0, 1] → 8-bit RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def pca_picture(
    images: Sequence[torch.Tensor],
    patch_tokens: Sequence[torch.Tensor],
    ids: Sequence[str] | None = None,
    photo_sizes: Sequence[tuple[int, int] | None] | None = None,
    columns: int = 2,
) -> Image.Image:
    """A grid of (input (3, H, W) in [0, 1] | its patch PCA (h, w, D)) pairs, ``columns`` per row, each drawn at
    its photo's aspect (``photo_sizes`` (H, W) per image, default the input's), longest side 256-512 px."""
    maps = pca_rgb(patch_tokens)
    tiles = []
    for i, (image, rgb) in enumerate(zip(images, maps)):
        photo = photo_sizes[i] if photo_sizes is not None and photo_sizes[i] is not None else image.shape[-2:]
        H, W = display_size(tuple(photo), max_side=PCA_SIDE[1], min_side=PCA_SIDE[0])
        tile = Image.new("RGB", (2 * W, H + CAPTION_HEIGHT), "white")
        tile.paste(_to_pil(image.permute(1, 2, 0)).resize((W, H), Image.BILINEAR), (0, CAPTION_HEIGHT))
        tile.paste(_to_pil(rgb).resize((W, H), Image.NEAREST), (W, CAPTION_HEIGHT))
        if ids is not None:
            ImageDraw.Draw(tile).text((2, 1), str(ids[i])[-60:], fill="black")
        tiles.append(tile)
    cell_w, cell_h = max(t.width for t in tiles) + 8, max(t.height for t in tiles) + 8
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % columns) * cell_w, (i // columns) * cell_h))
    return canvas


def save_pca_picture(
    path: str | os.PathLike,
    images: Sequence[torch.Tensor],
    patch_tokens: Sequence[torch.Tensor],
    ids: Sequence[str] | None = None,
    photo_sizes: Sequence[tuple[int, int] | None] | None = None,
) -> Path:
    """Write :func:`pca_picture` as a PNG (atomically) and return its path."""
    path = Path(path)
    with atomic_file(path) as f:
        pca_picture(images, patch_tokens, ids, photo_sizes).save(f, format="PNG")
    return path
