"""Features at pixel resolution: an upsampler takes low-resolution features, a guide image and a target size.

    up = upsampler("jbu")
    hi = up(features, image, (4 * h, 4 * w))   # features (B, C, h, w), image (B, 3, H, W) in [0, 1] → (B, C, 4h, 4w)

- ``bilinear``: PyTorch's bilinear resize (``align_corners=False``); the guide is not read.
- ``jbu``: a training-free joint bilateral upsampler (Kopf et al., 2007). Each output pixel is a weighted mean of
  the four feature cells bilinear interpolation would mix, each weight the bilinear (tent) weight times a range
  weight ``exp(-|g(p) - g(q)|² / 2σ²)`` comparing the guide's colour at the output pixel with the guide averaged
  over the cell. The spatial kernel is the bilinear tent, so on a flat guide JBU *is* bilinear; across an edge of
  the guide a pixel takes the features of the cells on its own side.

Both work on horizontal strips of output rows (:meth:`Upsampler.rows`), so memory is one strip of C × rows × W'
values per corner plus the output; tiled prediction (:mod:`tips.inference.tiling`) calls :meth:`Upsampler.rows`
on a band of low-resolution rows and never holds the whole low-resolution map either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

UPSAMPLERS = ("bilinear", "jbu")
DEFAULT_FACTOR = 4
DEFAULT_SIGMA = 0.1  # guide colours in [0, 1]: a difference of 0.3 (an edge) weighs e^-4.5 of an equal colour
STRIP_VALUES = 1 << 23  # values per gathered corner of one strip (32 MiB of float32)


def source_coords(out_len: int, in_len: int, lo: int, hi: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For output positions lo..hi-1 of a side resized from ``in_len`` to ``out_len`` as PyTorch's bilinear resize
    with ``align_corners=False`` does: (first index, second index, weight of the second) — (n,) each."""
    scale = torch.tensor(in_len / out_len, dtype=torch.float32)  # float32 arithmetic, as PyTorch's kernel does
    src = ((torch.arange(lo, hi, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=in_len - 1)
    i1 = (i0 + 1).clamp_(max=in_len - 1)
    lam = src - i0
    return i0.to(device), i1.to(device), lam.to(device)


def low_guide(guide: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The guide (B, 3, H, W) averaged over each feature cell → (B, 3, h, w) (antialiased bilinear)."""
    if tuple(guide.shape[-2:]) == tuple(size):
        return guide.float()
    return F.interpolate(guide.float(), size=size, mode="bilinear", align_corners=False, antialias=True)


@dataclass(frozen=True)
class Upsampler:
    """(B, C, h, w) features + (B, 3, H, W) guide in [0, 1] + target (H', W') → (B, C, H', W') float32.

    name: ``"bilinear"`` or ``"jbu"``; sigma: the range kernel's σ in guide units (``jbu`` only).
    """

    name: str = "jbu"
    sigma: float = DEFAULT_SIGMA

    def __post_init__(self) -> None:
        if self.name not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {self.name!r}")
        if not self.sigma > 0:
            raise ValueError(f"the range sigma must be > 0, got {self.sigma}")

    @property
    def needs_guide(self) -> bool:
        return self.name == "jbu"

    def __call__(self, features: torch.Tensor, guide: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        B, C, h, w = features.shape
        H, W = size
        if self.name == "bilinear":
            if (h, w) == (H, W):
                return features.float()
            return F.interpolate(features.float(), size=(H, W), mode="bilinear", align_corners=False)
        if guide is None:
            raise ValueError("the jbu upsampler needs a guide image (B, 3, H, W)")
        guide_hi = guide if tuple(guide.shape[-2:]) == (H, W) else low_guide(guide, (H, W))
        guide_lo = low_guide(guide, (h, w))
        out = features.new_empty(B, C, H, W, dtype=torch.float32)
        step = max(1, STRIP_VALUES // max(1, B * C * W))
        for lo in range(0, H, step):
            hi = min(H, lo + step)
            out[:, :, lo:hi] = self.rows(features, 0, h, guide_lo, guide_hi[:, :, lo:hi], (H, W), lo, hi)
        return out

    def rows(self, band: torch.Tensor, band_start: int, in_h: int, guide_lo: torch.Tensor | None,
             guide_rows: torch.Tensor | None, size: tuple[int, int], lo: int, hi: int) -> torch.Tensor:
        """Output rows lo..hi-1 (of ``size``) from a band of low-resolution rows.

        band: (B, C, n, w) rows ``band_start``..``band_start + n - 1`` of a (B, C, in_h, w) map, holding every row
        those output rows read; guide_lo: the guide averaged over the cells, (B, 3, in_h, w) (``jbu``); guide_rows:
        the guide's output rows lo..hi-1, (B, 3, hi - lo, W) (``jbu``). Returns (B, C, hi - lo, W) float32.
        """
        H, W = size
        w = band.shape[-1]
        y0, y1, ly = source_coords(H, in_h, lo, hi, band.device)
        x0, x1, lx = source_coords(W, w, 0, W, band.device)
        if int(y0.min()) < band_start or int(y1.max()) >= band_start + band.shape[-2]:
            raise ValueError(f"output rows {lo}..{hi - 1} read low-resolution rows {int(y0.min())}..{int(y1.max())}, "
                             f"outside the band {band_start}..{band_start + band.shape[-2] - 1}")
        corners = [(y0, x0, (1 - ly)[:, None] * (1 - lx)[None]), (y0, x1, (1 - ly)[:, None] * lx[None]),
                   (y1, x0, ly[:, None] * (1 - lx)[None]), (y1, x1, ly[:, None] * lx[None])]  # tent weights (n, W)
        band = band.float()
        if self.name == "bilinear":  # separable: the needed rows resized along the width, then two rows blended
            first, last = int(y0.min()) - band_start, int(y1.max()) - band_start + 1
            part = band[:, :, first:last]
            cols = F.interpolate(part, size=(part.shape[-2], W), mode="bilinear", align_corners=False)
            top, bottom = cols[:, :, y0 - band_start - first], cols[:, :, y1 - band_start - first]
            return torch.lerp(top, bottom, ly[:, None].expand_as(top))
        g = guide_rows.float()  # (B, 3, n, W)
        dist = [((g - guide_lo[:, :, yi][..., xi].float()) ** 2).sum(1) for yi, xi, _ in corners]  # (B, n, W) each
        nearest = torch.stack(dist).amin(0)
        # relative to each pixel's most similar corner: the weights never all underflow; normalising removes it
        weights = [tent * torch.exp(-(d - nearest) / (2 * self.sigma ** 2)) for (_, _, tent), d in zip(corners, dist)]
        total = sum(weights).clamp_min(1e-12)
        out = 0
        for (yi, xi, _), wgt in zip(corners, weights):
            out = out + (wgt / total)[:, None] * band[:, :, yi - band_start][..., xi]
        return out

    def band_rows(self, in_h: int, out_h: int, lo: int, hi: int) -> tuple[int, int]:
        """The low-resolution rows (first, last + 1) that output rows lo..hi-1 read."""
        y0, y1, _ = source_coords(out_h, in_h, lo, hi)
        return int(y0.min()), int(y1.max()) + 1


def upsampler(name: str = "jbu", sigma: float = DEFAULT_SIGMA) -> Upsampler:
    """The upsampler called ``name`` (:data:`UPSAMPLERS`)."""
    return Upsampler(name, sigma)


def check_factor(factor: float) -> float:
    """A valid ``--upsample-factor``: a number ≥ 1 (1 keeps the patch grid)."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
        raise ValueError(f"--upsample-factor must be a number >= 1 (times the patch grid), got {factor}")
    return float(factor)


def upsampled_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """The (h, w) patch grid times ``factor``, rounded."""
    return max(1, round(h * factor)), max(1, round(w * factor))
