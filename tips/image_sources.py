"""Where images come from and how they are decoded, for feature extraction.

A *source* is a folder (searched recursively), a glob, a list file (one path per line, relative to the list's
folder), a single image, or webdataset shards (``shards-{000..009}.tar``). Every source becomes a flat list of
:class:`ImageRef`; :class:`ImageDataset` decodes them robustly: an unreadable or over-sized image becomes a
:class:`Decoded` with a reason instead of an exception, so one bad file never stops a run.
"""

from __future__ import annotations

import glob
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from .io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_rgb
from .io.shards import expand_shards

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# Webdataset member extensions that hold the image of a sample, in order of preference.
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ImageRef:
    """One image: a file on disk, or ``size`` bytes at ``offset`` inside a tar shard (``path``)."""

    id: str
    path: str
    offset: int = -1
    size: int = -1

    @property
    def in_shard(self) -> bool:
        return self.offset >= 0


# ----------------------------------------------------------------------------------------------- sources
def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def folder_images(folder: Path, prefix: str = "") -> list[ImageRef]:
    """Every image file under ``folder`` (recursive, sorted, hidden entries skipped); id = relative path."""
    refs = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or not _is_image_name(path):
            continue
        refs.append(ImageRef(id=prefix + rel.as_posix(), path=str(path)))
    return refs


def list_file_images(list_file: Path) -> list[ImageRef]:
    """One path per line (relative to the list's folder; blank lines and ``#`` comments skipped); id = the line."""
    refs = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            refs.append(ImageRef(id=line, path=str(list_file.parent / line)))
    return refs


def _split_member(name: str) -> tuple[str, str] | None:
    """Webdataset's rule: key = member path up to the first dot of its base name, extension = the rest."""
    m = re.fullmatch(r"((?:.*/|)[^./]+)\.([^/]*)", name)
    return (m.group(1), m.group(2).lower()) if m else None


def shard_images(shard: Path) -> list[ImageRef]:
    """Image members of an uncompressed webdataset tar, one per sample key (id = ``__key__``)."""
    if shard.suffix != ".tar":
        raise ValueError(f"{shard}: only uncompressed .tar shards can be indexed (got {shard.suffix!r})")
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            split = _split_member(member.name) if member.isfile() else None
            if split is not None and split[1] in SHARD_IMAGE_KEYS:
                samples.setdefault(split[0], {})[split[1]] = member
    refs = []
    for key, members in samples.items():
        member = next(members[ext] for ext in SHARD_IMAGE_KEYS if ext in members)
        refs.append(ImageRef(id=key, path=str(shard), offset=member.offset_data, size=member.size))
    return refs


def find_images(sources: str | Path | Sequence[str | Path]) -> list[ImageRef]:
    """Resolve one or more sources into image references, in a deterministic order.

    Folder ids are paths relative to the folder (prefixed by the folder when several sources are given); a
    glob, a single file or a list file keeps the path as written; shard samples use their webdataset key.
    """
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    refs: list[ImageRef] = []
    for item in items:
        refs.extend(_resolve(str(item), prefix_folders=len(items) > 1))
    return refs


def _resolve(source: str, prefix_folders: bool) -> list[ImageRef]:
    path = Path(source)
    expanded = expand_shards(source) if not path.exists() else [source]
    if len(expanded) > 1:
        return [ref for name in expanded for ref in _resolve(name, prefix_folders)]
    if path.is_dir():
        return folder_images(path, prefix=(path.as_posix().rstrip("/") + "/") if prefix_folders else "")
    if path.is_file():
        if path.suffix == ".tar":
            return shard_images(path)
        if _is_image_name(path):
            return [ImageRef(id=source, path=source)]
        return list_file_images(path)
    if any(c in source for c in "*?["):
        refs: list[ImageRef] = []
        for match in sorted(glob.glob(source, recursive=True)):
            if Path(match).is_file():
                refs.extend(shard_images(Path(match)) if match.endswith(".tar") else [ImageRef(id=match, path=match)])
        return refs
    raise FileNotFoundError(f"{source}: no such file, folder, glob match or shard")


# ----------------------------------------------------------------------------------------------- decoding
def read_bytes(ref: ImageRef) -> bytes:
    """The encoded bytes of an image, from disk or from inside its shard; raises ImageDecodeError."""
    try:
        with open(ref.path, "rb") as f:
            if not ref.in_shard:
                return f.read()
            f.seek(ref.offset)
            data = f.read(ref.size)
    except FileNotFoundError:
        raise ImageDecodeError("missing_image", "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("missing_image", "is a directory") from None
    if len(data) != ref.size:
        raise ImageDecodeError("missing_image", f"shard {ref.path} ends inside the member (read {len(data)} of "
                               f"{ref.size} bytes)")
    return data


def decode_image(ref: ImageRef, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode to 8-bit RGB (see ``tips.io.decode_rgb``) or raise ImageDecodeError, whose message names the limit
    to raise for a too-large image. max_pixels: larger images are refused from their header (None or 0 = no limit).
    """
    try:
        return decode_rgb(read_bytes(ref), max_pixels=max_pixels or None)
    except ImageDecodeError as e:
        if e.reason == "too_large":
            raise ImageDecodeError(e.reason, f"{e.detail} (--max-pixels; decompression-bomb guard)") from None
        raise


@dataclass
class Decoded:
    """One dataset item: ``image`` (3, H, W) in [0, 1], or None with the ``error`` that made it unreadable."""

    index: int
    id: str
    image: torch.Tensor | None
    error: str | None = None


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset of decoded, preprocessed images; never raises on a bad image."""

    def __init__(
        self,
        refs: Sequence[ImageRef],
        preprocess: Callable[[Image.Image], torch.Tensor],
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.refs = list(refs)
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Decoded:
        ref = self.refs[index]
        try:
            image = decode_image(ref, self.max_pixels)
        except ImageDecodeError as e:
            return Decoded(index, ref.id, None, str(e))
        return Decoded(index, ref.id, self.preprocess(image))


def collate_decoded(items: list[Decoded]) -> list[Decoded]:
    """Keep items as a list: sizes may differ (keep-aspect) and some items are failures."""
    return items


# ----------------------------------------------------------------------------------------------- demo images
def write_demo_images(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write a handful of procedural images (gradients, shapes, noise) plus odd modes and one broken file.

    The odd ones exercise decoding: RGBA, palette with transparency, 16-bit grayscale, CMYK JPEG, an EXIF-rotated
    JPEG, an animated GIF; ``broken-on-purpose.jpg`` is a truncated JPEG that a run reports and skips.
    """
    import numpy as np
    from PIL import ImageDraw

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
