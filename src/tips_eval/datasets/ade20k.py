"""ADE20K (SceneParsing 2016): ``ADEChallengeData2016/{images,annotations}/{training,validation}``.

Labels are 8-bit PNGs with 0 = "other" and 1..150 the classes; as mmseg's ``reduce_zero_label`` they become
0..149 with 0 → 255 (ignored); a 255 stays ignored (the TIPS notebook's rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tips

from .base import (
    IGNORE_INDEX, DatasetFormatError, DatasetInfo, DenseDataset, check_split, read_label_png, read_rgb, require_dir,
)

FOLDER = {"train": "training", "val": "validation"}

ADE20K_CLASSES = tips.ADE20K_CLASSES  # mmseg's ADE20KDataset names (objectInfo150 order), one list for tips


class ADE20KDataset(DenseDataset):
    """ROOT is ``ADEChallengeData2016`` or the folder holding it."""

    def __init__(self, root: str | Path, split: str) -> None:
        root = Path(root)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        self.root = root
        folder = FOLDER[check_split(split)]
        image_dir = require_dir(root / "images" / folder, f"ADEChallengeData2016/images/{folder}/*.jpg")
        self.label_dir = require_dir(root / "annotations" / folder, f"ADEChallengeData2016/annotations/{folder}/*.png")
        self.image_paths = sorted(image_dir.glob("*.jpg"))
        if not self.image_paths:
            raise DatasetFormatError(image_dir, "no .jpg images; expected ADE_*.jpg files")
        self.keys = [p.stem for p in self.image_paths]
        self.info = DatasetInfo(
            name="ade20k", root=str(root.resolve()), split=split, class_names=list(ADE20K_CLASSES),
            is_object=[False] * 150, has_seg=True, source=f"ADEChallengeData2016 {folder} (150 classes, 0 ignored)",
        )

    def load_image(self, index: int) -> Image.Image:
        return read_rgb(self.image_paths[index])

    def load_seg(self, index: int) -> torch.Tensor:
        path = self.label_dir / f"{self.keys[index]}.png"
        raw = read_label_png(path).astype(np.int64)
        bad = (raw > 150) & (raw != IGNORE_INDEX)
        if bad.any():
            raise DatasetFormatError(path, f"label {int(raw[bad].max())}; expected 0 (other), 1..150 or 255")
        seg = raw - 1
        seg[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX  # the notebook ignores 0 and 255
        return torch.from_numpy(seg)
