"""Dense predictions with a DPT head: ``tips.predict(model, head, images)`` and the ``tips-predict`` command.

    tips-predict depth IMAGES... --model tips-v2-b14 --head tips-v2-b14-depth -o OUT
    tips-predict normals photos/ --random-init tiny --random-head -o OUT     # offline demo, random weights

``--model`` / ``--random-init`` / ``--tokenizer`` / ``--dtype`` / ``--quantize`` mean what they mean in
``tips-extract`` and ``tips-probe`` (:mod:`tips.cli_args`).

Image sources and bad-file handling are ``tips-extract``'s (named, counted, skipped; the run completes). Images are
resized to the model's native square (or, with ``--keep-aspect``, the shorter side to the resolution and the other
rounded to the patch size). Output folder, per image ``ID`` (its path relative to the source):

- ``ID.<task>.png``: a picture (depth in turbo with a metre colour bar; normals as RGB; classes in a palette with
  the top classes named, ADE20K names for 150 classes);
- raw: ``ID.depth16.png`` (16-bit depth in millimetres, clipped to 65.535 m); ``ID.normals.safetensors``
  (``normals`` (3, H, W) float32); ``ID.segmentation.safetensors`` (``argmax`` (H, W) int16, ``logits`` (C, H, W)
  float16 unless ``--no-logits``);
- ``contact_sheet.png`` (the first ``--sheet`` pictures) and ``skipped.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from . import dense_pictures as pics
from .allocator import tune_cpu_allocator
from .atomic import atomic_file, atomic_path, write_text_atomic
from .cli_args import LoadedModel, add_model_args, add_output_arg, build_model, model_from_args, resolve_device
from .features import NoReadableImages, check_resolution, run_batches
from .formats.heads import load_head
from .image_sources import DEFAULT_MAX_PIXELS, Decoded, ImageDataset, collate_decoded, find_images
from .models.dpt import DenseHead, build_head
from .models.tips import TIPS
from .precision import autocast, prepare_for_inference, print_bf16_hint
from .transforms import Preprocess

TASKS = ("depth", "normals", "segmentation")


def predict(
    model: TIPS, head: DenseHead, images: torch.Tensor | Image.Image | Sequence[Image.Image],
    resolution: int | None = None, keep_aspect: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """Dense predictions of ``head`` on ``model``'s features.

    images: a tensor (B, 3, H, W) in [0, 1] with H, W multiples of the patch size (used as is), or PIL images,
        resized to ``resolution`` (default: the model's native square; with ``keep_aspect`` the shorter side).
    Returns the task output at the (resized) image size: logits (B, C, H, W), depth in metres (B, 1, H, W) or
    unit normals (B, 3, H, W); a list of (1, ·, H_i, W_i) when keep-aspect PIL images differ in size.
    """
    if isinstance(images, torch.Tensor):
        return head.predict(model, images if images.ndim == 4 else images[None])
    images = [images] if isinstance(images, Image.Image) else list(images)
    pre = Preprocess(resolution or model.image_size, model.patch_size, keep_aspect)
    xs = [pre(im) for im in images]
    if len({tuple(x.shape) for x in xs}) == 1:
        return head.predict(model, torch.stack(xs))
    return [head.predict(model, x[None]) for x in xs]


@dataclass
class PredictResult:
    ids: list[str]
    skipped: list[tuple[str, str]]
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{len(self.ids)} images predicted, {len(self.skipped)} skipped ({self.seconds:.1f} s)"]
        lines += [f"  skipped {i}: {r}" for i, r in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  … and {len(self.skipped) - 20} more skipped (all listed in skipped.json)")
        lines += [f"  wrote {p}" for p in self.files if p.name in ("contact_sheet.png", "skipped.json")]
        lines.append(f"  wrote {len(self.files) - 2} picture and raw files")
        return "\n".join(lines)


def output_stem(out_dir: Path, image_id: str) -> Path:
    """Where an image's outputs go: its id as a relative path under ``out_dir`` (no '..', no root)."""
    parts = [p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("/", "..", ".")]
    stem = out_dir.joinpath(*parts) if parts else out_dir / "image"
    stem.parent.mkdir(parents=True, exist_ok=True)
    return stem


class PredictionWriter:
    """Per batch: predict, then write each image's picture and raw output; keeps pictures for the contact sheet."""

    def __init__(self, model: TIPS, head: DenseHead, out_dir: Path, logits: bool, sheet: int,
                 dtype: str | torch.dtype = "float32") -> None:
        self.model, self.head, self.out_dir, self.logits, self.sheet = model, head, out_dir, logits, sheet
        self.dtype = dtype
        self.names = pics.class_names(head.cfg.out_channels) if head.task == "segmentation" else []
        self.device = next(model.parameters()).device
        self.ids: list[str] = []
        self.files: list[Path] = []
        self.pictures: list[tuple[str, Image.Image]] = []

    def __call__(self, items: list[Decoded]) -> None:
        x = torch.stack([it.image for it in items]).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.head.predict(self.model, x).float().cpu()
        for item, pred in zip(items, out):
            self._write(item.id, item.image, pred)

    def _write(self, image_id: str, image: torch.Tensor, pred: torch.Tensor) -> None:
        stem = output_stem(self.out_dir, image_id)
        task = self.head.task
        if task == "depth":
            picture = pics.depth_picture(image, pred[0])
            mm = (pred[0].clamp(0, 65.535) * 1000).round().numpy().astype(np.uint16)
            raw = stem.with_name(stem.name + ".depth16.png")
            with atomic_file(raw) as f:
                Image.fromarray(mm).save(f, format="PNG")
        elif task == "normals":
            picture = pics.normals_picture(image, pred)
            raw = self._save(stem.with_name(stem.name + ".normals.safetensors"), {"normals": pred})
        else:
            labels = pred.argmax(0)
            picture = pics.segmentation_picture(image, labels, self.names)
            tensors = {"argmax": labels.to(torch.int16)}
            if self.logits:
                tensors["logits"] = pred.half()
            raw = self._save(stem.with_name(stem.name + ".segmentation.safetensors"), tensors)
        path = stem.with_name(f"{stem.name}.{task}.png")
        with atomic_file(path) as f:
            picture.save(f, format="PNG")
        self.ids.append(image_id)
        self.files += [path, raw]
        if len(self.pictures) < self.sheet:
            self.pictures.append((image_id, picture))

    def _save(self, path: Path, tensors: dict[str, torch.Tensor]) -> Path:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"task": self.head.task})
        return path


def run(
    task: str, source, output, model: TIPS | LoadedModel | str | os.PathLike | None = None, head=None, *,
    random_init: str | None = None, random_head: bool = False, seed: int = 0, resolution: int | None = None,
    keep_aspect: bool = False, batch_size: int = 8, num_workers: int = 0, device=None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, logits: bool = True, sheet: int = 16, progress: bool = True,
    dtype: str | torch.dtype = "float32", quantize: str | None = None,
) -> PredictResult:
    """``tips-predict``: every readable image of ``source`` through ``model`` and ``head`` into ``output``.

    model: as in :func:`tips.extract`; dtype: autocast of backbone and head; quantize: ``"int8"`` linear layers of
    the backbone (:func:`tips.quantize`, in place on a given model).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    refs = find_images(source)
    if not refs:
        raise ValueError(f"no images found in {source}")
    net = (model if isinstance(model, LoadedModel) else build_model(model, random_init, seed=seed)).model
    dense = _resolve_head(head, random_head, task, net, seed)
    resolution = resolution or net.image_size
    check_resolution(resolution, net.patch_size)
    dev = resolve_device(device)
    prepare_for_inference(net, dev, quantize)
    dense.to(dev)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = PredictionWriter(net, dense, out_dir, logits, sheet, dtype)
    dataset = ImageDataset(refs, Preprocess(resolution, net.patch_size, keep_aspect), max_pixels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate_decoded)
    start = time.perf_counter()
    skipped = run_batches(loader, len(refs), batch_size, writer, progress)
    result = PredictResult(writer.ids, skipped, writer.files, time.perf_counter() - start)
    skipped_path = out_dir / "skipped.json"
    write_text_atomic(skipped_path, json.dumps([{"id": i, "reason": r} for i, r in skipped], indent=1))
    if not writer.ids:
        raise NoReadableImages(f"no readable images: all {len(refs)} skipped (reasons in {skipped_path})")
    ids, pictures = zip(*writer.pictures)
    sheet_path = out_dir / "contact_sheet.png"
    with atomic_file(sheet_path) as f:
        pics.contact_sheet(pictures, ids).save(f, format="PNG")
    result.files += [sheet_path, skipped_path]
    return result


def _resolve_head(head, random_head: bool, task: str, net: TIPS, seed: int) -> DenseHead:
    if (head is None) == (not random_head):
        raise ValueError("give exactly one of --head (a head file, folder or official name) and --random-head")
    if random_head:
        torch.manual_seed(seed)
        dense = build_head(task, net.width).eval()
    else:
        dense = head if isinstance(head, DenseHead) else load_head(head)
    if dense.task != task:
        raise ValueError(f"tips-predict {task}: the head {head} is a {dense.task} head")
    return dense


EXAMPLES = """\
examples:
  # offline, random weights (shows the outputs, not real depth): demo images, then depth pictures in out/depth
  tips-extract --demo -o out/demo
  tips-predict depth out/demo/images --random-init tiny --random-head -o out/depth
  # official model and head (downloaded once into the cache)
  tips-predict segmentation photos/ --model tips-v2-b14 --head tips-v2-b14-segmentation -o out/segmentation
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tips-predict", description="Dense predictions (depth, normals, segmentation) "
                                "with a DPT head on any image source.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=TASKS)
    p.add_argument("source", nargs="+", help="images: folders, globs, list files, image files, webdataset shards")
    add_output_arg(p, "output folder (per image a picture and the raw prediction, contact_sheet.png)",
                   required=True, aliases=("--output",))
    m = p.add_argument_group("model and head")
    add_model_args(m, seed_help="seed of --random-init and --random-head (default 0)")
    m.add_argument("--head", help="DPT head: Scenic zip, flat .npz, our folder, or official name (tips-v2-b14-depth)")
    m.add_argument("--random-head", action="store_true", help="randomly initialised official-preset head (demo)")
    r = p.add_argument_group("input")
    r.add_argument("--resolution", type=int, help="square side, or shorter side with --keep-aspect (default: model's)")
    r.add_argument("--keep-aspect", action="store_true", help="keep the aspect ratio (sides rounded to the patch)")
    r.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images (0 = no limit)")
    o = p.add_argument_group("output and run")
    o.add_argument("--no-logits", action="store_true", help="segmentation: store the argmax only")
    o.add_argument("--sheet", type=int, default=16, help="pictures on the contact sheet")
    o.add_argument("--batch-size", type=int, default=8)
    o.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    o.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    o.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``tips-predict``; returns 0 on success, 1 with a message on stderr on failure."""
    tune_cpu_allocator()
    args = build_parser().parse_args(argv)
    try:
        result = run(
            args.task, args.source, args.out, model_from_args(args), args.head, random_head=args.random_head,
            seed=args.seed, resolution=args.resolution, keep_aspect=args.keep_aspect, batch_size=args.batch_size,
            num_workers=args.num_workers, device=args.device, max_pixels=args.max_pixels, logits=not args.no_logits,
            sheet=args.sheet, progress=not args.no_progress, dtype=args.dtype, quantize=args.quantize,
        )
    except (ValueError, KeyError, FileNotFoundError, NoReadableImages) as e:
        print(f"tips-predict: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    print(result.summary())
    print_bf16_hint("tips-predict", resolve_device(args.device), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
