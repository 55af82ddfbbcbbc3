"""Pictures of dense predictions: turbo depth with a metre colour bar, normals as RGB, segmentation in a palette
with the top classes named, and a contact sheet. Inputs are tensors; outputs are 8-bit RGB PIL images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..models.classes import ADE20K_CLASSES
BAR_WIDTH = 64
LEGEND_ROWS = 8


def _rgb(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] → PIL RGB."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def turbo(values: np.ndarray) -> np.ndarray:
    """values in [0, 1], any shape → uint8 RGB (..., 3) on matplotlib's turbo map."""
    from matplotlib import colormaps

    return (colormaps["turbo"](np.clip(values, 0, 1))[..., :3] * 255 + 0.5).astype(np.uint8)


def _side_by_side(*panels: Image.Image) -> Image.Image:
    W = sum(p.width for p in panels)
    H = max(p.height for p in panels)
    canvas = Image.new("RGB", (W, H), "white")
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width
    return canvas


def depth_picture(image: torch.Tensor, depth: torch.Tensor) -> Image.Image:
    """image (3, H, W), depth (H, W) in metres → [image | turbo depth | colour bar labelled in metres]."""
    d = depth.detach().float().cpu().numpy()
    lo, hi = float(np.percentile(d, 1)), float(np.percentile(d, 99))
    hi = hi if hi > lo else lo + 1e-3
    coloured = Image.fromarray(turbo((d - lo) / (hi - lo)), "RGB")
    H = d.shape[0]
    bar = Image.new("RGB", (BAR_WIDTH, H), "white")
    ramp = turbo(np.linspace(1, 0, H)[:, None].repeat(12, 1))  # far (the high end) at the top
    bar.paste(Image.fromarray(ramp, "RGB"), (4, 0))
    draw = ImageDraw.Draw(bar)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = int(round(frac * (H - 1)))
        draw.line((16, y, 20, y), fill="black")
        draw.text((22, max(0, min(H - 11, y - 5))), f"{hi - frac * (hi - lo):.2f}m", fill="black")
    return _side_by_side(_rgb(image), coloured, bar)


def normals_picture(image: torch.Tensor, normals: torch.Tensor) -> Image.Image:
    """image (3, H, W), unit normals (3, H, W) → [image | (n + 1) / 2 as RGB]."""
    return _side_by_side(_rgb(image), _rgb((normals + 1) / 2))


def palette(num_classes: int) -> np.ndarray:
    """(C, 3) uint8 distinct colours, fixed for a given C (golden-angle hues, alternating lightness)."""
    import colorsys

    rows = [colorsys.hls_to_rgb((i * 0.618033988749895) % 1, 0.45 + 0.15 * (i % 3 == 1), 0.75) for i in range(num_classes)]
    return (np.asarray(rows) * 255 + 0.5).astype(np.uint8)


def class_names(num_classes: int) -> list[str]:
    return list(ADE20K_CLASSES) if num_classes == len(ADE20K_CLASSES) else [f"class {i}" for i in range(num_classes)]


def segmentation_picture(image: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> Image.Image:
    """image (3, H, W), labels (H, W) int → [image | palette map with the image blended in | top classes named]."""
    lab = labels.detach().cpu().numpy().astype(np.int64)
    colours = palette(len(names))
    base = np.asarray(_rgb(image), dtype=np.float32)
    blended = (0.7 * colours[lab] + 0.3 * base).astype(np.uint8)
    counts = np.bincount(lab.ravel(), minlength=len(names))
    top = [int(c) for c in np.argsort(-counts)[:LEGEND_ROWS] if counts[c] > 0]
    legend = Image.new("RGB", (150, lab.shape[0]), "white")
    draw = ImageDraw.Draw(legend)
    for row, c in enumerate(top):
        y = 4 + row * 16
        draw.rectangle((4, y, 16, y + 12), fill=tuple(int(v) for v in colours[c]))
        draw.text((20, y), f"{names[c][:16]} {100 * counts[c] / lab.size:.1f}%", fill="black")
    return _side_by_side(_rgb(image), Image.fromarray(blended, "RGB"), legend)


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
                       max_rows: int = 24) -> Image.Image:
    """image (3, H, W), labels (H, W) class ids (``none_id`` = none of these) → [image | overlay | legend].

    The legend names every class present, largest first, with its share of the pixels (at most ``max_rows``)."""
    lab = labels.detach().cpu().numpy().astype(np.int64)
    colours = np.zeros((max(len(names), int(lab.max()) + 1), 3), np.uint8)
    colours[: len(names)] = palette(len(names))
    base = np.asarray(_rgb(image), dtype=np.float32)
    blended = (0.65 * colours[lab] + 0.35 * base).astype(np.uint8)
    counts = np.bincount(lab.ravel(), minlength=len(colours))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    rows = present[:max_rows]
    height = max(lab.shape[0], 8 + 16 * (len(rows) + (len(present) > max_rows)))
    legend = Image.new("RGB", (190, height), "white")
    draw = ImageDraw.Draw(legend)
    for row, c in enumerate(rows):
        y = 4 + row * 16
        name = "none of these" if c == none_id and c >= len(names) else names[c] if c < len(names) else f"id {c}"
        draw.rectangle((4, y, 16, y + 12), fill=tuple(int(v) for v in colours[c]), outline="grey")
        draw.text((20, y), f"{name[:22]}  {100 * counts[c] / lab.size:.1f} %", fill="black")
    if len(present) > max_rows:
        draw.text((4, 4 + max_rows * 16), f"+ {len(present) - max_rows} more classes", fill="black")
    return _side_by_side(_rgb(image), Image.fromarray(blended, "RGB"), legend)
