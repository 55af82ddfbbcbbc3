"""A contact sheet of search results: one row per query, its label, then the top hits with rank and score."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io.atomic import atomic_path
from ..models.preprocess import to_rgb

THUMB = 160
LABEL_W = 220
CAPTION_H = 20


def _thumbnail(source: str, hit: dict[str, Any], heat: np.ndarray | None) -> Image.Image:
    """The image at ``source`` fitted in a THUMB square (aspect kept), with the heat map (h, w) blended over it
    (red: the patches most like the query) and the hit's cell box (fractions x0, y0, x1, y1) when it has one; or a
    grey tile saying it is not readable."""
    tile = Image.new("RGB", (THUMB, THUMB), (235, 235, 235))
    try:
        with Image.open(source) as im:
            im = to_rgb(im)
            im.thumbnail((THUMB, THUMB))
    except (OSError, ValueError):
        ImageDraw.Draw(tile).text((8, THUMB // 2 - 6), "not readable here", fill=(90, 90, 90))
        return tile
    if heat is not None:
        span = float(heat.max() - heat.min()) or 1.0
        level = Image.fromarray(((heat - heat.min()) / span * 255).astype(np.uint8)).resize(im.size, Image.BILINEAR)
        red = Image.new("RGB", im.size, (255, 0, 0))
        im = Image.composite(red, im, level.point(lambda v: int(v * 0.6)))
    if "x0" in hit:
        box = [hit["x0"] * im.width, hit["y0"] * im.height, hit["x1"] * im.width - 1, hit["y1"] * im.height - 1]
        ImageDraw.Draw(im).rectangle(box, outline=(255, 230, 0), width=3)
    left, top = (THUMB - im.width) // 2, (THUMB - im.height) // 2
    tile.paste(im, (left, top))
    return tile


def contact_sheet(queries: Sequence[str], hits: Sequence[Sequence[dict[str, Any]]], scores: Sequence[Sequence[float]],
                  out: str | os.PathLike, heats: Sequence[Sequence[np.ndarray | None]] | None = None) -> Path:
    """queries[q] its label; hits[q][j] a row with ``source`` (an image path), ``id`` and, for a region, its cell
    box; scores[q][j] its cosine; heats[q][j] an optional (h, w) heat map of the query over that image."""
    columns = max((len(h) for h in hits), default=0)
    sheet = Image.new("RGB", (LABEL_W + columns * (THUMB + 8), len(queries) * (THUMB + CAPTION_H + 12) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for q, (label, row, row_scores) in enumerate(zip(queries, hits, scores)):
        top = 8 + q * (THUMB + CAPTION_H + 12)
        draw.multiline_text((8, top + 8), _wrap(label, 30), fill="black", font=font)
        for j, (hit, score) in enumerate(zip(row, row_scores)):
            left = LABEL_W + j * (THUMB + 8)
            heat = heats[q][j] if heats is not None else None
            sheet.paste(_thumbnail(str(hit.get("source", hit["id"])), hit, heat), (left, top))
            draw.text((left, top + THUMB + 3), f"#{j + 1}  {score:.3f}  {Path(str(hit['id'])).name[:14]}",
                      fill="black", font=font)
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line][:6])
