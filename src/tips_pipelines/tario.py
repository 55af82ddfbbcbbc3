"""Tar I/O shared by the data jobs: their JSON encoding, sample reading, shard specs, image checks.

Shards are written with :mod:`tips.io` (``ShardFile``, ``encode_sample``): fixed member metadata, so the same samples
always give the same bytes.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from tips.io import ImageDecodeError, decode_image, expand_shards

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
FORMAT_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}  # MPO is a multi-frame JPEG
JPEG_QUALITY = 95


# -------------------------------------------------------------------------------------------------------------- json


def dumps_json(obj: Any) -> bytes:
    """The one JSON encoding the data jobs use for ``json`` members (stable key order, UTF-8, compact)."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def read_json(path: str | os.PathLike) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable (a resume then starts over)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------- reading


@dataclass
class TarSample:
    """One webdataset sample as stored: its key and its members ``ext -> bytes`` in tar order."""

    key: str
    members: dict[str, bytes]

    def image_ext(self) -> str | None:
        """The extension of the sample's image member, if it has one."""
        return next((ext for ext in self.members if ext.lower() in IMAGE_EXTENSIONS), None)


class ShardReadError(Exception):
    """A tar shard that ends early or is not a tar; ``samples_read`` complete samples came before the damage."""

    def __init__(self, path: Path, samples_read: int, cause: BaseException) -> None:
        super().__init__(f"{path}: unreadable after {samples_read} samples ({type(cause).__name__}: {cause})")
        self.path = path
        self.samples_read = samples_read


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key runs up to the first dot of the file name, the extension is the rest."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    prefix = f"{directory}/" if directory else ""
    return prefix + stem, ext if dot else ""


def iter_tar_samples(path: str | os.PathLike) -> Iterator[TarSample]:
    """Samples of a shard, grouping consecutive members by key; raises ``ShardReadError`` on a damaged tar."""
    path = Path(path)
    current: TarSample | None = None
    read = 0
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                data = tar.extractfile(info).read()
                if current is not None and current.key != key:
                    yield current
                    read += 1
                    current = None
                if current is None:
                    current = TarSample(key, {})
                current.members[ext] = data
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardReadError(path, read, e) from e
    if current is not None:
        yield current


def resolve_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Shard paths from a folder (its ``*.tar``), a webdataset spec (``a-{000..009}.tar``, ``a.tar::b.tar``), a glob,
    a file or a list."""
    if not isinstance(spec, (str, os.PathLike)):
        return [p for s in spec for p in resolve_shards(s)]
    text = os.fspath(spec)
    if os.path.isdir(text):
        paths = sorted(Path(text).glob("*.tar"))
    elif "{" in text or "::" in text:
        paths = [Path(p) for p in expand_shards(text, check_exists=True)]
    elif glob.has_magic(text):
        paths = sorted(Path(p) for p in glob.glob(text))
    else:
        paths = [Path(text)] if os.path.isfile(text) else []
    if not paths:
        raise FileNotFoundError(f"no shards found at {text!r} (expected a folder of .tar files, a pattern or a file)")
    return paths


# ------------------------------------------------------------------------------------------------------------ images


def _reencode(image: Image.Image, resize: int | None) -> tuple[str, bytes]:
    """Resized images become JPEG (quality 95, EXIF orientation applied); other formats become lossless PNG."""
    buf = io.BytesIO()
    if resize is None:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image.convert("RGBA" if has_alpha else "RGB").save(buf, "PNG")
        return "png", buf.getvalue()
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = resize / min(image.size)
    size = tuple(max(1, round(side * scale)) for side in image.size)
    image.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=JPEG_QUALITY)
    return "jpg", buf.getvalue()


def image_member(data: bytes, resize: int | None, max_pixels: int) -> tuple[str, bytes]:
    """(extension, bytes) to store for an image, verified by a full decode; the original bytes when possible.
    Raises ``tips.io.ImageDecodeError`` (reasons ``bad_image``, ``too_large``).

    Images whose shorter side is already at most ``resize`` keep their bytes: no upscaling, no second JPEG loss.
    """
    image = decode_image(data, max_pixels=max_pixels)
    ext = FORMAT_EXTENSIONS.get(image.format or "")
    must_resize = resize is not None and min(image.size) > resize
    if ext is not None and not must_resize:
        return ext, data
    try:
        return _reencode(image, resize if must_resize else None)
    except (OSError, ValueError) as e:
        raise ImageDecodeError("bad_image", f"cannot re-encode: {e}") from e
