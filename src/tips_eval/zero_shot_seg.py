"""Zero-shot (open-vocabulary) segmentation mIoU with the official TIPS protocol on the papers' benchmarks.

The protocol lives in the library (:mod:`tips.inference.open_vocab`: the notebook's preprocessing, the value
readout, TCL class embeddings, ``whole`` / ``slide``); this module reads the datasets, applies each benchmark's
preset (class list with synonyms, background threshold and logit scale of the paper it follows) and counts mIoU
with the notebook's rule. Several ``--dataset`` give one table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from tips.inference.open_vocab import (
    MODES, NONE_ID, ClassList, OpenVocabOptions, OpenVocabPreset, encode_classes, load_preset, open_vocab_segment,
    preset_names, value_readout,
)
from tips.io import decode_image
from tips.models import to_rgb

from . import common
from .datasets import open_dataset, parse_spec
from .global_data import read_seg_folder
from .options import TaskParser, examples, parse_task_args
from .templates import get_templates

__all__ = ["confusion_matrix", "evaluate_zero_shot_seg", "iou_metrics", "main", "value_readout"]

# the preset each dataset kind uses unless --preset says otherwise
KIND_PRESETS = {"voc": "voc21", "voc21": "voc21", "voc20": "voc20", "context60": "context60",
                "context59": "context59", "coco-object": "coco_object", "coco-stuff": "coco_stuff171",
                "cityscapes": "cityscapes", "ade20k": "ade20k"}


# ----------------------------------------------------------------------------- metrics
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """pred, target (...) class ids → (C, C + 1) counts, rows = target, columns = prediction; the last column counts
    predictions outside 0..C-1 (background "none of these"); pixels whose target is ignored are left out."""
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    p = pred[keep].long()
    p = torch.where((p >= 0) & (p < num_classes), p, torch.full_like(p, num_classes))
    idx = target[keep].long() * (num_classes + 1) + p
    return torch.bincount(idx, minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)


def iou_metrics(confusion: torch.Tensor, class_names: Sequence[str], subsets: dict[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """mIoU (%) over classes with a non-zero union (the notebook's rule: diag / (row + col − diag)), per-class IoU,
    pixel accuracy; plus the mIoU of each named subset of class ids. None where no class counts.

    confusion: (C, C) or (C, C + 1) from :func:`confusion_matrix` (a "none" prediction is a miss of its row only)."""
    conf = confusion.double()
    C = conf.shape[0]
    tp = conf[:, :C].diag()
    union = conf.sum(1) + conf[:, :C].sum(0) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    valid = union > 0
    out: dict[str, Any] = {
        "mIoU": 100.0 * iou[valid].mean().item() if valid.any() else None,
        "pixel_accuracy": 100.0 * (tp.sum() / conf.sum().clamp_min(1)).item(),
        "per_class_iou": {n: (100.0 * iou[c].item() if valid[c] else None) for c, n in enumerate(class_names)},
    }
    for name, ids in (subsets or {}).items():
        ids_t = torch.as_tensor(list(ids), dtype=torch.long)
        sub = ids_t[valid[ids_t]] if len(ids_t) else ids_t
        out[f"mIoU_{name}"] = 100.0 * iou[sub].mean().item() if len(sub) else None
    return out


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_zero_shot_seg(model: nn.Module, samples: Iterable[tuple[Image.Image, torch.Tensor]], classes: ClassList,
                           options: OpenVocabOptions | None = None, ignore_index: int = 255,
                           subsets: dict[str, Sequence[int]] | None = None, progress: bool = True,
                           class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """samples: (PIL RGB image, seg (H, W) class ids) → mIoU and pixel accuracy of :func:`open_vocab_segment`'s
    labels at the label size (the notebook's protocol by default)."""
    o = options or OpenVocabOptions()
    text = encode_classes(model, classes, o.templates)
    C = len(text)
    conf = torch.zeros(C, C + 1, dtype=torch.long)
    count = 0
    for image, seg in tqdm(samples, desc="zero-shot seg", disable=not progress, leave=False):
        result = open_vocab_segment(model, image, text, o, size=tuple(seg.shape))
        conf += confusion_matrix(result.labels.cpu(), seg, C, ignore_index)
        count += 1
    metrics = iou_metrics(conf, list(class_names or text.names), subsets)
    metrics["num_images"] = count
    return metrics


def _probe_folder_samples(paths: Sequence[tuple[Path, Path]]) -> Iterator[tuple[Image.Image, torch.Tensor]]:
    for image, seg in paths:
        rgb = to_rgb(decode_image(image.read_bytes(), max_pixels=None), in_place=True)
        with Image.open(seg) as s:
            yield rgb, torch.from_numpy(np.asarray(s, dtype=np.uint8).astype(np.int64))


def _dataset_samples(dataset, limit: int | None) -> Iterator[tuple[Image.Image, torch.Tensor]]:
    for i in range(min(len(dataset), limit or len(dataset))):
        sample = dataset[i]
        yield sample.image, sample.seg


def _options(args: argparse.Namespace, preset: OpenVocabPreset | None, templates: tuple[str, ...]) -> OpenVocabOptions:
    size, window, stride = args.resolution, args.window, args.stride
    if args.geometry == "paper":
        if preset is None:
            raise ValueError("--geometry paper needs a preset (a benchmark dataset or --preset)")
        size, window, stride = size or preset.short_side, window or preset.window, stride or preset.stride
    threshold = args.background_threshold
    if threshold is None and preset is not None:
        threshold = preset.background_threshold
    scale = args.logit_scale if args.logit_scale is not None else (preset.logit_scale if preset else None)
    background = preset.background_class if preset is not None and preset.background_class is not None else NONE_ID
    return OpenVocabOptions(mode=args.mode, size=size, window=window, stride=stride, templates=templates,
                            background_threshold=threshold or None, logit_scale=scale, background_id=background,
                            resize="torch" if args.fast_resize else "pil")


# ----------------------------------------------------------------------------- command
EXAMPLES = examples(
    "tips-probe zero-shot-seg --random-init tiny_p8 --data data/scenes/probe --resolution 64 -o results",
    "# the papers' benchmarks in their released layouts, one table (docs/open_vocabulary.md)",
    "tips-probe zero-shot-seg --model tips-v2-b14 --dataset ade20k:ADEChallengeData2016 "
    "--dataset voc21:VOCdevkit --dataset cityscapes:cityscapes -o results",
)


@dataclass
class ZeroShotSegOptions(common.GlobalTaskOptions):
    data: Optional[Path] = None  # a probe folder, or
    dataset: Optional[list[str]] = None  # benchmarks KIND:PATH (one table)
    split: str = "val"
    preset: Optional[str] = None  # default: the dataset's
    templates: str = "tcl"
    mode: Literal["whole", "slide"] = "slide"  # tips.inference.open_vocab.MODES
    geometry: Literal["notebook", "paper"] = "notebook"
    window: Optional[int] = None
    stride: Optional[int] = None
    background_threshold: Optional[float] = None
    logit_scale: Optional[float] = None
    fast_resize: bool = False
    max_images: Optional[int] = None


def build_parser() -> argparse.ArgumentParser:
    p = TaskParser(schema=ZeroShotSegOptions, prog="tips-probe zero-shot-seg",
                                description="Zero-shot segmentation mIoU with the official TIPS protocol (value readout "
                                            "of the last block, TCL prompts, whole or slide).",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="probe folder: ROOT/classes.json, ROOT/{split}/{key}.png + .seg.png")
    p.add_argument("--dataset", action="append", default=None, metavar="KIND:PATH",
                   help="a benchmark: voc21: | voc20: | context60: | context59: | coco-object: | coco-stuff: | "
                        "cityscapes: | ade20k: (repeat for one table)")
    p.add_argument("--split", default="val")
    p.add_argument("--preset", help=f"class list and background setting: {', '.join(preset_names())} "
                                    "(default: the dataset's)")
    p.add_argument("--templates", default="tcl", help="tcl (9, default), openai, simple, or a file of templates")
    p.add_argument("--mode", choices=MODES, default="slide", help="slide (the notebook's default) or whole")
    p.add_argument("--geometry", choices=("notebook", "paper"), default="notebook",
                   help="notebook: short side = model's native size, window = it, stride 3/4; paper: the preset's")
    p.add_argument("--window", type=int, help="slide window (default: the short side)")
    p.add_argument("--stride", type=int, default=None, help="slide stride (default 3/4 of the window)")
    p.add_argument("--background-threshold", type=float, metavar="T",
                   help="override the preset's threshold (0 = none)")
    p.add_argument("--logit-scale", type=float, help="override the preset's logit scale")
    p.add_argument("--fast-resize", action="store_true", help="torch resize instead of PIL (not the protocol)")
    p.add_argument("--max-images", type=int, help="evaluate the first N images of each dataset")
    common.add_global_task_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_task_args(build_parser(), argv)
    if bool(args.data) == bool(args.dataset):
        build_parser().error("give --data (a probe folder) or one or more --dataset KIND:PATH")
    templates = get_templates(args.templates)
    model, checkpoint = common.load_model(args)
    runs, rows = [], []
    for spec in ([str(args.data)] if args.data else args.dataset):
        run = _evaluate_one(model, args, spec, templates)
        runs.append(run)
        m, s = run["metrics"], run["settings"]
        rows.append([run["dataset"], run["preset"] or "–", args.mode, s["size"], s["window"], s["stride"],
                     s["background_threshold"], m["num_images"], m["mIoU"], m["pixel_accuracy"]]
                    + ([m.get("mIoU_objects")] if args.data else []))
    protocol = common.base_protocol("zero-shot-seg", args, checkpoint, args.resolution)
    protocol.update({"split": args.split, "templates": args.templates, "mode": args.mode, "geometry": args.geometry,
                     "readout": "value embedding, last block", "preprocess": "fast (torch)" if args.fast_resize
                     else "notebook (PIL bicubic, long side rounded down)"})
    header = ["dataset", "preset", "mode", "size", "window", "stride", "bg threshold", "images", "mIoU", "pixel acc"]
    table = common.markdown_table(header + (["mIoU objects"] if args.data else []), rows)
    common.write_results(args.out, "zero-shot-seg", {"protocol": protocol, "runs": runs}, table)
    return 0


def _evaluate_one(model: nn.Module, args: argparse.Namespace, spec: str, templates: tuple[str, ...]) -> dict[str, Any]:
    subsets, object_names = None, None
    if args.data:
        data = read_seg_folder(args.data, args.split)
        preset = load_preset(args.preset) if args.preset else None
        classes = list(preset.synonyms) if preset else data.class_names
        objects = [c for c, is_obj in enumerate(data.is_object) if is_obj]
        if 0 < len(objects) < len(data.class_names):
            subsets, object_names = {"objects": objects}, [data.class_names[c] for c in objects]
        samples, ignore, name, names = _probe_folder_samples(data.samples), data.ignore_index, data.root.name, data.class_names
        if args.max_images:
            samples = (s for _, s in zip(range(args.max_images), samples))
    else:
        kind = parse_spec(spec)[0]
        if not (args.preset or kind in KIND_PRESETS):
            raise ValueError(f"--dataset {spec}: no preset for {kind!r}; give --preset ({', '.join(preset_names())})")
        preset = load_preset(args.preset or KIND_PRESETS[kind])
        dataset = open_dataset(spec, args.split)
        classes, names = list(preset.synonyms), dataset.info.class_names
        if len(names) != len(classes):
            raise ValueError(f"--dataset {spec}: {len(names)} dataset classes but preset {preset.name} has {len(classes)}")
        samples, ignore, name = _dataset_samples(dataset, args.max_images), dataset.info.ignore_index, kind
    options = _options(args, preset, templates)
    metrics = evaluate_zero_shot_seg(model, samples, classes, options, ignore, subsets, not args.no_progress, names)
    size, window, stride = options.geometry(model)
    return {"dataset": name, "source": spec, "preset": preset.name if preset else None,
            "follows": preset.follows if preset else None, "object_classes": object_names,
            "settings": {"size": size, "window": window if args.mode == "slide" else None,
                         "stride": stride if args.mode == "slide" else None,
                         "background_threshold": options.background_threshold, "logit_scale": options.logit_scale,
                         "background_id": options.background_id if options.background_threshold else None},
            "metrics": metrics}


if __name__ == "__main__":
    raise SystemExit(main())
