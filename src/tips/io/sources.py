"""Where images come from, for feature extraction and prediction.

A *source* is a folder (searched recursively), a glob, a list file (one path per line, relative to the list's
folder), a single image, or webdataset shards (``shards-{000..009}.tar``). Every source becomes a flat list of
:class:`ImageRef`; :class:`ImageDataset` decodes them robustly: an unreadable or over-sized image becomes a
:class:`Decoded` with a reason instead of an exception, so one bad file never stops a run.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from .images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from .shards import expand_shards

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# The largest encoded image read (bytes): a bigger file or tar member is skipped from its size (the tar header
# or stat) before any byte is read. A PNG of DEFAULT_MAX_PIXELS RGB pixels compresses below this.
MAX_IMAGE_BYTES = 256 << 20
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


def check_sources(sources: str | Path | Sequence[str | Path]) -> None:
    """Raise FileNotFoundError naming the first source that names nothing (no file, folder, glob match or shard),
    without listing any image: a cheap check before a model is built."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    for item in items:
        source = str(item)
        if Path(source).exists():
            continue
        expanded = expand_shards(source)
        if len(expanded) > 1 and any(Path(name).exists() for name in expanded):
            continue
        if any(c in source for c in "*?[") and glob.glob(source, recursive=True):
            continue
        raise FileNotFoundError(f"{source}: no such file, folder, glob match or shard")


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
def read_bytes(ref: ImageRef, max_bytes: int | None = MAX_IMAGE_BYTES) -> bytes:
    """The encoded bytes of an image, from disk or from inside its shard; raises ImageDecodeError. An image
    larger than ``max_bytes`` is refused from its size, before it is read."""
    try:
        size = ref.size if ref.in_shard else os.stat(ref.path).st_size
        if max_bytes is not None and size > max_bytes:
            raise ImageDecodeError("too_large", f"{size} bytes, more than the {max_bytes} an image may have "
                                   "(not read)")
        with open(ref.path, "rb") as f:
            if not ref.in_shard:
                return f.read(max_bytes + 1 if max_bytes is not None else -1)
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


def decode_ref(ref: ImageRef, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode in the stored mode (:func:`tips.io.decode_image`) or raise ImageDecodeError, whose message names the
    flag to raise for a too-large image. max_pixels: larger images are refused from their header (None or 0 = no
    limit)."""
    try:
        return decode_image(read_bytes(ref), max_pixels=max_pixels or None)
    except ImageDecodeError as e:
        if e.reason == "too_large":
            raise ImageDecodeError(e.reason, f"{e.detail} (--max-pixels; decompression-bomb guard)") from None
        raise
