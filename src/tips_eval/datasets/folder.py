"""The plain-folder probe format (docs/data_format.md §2) and the embedded scenes probe split written in it.

```
ROOT/classes.json                 {"classes": [{"id", "name", "is_object"}...], "depth_min", "depth_max",
                                   "depth_scale", "ignore_index"}
ROOT/{split}/{key}.png|.jpg       image
ROOT/{split}/{key}.depth.png      uint16, metres = value × depth_scale, 0 = invalid   (optional)
ROOT/{split}/{key}.seg.png        uint8 class ids, ignore_index = unlabelled           (optional)
ROOT/{split}/{key}.normals.png    uint16 RGB, n = value / 65535 * 2 - 1, 0 = invalid    (optional)
```
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import (
    IGNORE_INDEX,
    DatasetFormatError,
    DatasetInfo,
    DenseDataset,
    check_split,
    read_depth_png,
    read_label_png,
    read_normals_png,
    read_rgb,
    require_dir,
)

TARGET_SUFFIXES = (".depth.png", ".seg.png", ".normals.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_classes_json(path: Path) -> dict:
    """Parse and check ``classes.json``; returns it with ``classes`` sorted by id (ids must be 0..K-1)."""
    expected = 'a JSON object {"classes": [{"id": 0, "name": "...", "is_object": false}, ...], ...}'
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetFormatError(path, f"missing; expected {expected}") from None
    except ValueError as e:
        raise DatasetFormatError(path, f"not valid JSON ({e}); expected {expected}") from e
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in classes):
        raise DatasetFormatError(path, f"no valid 'classes' list; expected {expected}")
    classes = sorted(classes, key=lambda c: int(c["id"]))
    if [int(c["id"]) for c in classes] != list(range(len(classes))):
        raise DatasetFormatError(path, "class ids must be 0, 1, …, K-1 without gaps")
    meta["classes"] = classes
    return meta


class FolderDataset(DenseDataset):
    """One split of a probe folder. Either target may be absent for the whole split, not for single images."""

    def __init__(self, root: str | Path, split: str, name: str = "folder") -> None:
        self.root = Path(root)
        self.split = check_split(split)
        split_dir = require_dir(self.root / split, f"ROOT/{split}/ holding {{key}}.png images (docs/data_format.md §2)")
        images = sorted(
            p for p in split_dir.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(TARGET_SUFFIXES)
        )
        if not images:
            raise DatasetFormatError(split_dir, "no images; expected {key}.png or {key}.jpg files")
        self.keys = [p.name[: -len(p.suffix)] for p in images]
        self.image_paths = images
        has_seg = any((split_dir / f"{k}.seg.png").is_file() for k in self.keys)
        has_depth = any((split_dir / f"{k}.depth.png").is_file() for k in self.keys)
        has_normals = any((split_dir / f"{k}.normals.png").is_file() for k in self.keys)
        classes_path = self.root / "classes.json"
        meta = read_classes_json(classes_path) if (has_seg or classes_path.is_file()) else {"classes": []}
        classes = meta["classes"]
        self.depth_scale = float(meta.get("depth_scale", 0.001))
        self.ignore_index = int(meta.get("ignore_index", IGNORE_INDEX))
        self.info = DatasetInfo(
            name=name,
            root=str(self.root.resolve()),
            split=split,
            class_names=[str(c["name"]) for c in classes],
            is_object=[bool(c.get("is_object", False)) for c in classes],
            depth_min=float(meta["depth_min"]) if "depth_min" in meta else None,
            depth_max=float(meta["depth_max"]) if "depth_max" in meta else None,
            has_seg=has_seg,
            has_depth=has_depth,
            has_normals=has_normals,
            source=f"plain probe folder {self.root / split}",
        )

    def load_image(self, index: int) -> Image.Image:
        return read_rgb(self.image_paths[index])

    def load_seg(self, index: int) -> torch.Tensor | None:
        if not self.info.has_seg:
            return None
        path = self.root / self.split / f"{self.keys[index]}.seg.png"
        seg = read_label_png(path).astype(np.int64)
        seg[seg == self.ignore_index] = IGNORE_INDEX
        bad = (seg != IGNORE_INDEX) & (seg >= self.info.num_classes)
        if bad.any():
            raise DatasetFormatError(
                path, f"class id {int(seg[bad].max())}; expected ids < {self.info.num_classes} (classes.json) or 255"
            )
        return torch.from_numpy(seg)

    def load_depth(self, index: int) -> torch.Tensor | None:
        if not self.info.has_depth:
            return None
        return read_depth_png(self.root / self.split / f"{self.keys[index]}.depth.png", self.depth_scale)

    def load_normals(self, index: int) -> torch.Tensor | None:
        if not self.info.has_normals:
            return None
        return read_normals_png(self.root / self.split / f"{self.keys[index]}.normals.png")


class ScenesDataset(FolderDataset):
    """The probe split of ``tips-scenes``: ROOT may be the run folder (``DIR``) or its ``DIR/probe``."""

    def __init__(self, root: str | Path, split: str) -> None:
        root = Path(root)
        if not (root / "classes.json").is_file() and (root / "probe" / "classes.json").is_file():
            root = root / "probe"
        if not (root / "classes.json").is_file():
            raise DatasetFormatError(root / "classes.json", "missing; expected the probe split written by "
                                     "`tips-scenes --out DIR` (pass DIR or DIR/probe)")
        super().__init__(root, split, name="scenes")
        self.info.source = f"tips-scenes probe split {self.root / split}"
