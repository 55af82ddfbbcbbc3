"""Readers for the global tasks: class-per-folder image sets and image–caption pairs.

Image folders (ImageNet layout), or a scenes probe split (``scenes:DIR``, see :func:`read_scene_objects`)::

    ROOT/<class_folder>/*.jpg|png|...      class name = folder name with "_" -> " ",
    ROOT/classes.json | classes.txt        or from a mapping (see :func:`read_class_names`)

Caption pairs: a ``.jsonl`` (one object per line with ``image`` and ``caption`` / ``captions``), a ``.csv`` /
``.tsv`` with ``image`` and ``caption`` columns, or the probe split's ``captions.jsonl`` (``key``,
``alt_text``, ``synthetic_captions``; images ``{key}.png`` beside it; docs/data_format.md). Several captions
per image may come as a list or as several rows naming the same image.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tips.io import ImageDecodeError, decode_image
from tips.models import to_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
CLASS_FILES = ("classes.json", "classes.txt")


class ImageList(Dataset):
    """Image files → (transform(image) (3, H, W), label) with label -1 when unlabelled."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor],
                 labels: Sequence[int] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.paths[i]
        try:
            image = to_rgb(decode_image(path.read_bytes(), max_pixels=None), in_place=True)  # dataset files are trusted: PIL's own limit
        except (OSError, ImageDecodeError) as e:
            raise ValueError(f"{path}: cannot read image ({e})") from e
        return self.transform(image), self.labels[i]


# ----------------------------------------------------------------------------- image folders
@dataclass
class ImageFolder:
    """A class-per-folder image set. ``folders[i]`` is class ``i``'s folder name, ``class_names[i]`` its prompt name."""

    root: Path
    folders: list[str]
    class_names: list[str]
    paths: list[Path]
    labels: list[int]

    def dataset(self, transform: Callable[[Image.Image], torch.Tensor]) -> ImageList:
        return ImageList(self.paths, transform, self.labels)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(root: str | Path, classes: str | Path | None = None, folders: Sequence[str] | None = None,
                      find_names: bool = True) -> ImageFolder:
    """Read ``root/<class_folder>/*``; classes are the sorted folder names (or ``folders``, e.g. a train split's).

    classes: a class-name mapping file; default ``classes.json`` / ``classes.txt`` in ``root`` or its parent
    (``find_names=False``: no look-up, names from the folders; kNN needs no names).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected ROOT/<class_name>/<image files>)")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders is None:
        folders = present
    else:
        unknown = sorted(set(present) - set(folders))
        if unknown:
            raise ValueError(f"{root}: class folders {unknown[:5]} are not among the {len(folders)} reference classes")
    if not folders:
        raise ValueError(f"{root}: no class folders found (expected ROOT/<class_name>/<image files>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(folders):
        if not (root / name).is_dir():
            continue
        files = _images_in(root / name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"{root}: no images with suffix {IMAGE_SUFFIXES} in its class folders")
    class_file = Path(classes) if classes is not None else (_find_class_file(root) if find_names else None)
    names = read_class_names(class_file, list(folders)) if class_file else [f.replace("_", " ") for f in folders]
    return ImageFolder(root, list(folders), names, paths, labels)


def _find_class_file(root: Path) -> Path | None:
    for folder in (root, root.parent):
        for name in CLASS_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def read_class_names(path: str | Path, folders: list[str]) -> list[str]:
    """Class names for ``folders`` (sorted folder names) from a mapping file.

    Accepted: JSON ``{"folder": "name", ...}``, a JSON list of names in folder order, the probe format
    ``{"classes": [{"id", "name"}, ...]}`` (ids index the sorted folders), or a ``.txt`` with one name per
    line in folder order (``folder<TAB>name`` lines also accepted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class-name file not found")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if isinstance(data, dict):
            missing = [f for f in folders if f not in data]
            if missing:
                raise ValueError(f"{path}: no name for class folders {missing[:5]}")
            return [str(data[f]) for f in folders]
        if isinstance(data, list):
            names = [str(d["name"]) if isinstance(d, dict) else str(d) for d in data]
            return _in_order(path, names, folders)
        raise ValueError(f"{path}: expected a folder→name object or a list of names")
    lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if all("\t" in ln for ln in lines):
        mapping = dict(ln.split("\t", 1) for ln in lines)
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise ValueError(f"{path}: no name for class folders {missing[:5]}")
        return [mapping[f].strip() for f in folders]
    return _in_order(path, [ln.strip() for ln in lines], folders)


def _in_order(path: Path, names: list[str], folders: list[str]) -> list[str]:
    if len(names) != len(folders):
        raise ValueError(f"{path}: {len(names)} class names for {len(folders)} class folders")
    return names


# ----------------------------------------------------------------------------- caption pairs
@dataclass
class CaptionPairs:
    """Images and their captions: ``caption_image[j]`` is the index in ``images`` that caption ``j`` describes."""

    source: Path
    images: list[Path]
    captions: list[str]
    caption_image: list[int]
    caption_field: str

    def dataset(self, transform: Callable[[Image.Image], torch.Tensor]) -> ImageList:
        return ImageList(self.images, transform)


def read_caption_pairs(source: str | Path, caption_field: str | None = None, image_root: str | Path | None = None) -> CaptionPairs:
    """Read image–caption pairs from a ``.jsonl`` / ``.csv`` / ``.tsv`` file, or a folder holding ``captions.jsonl``.

    caption_field: the key / column holding the caption(s): default ``caption`` or ``captions`` for plain files,
    ``alt_text`` for the probe format (``synthetic_captions`` selects the synthetic ones).
    image_root: where relative image paths start; default the annotation file's folder.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "captions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: caption file not found (expected .jsonl, .csv or .tsv, or a folder with captions.jsonl)")
    base = Path(image_root) if image_root is not None else path.parent
    if path.suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object ({e})") from e
    if not rows:
        raise ValueError(f"{path}: no rows")
    return _group(path, rows, base, caption_field)


def _image_of(path: Path, n: int, row: dict, base: Path) -> Path:
    if row.get("image"):
        return base / str(row["image"])
    if "key" in row:  # probe format: {key}.png (or another image suffix) beside captions.jsonl
        for suffix in (".png", ".jpg", ".jpeg", ".webp"):
            if (base / f"{row['key']}{suffix}").is_file():
                return base / f"{row['key']}{suffix}"
        raise FileNotFoundError(f"{path}:{n}: no image file {row['key']}.png beside it")
    raise ValueError(f"{path}:{n}: row has neither 'image' nor 'key': {sorted(row)}")


def _group(path: Path, rows: list[dict], base: Path, caption_field: str | None) -> CaptionPairs:
    if caption_field is None:
        first = rows[0]
        caption_field = next((k for k in ("caption", "captions", "alt_text") if k in first), None)
        if caption_field is None:
            raise ValueError(f"{path}: no 'caption', 'captions' or 'alt_text' field; name one with caption_field")
    index: dict[Path, int] = {}
    images: list[Path] = []
    captions: list[str] = []
    caption_image: list[int] = []
    for n, row in enumerate(rows, 1):
        if caption_field not in row:
            raise ValueError(f"{path}:{n}: no field {caption_field!r} (has {sorted(row)})")
        value = row[caption_field]
        if isinstance(value, str) and path.suffix in (".csv", ".tsv") and value.startswith("["):
            value = json.loads(value)
        texts = [value] if isinstance(value, str) else [str(v) for v in value]
        texts = [t.strip() for t in texts if t and t.strip()]
        if not texts:
            continue  # empty captions are dropped, as in the data pipeline
        image = _image_of(path, n, row, base)
        if not image.is_file():
            raise FileNotFoundError(f"{path}:{n}: image {image} not found")
        if image not in index:
            index[image] = len(images)
            images.append(image)
        captions += texts
        caption_image += [index[image]] * len(texts)
    if not captions:
        raise ValueError(f"{path}: no non-empty captions in field {caption_field!r}")
    return CaptionPairs(path, images, captions, caption_image, caption_field)


# ----------------------------------------------------------------------------- probe segmentation split
@dataclass
class SegFolder:
    """A plain-folder probe split with segmentation maps (docs/data_format.md §2)."""

    root: Path
    split: str
    class_names: list[str]
    is_object: list[bool]
    ignore_index: int
    samples: list[tuple[Path, Path]]  # (image, {key}.seg.png)


def read_seg_folder(root: str | Path, split: str = "val") -> SegFolder:
    """``ROOT/classes.json`` + ``ROOT/{split}/{key}.png`` and ``{key}.seg.png`` (uint8 ids, ignore_index unlabelled)."""
    root = Path(root)
    meta_path = root / "classes.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing (expected {{'classes': [{{'id', 'name', 'is_object'}}, ...]}})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    entries = sorted(meta.get("classes", []), key=lambda c: c["id"])
    if not entries or [c["id"] for c in entries] != list(range(len(entries))):
        raise ValueError(f"{meta_path}: 'classes' must list ids 0..C-1 with a 'name' each")
    folder = root / split
    samples = []
    for seg in sorted(folder.glob("*.seg.png")):
        key = seg.name[: -len(".seg.png")]
        image = next((folder / f"{key}{s}" for s in (".png", ".jpg", ".jpeg") if (folder / f"{key}{s}").is_file()), None)
        if image is None:
            raise FileNotFoundError(f"{seg}: no image {key}.png beside it")
        samples.append((image, seg))
    if not samples:
        raise ValueError(f"{folder}: no {{key}}.seg.png segmentation maps")
    return SegFolder(root, split, [str(c["name"]) for c in entries], [bool(c.get("is_object", True)) for c in entries],
                     int(meta.get("ignore_index", 255)), samples)


# ----------------------------------------------------------------------------- scenes: main object per image
def read_scene_objects(root: str | Path, split: str = "val") -> ImageFolder:
    """A probe split with segmentation maps as a classification set: each image's label is its *main object*,
    the object class (``is_object`` in ``classes.json``) covering the most pixels of its ``{key}.seg.png``.

    The classes are the object classes only (for tips-scenes: sphere, cube, cylinder, cone); images showing no
    object pixel are left out (an error when that leaves none). Ties go to the lower class id.
    """
    seg = read_seg_folder(root, split)
    objects = [i for i, is_object in enumerate(seg.is_object) if is_object]
    if not objects:
        raise ValueError(f"{Path(root) / 'classes.json'}: no class has is_object true, so no image has a main object")
    paths: list[Path] = []
    labels: list[int] = []
    for image, seg_path in seg.samples:
        with Image.open(seg_path) as im:
            counts = np.bincount(np.asarray(im, dtype=np.uint8).ravel(), minlength=256)[objects]
        if counts.max() > 0:
            paths.append(image)
            labels.append(int(counts.argmax()))
    if not paths:
        raise ValueError(f"{Path(root) / split}: no image shows an object pixel ({[seg.class_names[i] for i in objects]})")
    names = [seg.class_names[i] for i in objects]
    return ImageFolder(Path(root) / split, names, names, paths, labels)
