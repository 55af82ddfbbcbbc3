"""Tiles without seams: cut an image into overlapping tiles, run each, blend their outputs with a smooth window.

Tiles are planned on the patch grid (:func:`plan_tiles`): square tiles of ``tile`` pixels placed every
``tile - overlap`` pixels, the last one flush with the border; an image side no longer than a tile is one tile of
that side. Along each axis the weights form a partition of unity: between two neighbours, over the last
``overlap`` pixels of the first one, the first fades out and the second in along a Hann (sin²) ramp; everywhere
else exactly one tile has weight 1. A 2-D tile's weight is the product of its two axes' weights, and the blended
map is Σ wᵢ·outᵢ / Σ wᵢ. So outputs that differ by Δ between neighbouring tiles change by at most
π/2 · Δ / overlap from one pixel to the next (instead of a step of Δ), and one tile covering the image returns
exactly the untiled output.

:func:`blend_rows` runs the tiles one tile row at a time and yields the blended map in bands of finished rows, so
its memory is one tile batch plus a band about one tile high; :func:`upsample_bands` turns those bands into
output strips at the image's resolution with an :class:`~tips.inference.upsample.Upsampler`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from ..models.preprocess import pil_to_tensor
from .upsample import Upsampler, low_guide, source_coords

STRIP_ROWS_VALUES = 1 << 23  # output values per upsampled strip (channels × rows × width)


@dataclass(frozen=True)
class Tiling:
    """``--tile SIZE --overlap FRACTION``: tile side in pixels (a multiple of the patch size) and the share of a
    tile that overlaps its neighbour, in [0, 0.5)."""

    tile: int
    overlap: float = 0.25

    def check(self, patch_size: int) -> None:
        if not isinstance(self.tile, int) or self.tile < patch_size or self.tile % patch_size:
            raise ValueError(f"--tile {self.tile} must be a positive multiple of the patch size {patch_size} "
                             f"(e.g. {max(1, round(self.tile / patch_size)) * patch_size})")
        if not (math.isfinite(self.overlap) and 0 <= self.overlap < 0.5):
            raise ValueError(f"--overlap {self.overlap} must be a fraction of the tile in [0, 0.5) (e.g. 0.25)")


@dataclass(frozen=True)
class TilePlan:
    """Tiles over a (h, w) patch grid: tile starts along each axis (patches), tile sides and the ramp (patches)."""

    grid: tuple[int, int]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    tile: tuple[int, int]
    ramp: int

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def boxes(self, row: int) -> list[tuple[int, int]]:
        """(y, x) starts in patches of the tiles of tile row ``row``."""
        return [(self.rows[row], x) for x in self.cols]


def tile_starts(size: int, tile: int, step: int) -> list[int]:
    """Starts along a side of ``size`` cells: every ``step``, the last flush with the end (one at 0 if size ≤ tile)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def plan_tiles(grid: tuple[int, int], tiling: Tiling, patch_size: int) -> TilePlan:
    """The tiles of ``tiling`` over a patch grid (h, w); the overlap is rounded to whole patches (≤ half a tile)."""
    tiling.check(patch_size)
    t = tiling.tile // patch_size
    ramp = min(round(tiling.overlap * t), t // 2)
    h, w = grid
    th, tw = min(t, h), min(t, w)
    return TilePlan((h, w), tuple(tile_starts(h, t, t - ramp)), tuple(tile_starts(w, t, t - ramp)), (th, tw), ramp)


def _ramp(x: torch.Tensor, start: float, length: float) -> torch.Tensor:
    """0 before ``start``, 1 after ``start + length``, a Hann (sin²) rise between, at cell centres x + 0.5."""
    if length <= 0:
        return (x + 0.5 > start).float()
    t = ((x + 0.5 - start) / length).clamp(0, 1)
    return torch.sin(t * (math.pi / 2)) ** 2


def axis_weights(starts: tuple[int, ...], tile: int, ramp: int, scale: int, index: int) -> torch.Tensor:
    """The 1-D weight (tile · scale,) of tile ``index`` along one axis (``scale`` cells per patch).

    Tile i fades out over the last ``ramp`` patches of its extent and tile i + 1 fades in over the same cells,
    so the weights of all tiles sum to one at every cell."""
    lo = starts[index] * scale
    x = torch.arange(lo, lo + tile * scale, dtype=torch.float64)
    weight = torch.ones_like(x)
    length = ramp * scale
    if index > 0:
        weight = weight * _ramp(x, (starts[index - 1] + tile) * scale - length, length)
    if index < len(starts) - 1:
        weight = weight * (1 - _ramp(x, (starts[index] + tile) * scale - length, length))
    return weight.float()


def blend_rows(plan: TilePlan, run: Callable[[list[tuple[int, int]]], torch.Tensor], scale: int,
               batch: int = 8) -> Iterator[tuple[int, torch.Tensor]]:
    """Run every tile and yield the blended map in bands of finished rows: (first row, (K, rows, w · scale)).

    run: tile starts [(y, x)] in patches → outputs (n, K, th · scale, tw · scale) on a grid of ``scale`` cells per
    patch (1 for patch tokens, 8 for the official DPT head's fused map). Tiles run ``batch`` at a time, one tile
    row after the other, into one accumulator one tile row high; the rows no later tile row reaches are yielded in
    bands of about :data:`STRIP_ROWS_VALUES` values, and the rest moves up for the next tile row.
    """
    th, tw = plan.tile
    rows, width = th * scale, plan.grid[1] * scale
    col_w = [axis_weights(plan.cols, tw, plan.ramp, scale, j) for j in range(len(plan.cols))]
    acc: torch.Tensor | None = None  # map rows [y·scale, (y + th)·scale) of the current tile row y
    total: torch.Tensor | None = None
    for i, y in enumerate(plan.rows):
        row_w = axis_weights(plan.rows, th, plan.ramp, scale, i)
        boxes = plan.boxes(i)
        for b in range(0, len(boxes), batch):
            part = boxes[b:b + batch]
            out = run(part).float()  # (n, K, th·s, tw·s)
            if acc is None:
                acc, total = out.new_zeros(out.shape[1], rows, width), out.new_zeros(rows, width)
            for (_, x), o in zip(part, out):
                weight = (row_w[:, None] * col_w[plan.cols.index(x)][None]).to(o.device)  # (th·s, tw·s)
                cols = slice(x * scale, (x + tw) * scale)
                acc[:, :, cols] += o * weight
                total[:, cols] += weight
        done = (plan.rows[i + 1] - y) * scale if i + 1 < len(plan.rows) else rows
        step = max(1, STRIP_ROWS_VALUES // max(1, acc.shape[0] * width))
        for lo in range(0, done, step):
            hi = min(done, lo + step)
            yield y * scale + lo, acc[:, lo:hi] / total[lo:hi].clamp_min(1e-12)
        if done < rows:  # the rows the next tile row also covers move to the top
            acc[:, :rows - done] = acc[:, done:].clone()
            total[:rows - done] = total[done:].clone()
            acc[:, rows - done:] = 0
            total[rows - done:] = 0


def blend(plan: TilePlan, run: Callable[[list[tuple[int, int]]], torch.Tensor], scale: int,
          batch: int = 8) -> torch.Tensor:
    """The whole blended map (K, h · scale, w · scale) (:func:`blend_rows` without streaming)."""
    return torch.cat([band for _, band in blend_rows(plan, run, scale, batch)], 1)


def upsample_bands(bands: Iterable[tuple[int, torch.Tensor]], in_size: tuple[int, int], out_size: tuple[int, int],
                   up: Upsampler, guide: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Bands of a low-resolution map (from :func:`blend_rows`) → strips of it upsampled to ``out_size``:
    (first output row, (K, rows, W)), in order. guide: the image (3, H, W) at ``out_size`` (``jbu``).

    A strip is emitted once every low-resolution row it reads has arrived; rows no later strip reads are dropped.
    """
    h, w = in_size
    H, W = out_size
    y0, y1, _ = source_coords(H, h, 0, H)
    guide_lo = low_guide(guide[None], (h, w)) if up.needs_guide else None
    held: torch.Tensor | None = None
    held_start = 0
    next_out = 0
    for start, band in bands:
        if held is None or held.shape[1] == 0:
            held, held_start = band, start
        else:
            held = torch.cat([held, band], 1)
        available = held_start + held.shape[1]
        ready = H if available >= h else int(torch.searchsorted(y1, torch.tensor(available)))
        step = max(1, STRIP_ROWS_VALUES // max(1, held.shape[0] * W))
        g_lo = guide_lo.to(held.device) if guide_lo is not None else None
        while next_out < ready:
            hi = min(ready, next_out + step)
            rows = guide[None, :, next_out:hi] if up.needs_guide else None
            strip = up.rows(held[None], held_start, h, g_lo, rows, (H, W), next_out, hi)[0]
            yield next_out, strip
            next_out = hi
        if next_out < H:
            keep = int(y0[next_out])
            held, held_start = held[:, keep - held_start:], keep


class RoundToPatch:
    """PIL image → (3, H, W) in [0, 1] at the photo's own size, each side rounded down to a multiple of the
    patch (tiled runs without ``--resolution``; down, so a photo within the resize limit stays within it); quacks
    like :class:`tips.models.Preprocess`."""

    def __init__(self, patch_size: int) -> None:
        self.patch_size = patch_size

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        p = self.patch_size
        return max(p, height // p * p), max(p, width // p * p)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = pil_to_tensor(image)
        H, W = self.output_size(x.shape[2], x.shape[1])
        if (H, W) == tuple(x.shape[1:]):
            return x
        return F.interpolate(x[None], size=(H, W), mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
