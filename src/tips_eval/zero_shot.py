"""Zero-shot classification over a class-per-folder image set or a scenes probe split's main objects
(``tips-probe zero-shot``; ``--data scenes:DIR/probe`` labels each image by its largest object class).

Per class, the text embedding is the mean of the L2-normalised embeddings of its prompts (default: the 80
OpenAI ImageNet templates), re-normalised; logits are cos(image CLS, class) / τ with the stored τ of that CLS.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import MISSING

import torch
from torch import nn

from . import common
from .options import TaskParser, examples, parse_task_args
from .global_data import ImageFolder, read_image_folder, read_scene_objects
from .templates import get_templates


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str],
                           ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """logits (N, C), targets (N,) → top-k accuracy, per-class top-1 accuracy (%) and confusion matrix.

    The confusion matrix has rows = true class, columns = argmax prediction; per-class accuracy uses the same
    tie rule as top-k (ties count against the target).
    """
    C = logits.shape[1]
    correct = common.rank_of_target(logits, targets) == 0
    confusion = torch.zeros(C, C, dtype=torch.long)
    confusion.index_put_((targets, logits.argmax(dim=1)), torch.ones_like(targets), accumulate=True)
    counts = torch.bincount(targets, minlength=C)
    hits = torch.bincount(targets[correct], minlength=C)
    per_class = {name: (100.0 * hits[c].item() / counts[c].item() if counts[c] else None)
                 for c, name in enumerate(class_names)}
    present = [v for v in per_class.values() if v is not None]
    return {
        **common.topk_accuracy(logits, targets, ks),
        "mean_per_class_top1": sum(present) / len(present),
        "num_images": int(targets.numel()),
        "num_classes": C,
        "per_class_top1": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def zero_shot_logits(model: nn.Module, image_feats: dict[str, torch.Tensor], class_names: Sequence[str],
                     templates: Sequence[str], cls: str = "alt", batch_size: int = 256,
                     progress: bool = True) -> torch.Tensor:
    """Raw CLS features {"alt", "syn"} (N, D) → logits (N, C) = cos(image, class embedding) / τ."""
    classes = common.class_embeddings(model, class_names, templates, batch_size, progress)
    return common.select_cls(image_feats, cls) @ classes.T / common.temperature_for(model, cls)


def evaluate_zero_shot(model: nn.Module, data: ImageFolder, templates: Sequence[str], cls: str = "alt",
                       resolution: int | None = None, batch_size: int = 64, workers: int = 0,
                       progress: bool = True) -> dict[str, Any]:
    """Encode the image folder and score it against its class names."""
    transform = common.image_transform(model, resolution)
    feats, labels = common.encode_images(model, data.dataset(transform), batch_size, workers, progress)
    logits = zero_shot_logits(model, feats, data.class_names, templates, cls, progress=progress)
    metrics = classification_metrics(logits, labels, data.class_names)
    metrics["resolution"] = common.transform_size(transform)
    return metrics


EXAMPLES = examples(
    "tips-probe zero-shot --random-init tiny_p8 --data scenes:data/scenes/probe --resolution 64 "
    "--templates simple -o results",
)


@dataclass
class ZeroShotOptions(common.GlobalTaskOptions):
    data: str = MISSING  # ROOT of class folders, or scenes:DIR
    split: str = "val"
    classes: Optional[Path] = None
    templates: str = "openai"  # openai | simple | tcl | a file of templates


def build_parser() -> argparse.ArgumentParser:
    p = TaskParser(schema=ZeroShotOptions, prog="tips-probe zero-shot", description="Zero-shot classification of a class-per-folder image set with prompt templates.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data",
                   help="(required) ROOT/<class_folder>/<images>, or scenes:DIR (a probe split folder with classes.json): each "
                        "image labelled by the object class covering most of its segmentation map")
    p.add_argument("--split", default="val", help="split of a scenes:DIR probe folder (default val)")
    p.add_argument("--classes", type=Path, default=None,
                   help="class-name mapping (.json or .txt); default ROOT/classes.json|txt, else folder names")
    p.add_argument("--templates", default="openai", help="openai (80, default), simple, tcl, or a file of templates")
    common.add_global_task_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_task_args(build_parser(), argv)
    templates = get_templates(args.templates)
    if args.data.startswith("scenes:"):
        if args.classes:
            raise SystemExit("tips-probe zero-shot: --classes does not apply to scenes:DIR (names come from its classes.json)")
        data = read_scene_objects(args.data[len("scenes:"):], args.split)
    else:
        data = read_image_folder(args.data, args.classes)
    model, checkpoint = common.load_model(args)
    with common.precision(model, args):
        metrics = evaluate_zero_shot(model, data, templates, args.cls, args.resolution, args.batch_size,
                                     args.num_workers, not args.no_progress)
    protocol = common.base_protocol("zero-shot", args, checkpoint, metrics.pop("resolution"))
    protocol.update({
        "dataset": str(data.root.resolve()),
        "split": data.root.name,
        "labels": "main object (largest object class in the segmentation map)" if args.data.startswith("scenes:")
                  else "class folder",
        "classes_file": str(args.classes) if args.classes else None,
        "templates": args.templates,
        "num_templates": len(templates),
        "temperature": common.temperature_for(model, args.cls),
    })
    table = common.markdown_table(
        ["dataset", "cls", "resolution", "templates", "images", "classes", "top-1", "top-5", "mean per-class"],
        [[data.root.name, args.cls, protocol["resolution"], args.templates, metrics["num_images"],
          metrics["num_classes"], metrics["top1"], metrics["top5"], metrics["mean_per_class_top1"]]],
    )
    common.write_results(args.out, "zero-shot", {"protocol": protocol, "metrics": metrics}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
