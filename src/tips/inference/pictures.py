"""Pictures of dense predictions, drawn at the photo's aspect: depth on one colour map (:data:`DEPTH_COLORMAP`,
bright = near) with a metre colour bar that says it is clipped at the 1st–99th percentile, normals as RGB with a
shaded-sphere key, segmentation in a palette whose legend names every colour drawn, and a contact sheet. A
picture made with random weights (a random head or a ``--random-init`` model) carries a red banner saying so.

Inputs are tensors at the model's input size plus the photo's (H, W); outputs are 8-bit RGB PIL images whose
panels have the photo's aspect, the longest side between :data:`DISPLAY_MIN` (small inputs are upscaled) and
:data:`DISPLAY_MAX`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..models.classes import ADE20K_CLASSES

DEPTH_COLORMAP = "magma_r"  # one map for tips-predict and tips-probe: bright = near, dark = far
DEPTH_CLIP = (1.0, 99.0)  # percentiles the colour scale is clipped to
DEPTH_LEGEND = "bright = near, dark = far; clipped at 1st-99th pct"
DISPLAY_MAX = 1024
DISPLAY_MIN = 384
LEGEND_ROWS = 8
OVERLAY_ALPHA = 0.7  # class colour's share of an overlay pixel (the photo has the rest)
OTHER_COLOUR = (160, 160, 160)  # classes beyond the legend's rows, drawn in one grey named "other classes"
RANDOM_MARK = "RANDOM WEIGHTS - not a trained prediction"
RANDOM_MARK_COLOUR = (200, 0, 0)
RANDOM_BANNER = 28  # px added above a picture made with random weights


def display_size(photo_hw: tuple[int, int], max_side: int = DISPLAY_MAX, min_side: int = DISPLAY_MIN) -> tuple[int, int]:
    """The photo's (H, W) scaled so its longest side lies in [min_side, max_side], aspect kept (rounded)."""
    h, w = (max(1, int(s)) for s in photo_hw)
    longest = max(h, w)
    target = min(max(longest, min_side), max_side)
    return max(1, round(h * target / longest)), max(1, round(w * target / longest))


def _font(height: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(11, min(22, height // 28)))


def _rgb(image: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """(3, H, W) float in [0, 1] → PIL RGB, resized (bilinear) to ``size`` (H, W) when given."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    pil = Image.fromarray(arr, "RGB")
    return pil if size is None or pil.size == (size[1], size[0]) else pil.resize((size[1], size[0]), Image.BILINEAR)


def _resize_map(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """(H, W) or (H, W, 3) array → the same at ``size`` (H, W); nearest for labels, bilinear for values."""
    if arr.shape[:2] == tuple(size):
        return arr
    t = torch.as_tensor(np.ascontiguousarray(arr)).float()
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    t = torch.nn.functional.interpolate(t, size=size, mode="nearest-exact" if nearest else "bilinear",
                                        align_corners=None if nearest else False)[0]
    out = t[0] if arr.ndim == 2 else t.permute(1, 2, 0)
    return out.numpy().astype(arr.dtype)


def depth_colours(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] (0 = near), any shape → uint8 RGB (..., 3) on :data:`DEPTH_COLORMAP`."""
    from matplotlib import colormaps

    return (colormaps[DEPTH_COLORMAP](np.clip(values, 0, 1))[..., :3] * 255 + 0.5).astype(np.uint8)




def depth_limits(depth: np.ndarray) -> tuple[float, float]:
    """The (near, far) ends of the colour scale: the 1st and 99th percentile of the valid (> 0) values."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    valid = valid if valid.size else np.zeros(1)
    lo, hi = (float(np.percentile(valid, p)) for p in DEPTH_CLIP)
    return lo, (hi if hi > lo else lo + 1e-3)


def _side_by_side(*panels: Image.Image) -> Image.Image:
    W = sum(p.width for p in panels)
    H = max(p.height for p in panels)
    canvas = Image.new("RGB", (W, H), "white")
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width
    return canvas


def mark_random(picture: Image.Image) -> Image.Image:
    """``picture`` under a red banner (:data:`RANDOM_BANNER` px tall) saying the weights behind it are random."""
    out = Image.new("RGB", (picture.width, picture.height + RANDOM_BANNER), RANDOM_MARK_COLOUR)
    out.paste(picture, (0, RANDOM_BANNER))
    ImageDraw.Draw(out).text((6, 5), RANDOM_MARK, fill="white", font=ImageFont.load_default(size=17))
    return out


def _finish(picture: Image.Image, random: bool) -> Image.Image:
    return mark_random(picture) if random else picture


def depth_picture(image: torch.Tensor, depth: torch.Tensor, photo_size: tuple[int, int] | None = None,
                  random: bool = False) -> Image.Image:
    """image (3, H, W), depth (H, W) in metres → [image | depth | colour bar in metres], panels at the photo's
    aspect (``photo_size`` (H, W), default the input's)."""
    size = display_size(photo_size or tuple(image.shape[-2:]))
    d = _resize_map(depth.detach().float().cpu().numpy(), size, nearest=False)
    lo, hi = depth_limits(d)
    coloured = Image.fromarray(depth_colours((d - lo) / (hi - lo)), "RGB")
    return _finish(_side_by_side(_rgb(image, size), coloured, depth_bar(size[0], lo, hi)), random)


def depth_bar(height: int, near: float, far: float) -> Image.Image:
    """A colour bar ``height`` px tall, near at the top, labelled in metres, saying what its ends mean."""
    font = _font(height)
    fs = int(font.size)
    bar = Image.new("RGB", (max(150, 11 * fs), height), "white")
    draw = ImageDraw.Draw(bar)
    top, bottom = 2 * fs + 8, height - 3 * fs - 12
    bottom = max(bottom, top + 10)
    ramp = depth_colours(np.linspace(0, 1, bottom - top)[:, None].repeat(16, 1))  # near (0) at the top
    bar.paste(Image.fromarray(ramp, "RGB"), (6, top))
    draw.text((6, 2), "depth (m)", fill="black", font=font)
    for frac, end in ((0.0, " near"), (0.5, ""), (1.0, " far")):
        y = int(top + frac * (bottom - top - 1))
        draw.line((22, y, 27, y), fill="black")
        draw.text((30, y - fs // 2), f"{near + frac * (far - near):.2f} m{end}", fill="black", font=font)
    draw.text((6, bottom + fs // 2 + 4), "clipped at the", fill="black", font=font)
    draw.text((6, bottom + fs + fs // 2 + 8), "1st-99th pct", fill="black", font=font)
    return bar


def normals_key(side: int) -> np.ndarray:
    """(side, side, 3) uint8: a sphere seen from the camera, each pixel coloured as its normal ((n + 1) / 2),
    white outside; the key to a normals picture."""
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    x, y = (xs + 0.5) / side * 2 - 1, 1 - (ys + 0.5) / side * 2  # y up, as the camera's normals
    inside = x ** 2 + y ** 2 < 1
    z = np.sqrt(np.clip(1 - x ** 2 - y ** 2, 0, 1))
    rgb = (np.stack([x, y, z], -1) + 1) / 2
    out = np.full((side, side, 3), 255, np.uint8)
    out[inside] = (rgb[inside] * 255 + 0.5).astype(np.uint8)
    return out


def normals_picture(image: torch.Tensor, normals: torch.Tensor, photo_size: tuple[int, int] | None = None,
                    random: bool = False) -> Image.Image:
    """image (3, H, W), unit normals (3, H, W) → [image | (n + 1) / 2 as RGB | key sphere], at the photo's aspect."""
    size = display_size(photo_size or tuple(image.shape[-2:]))
    n = _resize_map(normals.detach().float().cpu().permute(1, 2, 0).numpy(), size, nearest=False)
    rgb = Image.fromarray((np.clip((n + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    font = _font(size[0])
    side = max(64, min(160, size[0] // 3))
    key = Image.new("RGB", (max(side + 16, 9 * int(font.size)), size[0]), "white")
    ImageDraw.Draw(key).text((8, 4), "normal key", fill="black", font=font)
    key.paste(Image.fromarray(normals_key(side), "RGB"), (8, int(font.size) + 10))
    return _finish(_side_by_side(_rgb(image, size), rgb, key), random)


def palette(num_classes: int) -> np.ndarray:
    """(C, 3) uint8 distinct colours, fixed for a given C (golden-angle hues, alternating lightness)."""
    import colorsys

    rows = [colorsys.hls_to_rgb((i * 0.618033988749895) % 1, 0.45 + 0.15 * (i % 3 == 1), 0.75) for i in range(num_classes)]
    return (np.asarray(rows) * 255 + 0.5).astype(np.uint8)


def class_names(num_classes: int) -> list[str]:
    return list(ADE20K_CLASSES) if num_classes == len(ADE20K_CLASSES) else [f"class {i}" for i in range(num_classes)]


def legend_entries(labels: np.ndarray, names: Sequence[str], colours: np.ndarray, max_rows: int,
                   none_id: int | None = None) -> tuple[list[tuple[str, tuple[int, int, int], float]], np.ndarray]:
    """labels (H, W) ids → (legend rows (name, colour, share of pixels), the (H, W, 3) colour of every pixel).

    The largest ``max_rows - 1`` classes keep their colours; when more are present, the rest are drawn in
    :data:`OTHER_COLOUR` under one "other classes" row, so every colour drawn has a row."""
    counts = np.bincount(labels.ravel(), minlength=len(colours))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    shown = present if len(present) <= max_rows else present[: max_rows - 1]
    drawn = np.zeros((len(counts), 3), np.uint8)
    drawn[:] = OTHER_COLOUR
    rows = []
    for c in shown:
        drawn[c] = colours[c] if c < len(colours) else OTHER_COLOUR
        name = "none of these" if c == none_id and c >= len(names) else names[c] if c < len(names) else f"id {c}"
        rows.append((name, tuple(int(v) for v in drawn[c]), counts[c] / labels.size))
    if len(shown) < len(present):
        rest = sum(counts[c] for c in present[len(shown):])
        rows.append((f"{len(present) - len(shown)} other classes", OTHER_COLOUR, rest / labels.size))
    return rows, drawn[labels]


def _legend_panel(rows, height: int, width: int = 230) -> Image.Image:
    font = _font(max(height, 400))
    step = int(font.size) + 8
    legend = Image.new("RGB", (width, max(height, 8 + step * len(rows))), "white")
    draw = ImageDraw.Draw(legend)
    for row, (name, colour, share) in enumerate(rows):
        y = 6 + row * step
        draw.rectangle((6, y, 6 + step - 6, y + step - 6), fill=colour)
        draw.text((step + 6, y), f"{name[:18]} {100 * share:.1f}%", fill="black", font=font)
    return legend


def _class_picture(image: torch.Tensor, labels: torch.Tensor, names: Sequence[str], colours: np.ndarray,
                   max_rows: int, photo_size, random: bool, none_id: int | None = None) -> Image.Image:
    size = display_size(photo_size or tuple(image.shape[-2:]))
    lab = _resize_map(labels.detach().cpu().numpy().astype(np.int64), size, nearest=True)
    rows, drawn = legend_entries(lab, names, colours, max_rows, none_id)
    photo = _rgb(image, size)
    blended = (OVERLAY_ALPHA * drawn + (1 - OVERLAY_ALPHA) * np.asarray(photo, np.float32)).astype(np.uint8)
    return _finish(_side_by_side(photo, Image.fromarray(blended, "RGB"), _legend_panel(rows, size[0])), random)


def segmentation_picture(image: torch.Tensor, labels: torch.Tensor, names: Sequence[str],
                         photo_size: tuple[int, int] | None = None, random: bool = False) -> Image.Image:
    """image (3, H, W), labels (H, W) int → [image | palette map with the image blended in | legend of every
    colour drawn, largest first, with its share of the pixels], at the photo's aspect."""
    return _class_picture(image, labels, names, palette(len(names)), LEGEND_ROWS, photo_size, random)


def contact_sheet(pictures: Sequence[Image.Image], captions: Sequence[str], width: int = 1400) -> Image.Image:
    """Pictures in rows of as many as fit in ``width`` (each scaled down to ``width`` if wider), captioned.
    Every cell is as wide as the widest picture, so the sheet has no empty margin beside narrow pictures."""
    cell_w = min(width, max(p.width for p in pictures) + 8)
    tiles = []
    for pic, cap in zip(pictures, captions):
        scale = min(1.0, (cell_w - 8) / pic.width)
        pic = pic.resize((max(1, int(pic.width * scale)), max(1, int(pic.height * scale))), Image.BILINEAR)
        tile = Image.new("RGB", (cell_w, pic.height + 16), "white")
        tile.paste(pic, (4, 14))
        ImageDraw.Draw(tile).text((4, 1), cap[-80:], fill="black")
        tiles.append(tile)
    columns = max(1, width // cell_w)
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    heights = [max(t.height for t in r) for r in rows]
    sheet = Image.new("RGB", (columns * cell_w, sum(heights)), "white")
    y = 0
    for r, h in zip(rows, heights):
        for j, t in enumerate(r):
            sheet.paste(t, (j * cell_w, y))
        y += h
    return sheet


def open_vocab_picture(image: torch.Tensor, labels: torch.Tensor, names: Sequence[str], none_id: int | None = None,
                       max_rows: int = 24, photo_size: tuple[int, int] | None = None,
                       random: bool = False) -> Image.Image:
    """image (3, H, W), labels (H, W) class ids (``none_id`` = none of these) → [image | overlay | legend].

    The legend names every colour drawn, largest first, with its share of the pixels (beyond ``max_rows``
    classes the rest share one grey "other classes" row)."""
    lab_max = int(labels.max()) + 1 if labels.numel() else 1
    colours = np.zeros((max(len(names), lab_max), 3), np.uint8)
    colours[: len(names)] = palette(len(names))
    return _class_picture(image, labels, names, colours, max_rows, photo_size, random, none_id)
