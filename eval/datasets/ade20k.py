"""ADE20K (SceneParsing 2016): ``ADEChallengeData2016/{images,annotations}/{training,validation}``.

Labels are 8-bit PNGs with 0 = "other" and 1..150 the classes; as mmseg's ``reduce_zero_label`` they become
0..149 with 0 → 255 (ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import (
    IGNORE_INDEX, DatasetFormatError, DatasetInfo, DenseDataset, check_split, read_label_png, read_rgb, require_dir,
)

FOLDER = {"train": "training", "val": "validation"}

# mmseg's ADE20KDataset names (objectInfo150 order).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150


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
        if raw.max() > 150:
            raise DatasetFormatError(path, f"label {int(raw.max())}; expected 0 (other) or 1..150")
        seg = raw - 1
        seg[raw == 0] = IGNORE_INDEX
        return torch.from_numpy(seg)
