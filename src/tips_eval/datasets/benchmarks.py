"""The open-vocabulary segmentation benchmarks beside VOC21 (:mod:`.voc`) and ADE20K (:mod:`.ade20k`), each read
from the layout its usual conversion writes (mmsegmentation's, as SCLIP / ClearCLIP / NACLIP use them):

- ``voc20``: VOC2012 ``SegmentationClass`` palette PNGs, background 0 → ignored, 1..20 → 0..19;
- ``context60`` / ``context59``: ``VOCdevkit/VOC2010/{JPEGImages, SegmentationContext}``, labels
  ``SegmentationClassContext/*.png`` with 0 = background, 1..59 (mmsegmentation's
  ``tools/dataset_converters/pascal_context.py`` from the Detail API's ``trainval_merged.json``); context59 ignores
  the background (0 → 255, c → c − 1);
- ``coco-object``: ``images/val2017/*.jpg`` and ``annotations/val2017/*_instanceTrainIds.png`` with 0 = background
  and 1..80 the things (SCLIP's ``datasets/cvt_coco_object.py``, after GroupViT / TCL: every stuff class → 0);
- ``coco-stuff``: the same images and ``annotations/val2017/*_labelTrainIds.png`` with 0..170 (mmsegmentation's
  ``tools/dataset_converters/coco_stuff164k.py``);
- ``cityscapes``: ``leftImg8bit/{split}/<city>/*_leftImg8bit.png`` and ``gtFine/{split}/<city>/*_gtFine_labelTrainIds.png``
  with 0..18 (cityscapesscripts' ``createTrainIdLabelImgs``).

255 is ignored everywhere; class names are the presets' (:func:`tips.inference.open_vocab.load_preset`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tips.inference.open_vocab import load_preset

from .base import (
    IGNORE_INDEX, DatasetFormatError, DatasetInfo, DenseDataset, check_split, read_label_png, read_rgb, require_dir,
    require_file,
)


class LabelledImages(DenseDataset):
    """Images and label PNGs paired by key; ``shift`` is subtracted from labels (with ``reduce_zero`` 0 → ignored)."""

    def __init__(self, name: str, root: Path, split: str, image_paths: list[Path], label_paths: list[Path],
                 preset: str, source: str, reduce_zero: bool = False) -> None:
        if not image_paths:
            raise DatasetFormatError(root, f"no images found for split {split!r}; expected {source}")
        self.root, self.image_paths, self.label_paths, self.reduce_zero = root, image_paths, label_paths, reduce_zero
        self.keys = [p.name.split(".")[0] for p in image_paths]
        names = load_preset(preset).class_names
        self.num_classes = len(names)
        self.info = DatasetInfo(name=name, root=str(root.resolve()), split=split, class_names=names,
                                is_object=[False] * len(names), has_seg=True, source=source)

    def load_image(self, index: int) -> Image.Image:
        return read_rgb(self.image_paths[index])

    def load_seg(self, index: int) -> torch.Tensor:
        path = self.label_paths[index]
        raw = read_label_png(path).astype(np.int64)
        seg = raw.copy()
        if self.reduce_zero:
            seg = raw - 1
            seg[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX
        bad = (seg != IGNORE_INDEX) & (seg >= self.num_classes)
        if bad.any():
            top = self.num_classes + int(self.reduce_zero) - 1
            raise DatasetFormatError(path, f"label {int(raw[bad].max())}; expected {int(self.reduce_zero)}..{top} "
                                           f"or 255 ({self.info.source})")
        return torch.from_numpy(seg)


def _listed(root: Path, listing: Path, image_dir: Path, label_dir: Path, label_suffix: str) -> tuple[list[Path], list[Path]]:
    require_file(listing, "a list of image ids, one per line")
    keys = [ln.split()[0] for ln in listing.read_text().splitlines() if ln.strip()]
    if not keys:
        raise DatasetFormatError(listing, "empty; expected one image id per line")
    return [image_dir / f"{k}.jpg" for k in keys], [label_dir / f"{k}{label_suffix}" for k in keys]


def _voc_root(root: Path, year: str, marker: str) -> Path:
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "ImageSets" / marker).is_dir():
            return candidate
    return root


def voc20(root: str | Path, split: str) -> LabelledImages:
    """VOC2012 ``SegmentationClass``, 20 objects (background ignored, as mmseg's ``reduce_zero_label``)."""
    root = _voc_root(Path(root), "2012", "Segmentation")
    check_split(split)
    images, labels = _listed(root, root / "ImageSets" / "Segmentation" / f"{split}.txt", root / "JPEGImages",
                             root / "SegmentationClass", ".png")
    return LabelledImages("voc20", root, split, images, labels, "voc20",
                          f"VOC2012 ImageSets/Segmentation/{split}.txt, SegmentationClass (0 ignored, 1..20 → 0..19)",
                          reduce_zero=True)


def _context(root: str | Path, split: str, with_background: bool) -> LabelledImages:
    root = _voc_root(Path(root), "2010", "SegmentationContext")
    check_split(split)
    images, labels = _listed(root, root / "ImageSets" / "SegmentationContext" / f"{split}.txt", root / "JPEGImages",
                             root / "SegmentationClassContext", ".png")
    name = "context60" if with_background else "context59"
    rule = "0 background, 1..59" if with_background else "0 ignored, 1..59 → 0..58"
    return LabelledImages(name, root, split, images, labels, name,
                          f"VOC2010 SegmentationClassContext from mmseg's pascal_context.py ({rule})",
                          reduce_zero=not with_background)


def context60(root: str | Path, split: str) -> LabelledImages:
    """PASCAL Context with its background class (60 classes)."""
    return _context(root, split, True)


def context59(root: str | Path, split: str) -> LabelledImages:
    """PASCAL Context without the background (59 classes)."""
    return _context(root, split, False)


def _coco(root: str | Path, split: str, suffix: str, name: str, preset: str, source: str) -> LabelledImages:
    root = Path(root)
    if not (root / "images").is_dir() and (root / "coco_stuff164k").is_dir():
        root = root / "coco_stuff164k"
    folder = {"train": "train2017", "val": "val2017"}[check_split(split)]
    image_dir = require_dir(root / "images" / folder, f"images/{folder}/*.jpg")
    label_dir = require_dir(root / "annotations" / folder, f"annotations/{folder}/*{suffix}")
    images = sorted(image_dir.glob("*.jpg"))
    return LabelledImages(name, root, split, images, [label_dir / f"{p.stem}{suffix}" for p in images], preset,
                          f"{folder} {source}")


def coco_object(root: str | Path, split: str) -> LabelledImages:
    """COCO-Object: background + 80 things, ``*_instanceTrainIds.png`` from SCLIP's ``cvt_coco_object.py``."""
    return _coco(root, split, "_instanceTrainIds.png", "coco-object", "coco_object",
                 "*_instanceTrainIds.png (SCLIP datasets/cvt_coco_object.py: 0 background, 1..80 things)")


def coco_stuff(root: str | Path, split: str) -> LabelledImages:
    """COCO-Stuff 164k, 171 classes, ``*_labelTrainIds.png`` from mmseg's ``coco_stuff164k.py``."""
    return _coco(root, split, "_labelTrainIds.png", "coco-stuff", "coco_stuff171",
                 "*_labelTrainIds.png (mmseg tools/dataset_converters/coco_stuff164k.py: 0..170)")


def cityscapes(root: str | Path, split: str) -> LabelledImages:
    """Cityscapes fine annotations, 19 train ids (``*_gtFine_labelTrainIds.png``, cityscapesscripts)."""
    root = Path(root)
    check_split(split)
    image_dir = require_dir(root / "leftImg8bit" / split, f"leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    label_dir = require_dir(root / "gtFine" / split, f"gtFine/{split}/<city>/*_gtFine_labelTrainIds.png")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    labels = [label_dir / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
              for p in images]
    return LabelledImages("cityscapes", root, split, images, labels, "cityscapes",
                          f"Cityscapes {split} *_gtFine_labelTrainIds.png (cityscapesscripts createTrainIdLabelImgs, 0..18)")
