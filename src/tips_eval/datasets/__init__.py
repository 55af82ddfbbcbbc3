"""Dense-probe datasets read from their official layouts; ``open_dataset("scenes:/path", "train")``.

Every dataset yields :class:`DenseSample` (PIL RGB image; seg (H, W) int64 with 255 = ignore; depth (H, W)
float32 metres with 0 = invalid; normals (3, H, W) float32 unit vectors, 0 = invalid) and describes itself with
:class:`DatasetInfo`.
"""

from __future__ import annotations

from pathlib import Path

from .ade20k import ADE20K_CLASSES, ADE20KDataset
from .benchmarks import LabelledImages, cityscapes, coco_object, coco_stuff, context59, context60, voc20
from .base import IGNORE_INDEX, DatasetFormatError, DatasetInfo, DenseDataset, DenseSample
from .folder import FolderDataset, ScenesDataset, read_classes_json
from .navi import NAVIDataset, normals_from_depth
from .nyu import NYULabeledDataset, NYURawDataset
from .nyu_normals import NYUNormalsDataset
from .voc import VOC_CLASSES, VOCDataset

KINDS = ("scenes", "folder", "ade20k", "voc", "nyu", "nyu-raw", "nyu-normals", "navi",
         "voc21", "voc20", "context60", "context59", "coco-object", "coco-stuff", "cityscapes")
# the open-vocabulary benchmarks (tips-probe zero-shot-seg), each in its released layout: .benchmarks
BENCHMARKS = {"voc20": voc20, "context60": context60, "context59": context59, "coco-object": coco_object,
              "coco-stuff": coco_stuff, "cityscapes": cityscapes}


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """``"kind:/path[?key=value&...]"`` → (kind, path, options)."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        raise ValueError(f"dataset {spec!r}: expected KIND:/path with KIND one of {KINDS}")
    path, _, query = rest.partition("?")
    options = dict(item.split("=", 1) for item in query.split("&") if "=" in item)
    return kind, Path(path).expanduser(), options


def open_dataset(spec: str, split: str) -> DenseDataset:
    """Open one split (``train`` / ``val``) of a dataset given as ``KIND:/path``.

    scenes:DIR[/probe]   the embedded tips-scenes probe split
    folder:ROOT          the plain probe folder format (docs/data_format.md §2)
    ade20k:ROOT          ADEChallengeData2016 (or its parent)
    voc:ROOT             VOCdevkit/VOC2012 (or VOCdevkit, or its parent)
    nyu:FILE_OR_DIR      nyu_depth_v2_labeled.mat + splits.mat (``?splits=PATH`` to name the split file)
    nyu-raw:ROOT         raw NYUv2 frames: BTS lists nyu_{train,test}.txt or {train,test}/ folders
    nyu-normals:ROOT     probe3d's NYUv2 normals: ROOT/nyu_geonet/*.mat (train), ROOT/nyuv2/ labeled set +
                         Ladicky normals (val = test); ``?crop=full`` keeps 480x640, ``?train=DIR&test=DIR``
    navi:ROOT            the NAVI release (navi_v1), normals from depth
    voc21:ROOT           = voc:ROOT (21 classes with background)
    voc20:ROOT           VOC2012, background ignored (20 classes)
    context60:ROOT       VOCdevkit/VOC2010 with SegmentationClassContext (59 + background); context59: without
    coco-object:ROOT     coco_stuff164k images/val2017 + annotations/val2017/*_instanceTrainIds.png
    coco-stuff:ROOT      coco_stuff164k images/val2017 + annotations/val2017/*_labelTrainIds.png (171 classes)
    cityscapes:ROOT      leftImg8bit/ + gtFine/*_gtFine_labelTrainIds.png (19 classes)
    """
    kind, path, options = parse_spec(spec)
    if kind == "scenes":
        return ScenesDataset(path, split)
    if kind == "folder":
        return FolderDataset(path, split)
    if kind == "ade20k":
        return ADE20KDataset(path, split)
    if kind in BENCHMARKS:
        return BENCHMARKS[kind](path, split)
    if kind in ("voc", "voc21"):
        return VOCDataset(path, split)
    if kind == "nyu":
        return NYULabeledDataset(path, split, splits=options.get("splits"))
    if kind == "nyu-normals":
        return NYUNormalsDataset(path, split, options)
    if kind == "navi":
        return NAVIDataset(path, split)
    return NYURawDataset(path, split)


__all__ = [
    "ADE20K_CLASSES", "ADE20KDataset", "BENCHMARKS", "LabelledImages", "DatasetFormatError", "DatasetInfo", "DenseDataset", "DenseSample",
    "FolderDataset", "IGNORE_INDEX", "KINDS", "NAVIDataset", "NYULabeledDataset", "NYUNormalsDataset",
    "NYURawDataset", "ScenesDataset", "normals_from_depth",
    "VOCDataset", "VOC_CLASSES", "open_dataset", "parse_spec", "read_classes_json",
]
