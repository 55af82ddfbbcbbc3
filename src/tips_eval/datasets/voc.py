"""Pascal VOC 2012 segmentation: ``VOCdevkit/VOC2012/{ImageSets/Segmentation,JPEGImages,SegmentationClass}``.

``SegmentationClass/*.png`` are palette PNGs whose palette indices are the class ids (0 background … 20
tvmonitor) and 255 the void border, which is ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import (
    IGNORE_INDEX, DatasetFormatError, DatasetInfo, DenseDataset, check_split, read_label_png, read_rgb, require_file,
)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


class VOCDataset(DenseDataset):
    """ROOT is ``VOCdevkit/VOC2012``, ``VOCdevkit`` or the folder holding ``VOCdevkit``.

    split ``train`` (1,464 images) or ``val`` (1,449); a ``trainaug`` list, when present as
    ``ImageSets/Segmentation/trainaug.txt`` with its labels in ``SegmentationClassAug``, is read as ``trainaug``.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        root = Path(root)
        for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (candidate / "ImageSets" / "Segmentation").is_dir():
                root = candidate
                break
        self.root = root
        check_split(split, ("train", "val", "trainaug"))
        listing = require_file(root / "ImageSets" / "Segmentation" / f"{split}.txt",
                               "a list of image ids, one per line (VOCdevkit/VOC2012/ImageSets/Segmentation)")
        self.keys = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if not self.keys:
            raise DatasetFormatError(listing, "empty; expected one image id per line")
        self.label_dir = root / ("SegmentationClassAug" if split == "trainaug" else "SegmentationClass")
        self.info = DatasetInfo(
            name="voc", root=str(root.resolve()), split=split, class_names=list(VOC_CLASSES),
            is_object=[False] + [True] * 20, has_seg=True,
            source=f"VOC2012 ImageSets/Segmentation/{split}.txt (21 classes, 255 ignored)",
        )

    def load_image(self, index: int) -> Image.Image:
        return read_rgb(self.root / "JPEGImages" / f"{self.keys[index]}.jpg")

    def load_seg(self, index: int) -> torch.Tensor:
        path = self.label_dir / f"{self.keys[index]}.png"
        seg = read_label_png(path).astype(np.int64)
        bad = (seg != IGNORE_INDEX) & (seg > 20)
        if bad.any():
            raise DatasetFormatError(path, f"palette index {int(seg[bad].max())}; expected 0..20 or 255 (void)")
        return torch.from_numpy(seg)
