"""Procedural demo images for ``tips-extract --demo`` and ``tips-predict --demo``: no download, odd modes included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_demo_images(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write a handful of procedural images (gradients, shapes, noise) plus odd modes and one broken file.

    The odd ones exercise decoding: RGBA, palette with transparency, 16-bit grayscale, CMYK JPEG, an EXIF-rotated
    JPEG, an animated GIF; ``broken-on-purpose.jpg`` is a truncated JPEG that a run reports and skips.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320] / np.array([240.0, 320.0])[:, None, None]
    gradient = Image.fromarray((np.stack([xx, yy, 1 - xx], -1) * 255).astype(np.uint8), "RGB")
    shapes = Image.new("RGB", (300, 300), (30, 40, 60))
    draw = ImageDraw.Draw(shapes)
    draw.ellipse((30, 40, 150, 160), fill=(230, 80, 60))
    draw.rectangle((160, 150, 280, 270), fill=(60, 200, 120))
    draw.polygon([(200, 20), (280, 120), (130, 110)], fill=(240, 220, 70))
    noise = Image.fromarray(rng.integers(0, 256, (200, 260, 3), dtype=np.uint8), "RGB")
    rgba = gradient.convert("RGBA")
    rgba.putalpha(Image.fromarray((xx * 255).astype(np.uint8), "L"))
    palette = shapes.quantize(8)
    ramp16 = Image.fromarray((yy * 65535).astype(np.uint16))  # mode I;16
    rotated = gradient.copy()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    frames = [Image.new("RGB", (160, 120), c) for c in ((200, 30, 30), (30, 200, 30))]
    out = {
        "gradient.png": lambda p: gradient.save(p),
        "shapes.jpg": lambda p: shapes.save(p, quality=92),
        "noise.webp": lambda p: noise.save(p),
        "odd/rgba.png": lambda p: rgba.save(p),
        "odd/palette-transparent.png": lambda p: palette.save(p, transparency=0),
        "odd/gray16.png": lambda p: ramp16.save(p),
        "odd/cmyk.jpg": lambda p: shapes.convert("CMYK").save(p),
        "odd/exif-rotated.jpg": lambda p: rotated.save(p, exif=exif),
        "odd/animated.gif": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=100),
    }
    paths = []
    for name, save in out.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save(path)
        paths.append(path)
    broken = folder / "broken-on-purpose.jpg"
    broken.write_bytes(paths[1].read_bytes()[:400])
    return paths + [broken]
