"""Dense predictions with a DPT head: ``tips.predict(model, head, images)`` in memory, and
``write_predictions(sources, output, model, PredictOptions(...))``, which the ``tips-predict`` command runs.

    tips-predict depth IMAGES... --model tips-v2-b14 --head tips-v2-b14-depth -o OUT
    tips-predict normals photos/ --random-init tiny --random-head -o OUT     # offline demo, random weights

``--model`` / ``--random-init`` / ``--tokenizer`` / ``--dtype`` / ``--quantize`` mean what they mean in
``tips-extract`` and ``tips-probe`` (:mod:`tips.cli.model_args`).

Image sources and bad-file handling are ``tips-extract``'s (named, counted, skipped; the run completes). Images are
resized to the model's native square (or, with ``--keep-aspect``, the shorter side to the resolution and the other
rounded to the patch size). Output folder, per image ``ID`` (its path relative to the source):

- ``ID.<task>.png``: a picture at the photo's aspect (:mod:`tips.inference.pictures`: depth with a metre colour
  bar, bright = near; normals as RGB with a sphere key; classes in a palette with every drawn colour named, ADE20K
  names for 150 classes), with a red "random weights" banner when the head or the model is random;
- raw: ``ID.depth16.png`` (16-bit depth in millimetres, clipped to 65.535 m); ``ID.normals.safetensors``
  (``normals`` (3, H, W) float32); ``ID.segmentation.safetensors`` (``argmax`` (H, W) int16, ``logits`` (C, H, W)
  float16 unless ``--no-logits``);
- ``contact_sheet.png`` (the first ``--sheet`` pictures) and ``skipped.json``.

``--tile SIZE --overlap FRACTION`` runs the head on overlapping tiles of SIZE pixels and blends their outputs
(:mod:`tips.inference.tiling`); without ``--resolution`` the photo keeps its own size (sides rounded to the patch).
``--upsample jbu`` resizes the head's output to the image with the joint bilateral upsampler guided by the image
(:mod:`tips.inference.upsample`) instead of bilinearly. Either way the map is upsampled in strips, so a segmentation
holds its (C, H, W) float16 logits and about one tile row of the head's output, not a float32 (C, H, W) map.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from ..formats.heads import load_head
from ..io.atomic import atomic_file, atomic_path, write_text_atomic
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.sources import find_images
from ..models.dpt import DenseHead, build_head
from ..models.preprocess import Preprocess
from ..models.tips import TIPS
from . import pictures as pics
from .extract import NoReadableImages, check_resolution, run_batches
from .images import Decoded, ImageDataset, collate_decoded
from .loaded import LoadedModel, as_loaded, resolve_device
from .precision import prepare_for_inference
from .tiling import RoundToPatch, TilePlan, Tiling, blend_rows, plan_tiles, upsample_bands
from .upsample import Upsampler

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


FUSED_CELLS = {"tips": 8, "probe3d": 16}  # cells of a head's fused output map per patch


@torch.inference_mode()
def predict_dense(model: TIPS, head: DenseHead, image: torch.Tensor, tiling: Tiling | None = None,
                  upsample: Upsampler = Upsampler("bilinear"), batch: int = 8,
                  dtype: torch.dtype = torch.float32, argmax: bool = False,
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """image (3, H, W) in [0, 1], H, W multiples of the patch → the task output (K, H, W) on the CPU in ``dtype``;
    with ``argmax`` also the (H, W) int16 argmax over K, taken on each float32 strip.

    tiling: overlapping tiles blended on the head's fused map (None: the whole image at once); the fused map is
    resized to (H, W) by ``upsample`` in strips (guided by ``image`` for ``jbu``), then normals are normalised.
    One tile covering the image gives :meth:`DenseHead.predict`'s output (up to float rounding of the resize).
    """
    vision = getattr(model, "vision", model)
    p = vision.cfg.patch_size
    _, H, W = image.shape
    grid = (H // p, W // p)
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    plan = plan_tiles(grid, tiling, p) if tiling is not None else TilePlan(grid, (0,), (0,), grid, 0)
    param = next(vision.parameters())
    image = image.to(param.device)
    th, tw = plan.tile

    scale = FUSED_CELLS[head.cfg.preset]

    def run(boxes: list[tuple[int, int]], exact: bool = False) -> torch.Tensor:  # (n, K, th·s, tw·s)
        crops = torch.stack([image[:, y * p:(y + th) * p, x * p:(x + tw) * p] for y, x in boxes])
        out = head.task_map(head.decode(head.features(model, crops.to(param.dtype))))
        if not exact and tuple(out.shape[-2:]) != (th * scale, tw * scale):  # an odd patch grid decodes larger
            out = F.interpolate(out.float(), size=(th * scale, tw * scale), mode="bilinear", align_corners=False)
        return out

    if plan.count == 1:  # the whole image: the decoder's own output grid, as DenseHead.predict resizes it
        low = run([(0, 0)], exact=True)[0].float()
        bands, low_size = [(0, low)], tuple(low.shape[-2:])
    else:
        bands, low_size = blend_rows(plan, run, scale, batch), (grid[0] * scale, grid[1] * scale)
    out: torch.Tensor | None = None
    labels = torch.empty(H, W, dtype=torch.int16) if argmax else None
    for lo, strip in upsample_bands(bands, low_size, (H, W), upsample, image.float()):
        strip = head.finish(strip[None])[0]
        if out is None:
            out = torch.empty(strip.shape[0], H, W, dtype=dtype)
        out[:, lo:lo + strip.shape[1]] = strip.to("cpu", dtype)
        if labels is not None:
            labels[lo:lo + strip.shape[1]] = strip.argmax(0).to("cpu", torch.int16)
    return (out, labels) if argmax else out


@dataclass
class PredictResult:
    """What a dense-prediction job wrote; :meth:`summary` is the text the command prints."""

    ids: list[str]
    skipped: list[tuple[str, str]]
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    verb: ClassVar[str] = "predicted"
    named_files: ClassVar[tuple[str, ...]] = ("contact_sheet.png", "skipped.json")  # listed by name

    def summary(self) -> str:
        lines = [f"{len(self.ids)} images {self.verb}, {len(self.skipped)} skipped ({self.seconds:.1f} s)"]
        lines += [f"  skipped {i}: {r}" for i, r in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  … and {len(self.skipped) - 20} more skipped (all listed in skipped.json)")
        lines += [f"  wrote {p}" for p in self.files if p.name in self.named_files]
        lines.append(self.written())
        return "\n".join(lines)

    def written(self) -> str:
        return f"  wrote {len(self.files) - 2} picture and raw files"


def _display_inputs(image: torch.Tensor, labels: torch.Tensor, photo_size) -> tuple[torch.Tensor, torch.Tensor]:
    """A large image (3, H, W) and its labels (H, W) shrunk to the picture's size first (antialiased, nearest), so
    drawing the picture of a tiled 4096² prediction copies no full-size map."""
    size = pics.display_size(photo_size or tuple(image.shape[-2:]))
    if image.shape[-2] * image.shape[-1] <= 4 * size[0] * size[1]:
        return image, labels
    small = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    small_labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(labels.dtype)
    return small, small_labels


def output_stem(out_dir: Path, image_id: str) -> Path:
    """Where an image's outputs go: its id as a relative path under ``out_dir`` (no '..', no root)."""
    parts = [p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("/", "..", ".")]
    stem = out_dir.joinpath(*parts) if parts else out_dir / "image"
    stem.parent.mkdir(parents=True, exist_ok=True)
    return stem


class PredictionWriter:
    """Per batch: predict, then write each image's picture and raw output; keeps pictures for the contact sheet."""

    def __init__(self, model: TIPS, head: DenseHead, out_dir: Path, logits: bool, sheet: int,
                 dtype: str | torch.dtype = "float32", random: bool = False, tiling: Tiling | None = None,
                 upsample: str = "bilinear", batch: int = 8) -> None:
        self.model, self.head, self.out_dir, self.logits, self.sheet = model, head, out_dir, logits, sheet
        self.random = random  # a random head or model: every picture says so
        self.tiling, self.upsample, self.batch = tiling, Upsampler(upsample), batch
        self.model, self.dtype = model, dtype  # run_batches' job: model, dtype, encode, write
        self.names = pics.class_names(head.cfg.out_channels) if head.task == "segmentation" else []
        self.ids: list[str] = []
        self.files: list[Path] = []
        self.pictures: list[tuple[str, Image.Image]] = []

    def encode(self, model: TIPS, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """images (B, 3, H, W) → the head's output (B, K, H, W) float32 on the CPU; tiled or upsampled by ``jbu``,
        one (K, H, W) per image (segmentation logits in float16, what the file stores)."""
        if self.tiling is None and self.upsample.name == "bilinear":
            return self.head.predict(model, images).float().cpu()
        seg = self.head.task == "segmentation"  # logits in float16 beside an argmax taken in float32
        return [predict_dense(model, self.head, x, self.tiling, self.upsample, self.batch,
                              torch.float16 if seg else torch.float32, argmax=seg) for x in images]

    def write(self, out: torch.Tensor, items: list[Decoded]) -> None:
        for item, pred in zip(items, out):
            self._write(item.id, item.image, pred, item.photo_size)

    def _write(self, image_id: str, image: torch.Tensor, pred: torch.Tensor, photo_size=None) -> None:
        stem = output_stem(self.out_dir, image_id)
        task = self.head.task
        if task == "depth":
            picture = pics.depth_picture(image, pred[0], photo_size, self.random)
            mm = (pred[0].clamp(0, 65.535) * 1000).round().numpy().astype(np.uint16)
            raw = stem.with_name(stem.name + ".depth16.png")
            with atomic_file(raw) as f:
                Image.fromarray(mm).save(f, format="PNG")
        elif task == "normals":
            picture = pics.normals_picture(image, pred, photo_size, self.random)
            raw = self._save(stem.with_name(stem.name + ".normals.safetensors"), {"normals": pred})
        else:
            pred, labels = pred if isinstance(pred, tuple) else (pred, pred.argmax(0))
            small, small_labels = _display_inputs(image, labels, photo_size)
            picture = pics.segmentation_picture(small, small_labels, self.names, photo_size, self.random)
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


@dataclass(frozen=True)
class PredictOptions:
    """What :func:`write_predictions` predicts and how; ``tips-predict`` builds one from its flags.

    task: ``"depth"``, ``"normals"`` or ``"segmentation"``; head: a :class:`DenseHead` or anything
        :func:`tips.load_head` reads, or ``random_head`` (drawn from ``seed``) for a demo; exactly one of them.
    resolution / keep_aspect / max_pixels / batch_size / num_workers / device: as in :class:`ExtractOptions`.
    dtype: autocast of backbone and head; quantize: ``"int8"`` linear layers of the backbone (:func:`tips.quantize`,
        in place on a given model). logits: store segmentation logits beside the argmax; sheet: pictures on the
        contact sheet.
    """

    task: str
    head: DenseHead | str | os.PathLike | None = None
    random_head: bool = False
    seed: int = 0
    resolution: int | None = None
    keep_aspect: bool = False
    batch_size: int = 8
    num_workers: int = 0
    device: str | torch.device | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    dtype: str | torch.dtype = "float32"
    quantize: str | None = None
    logits: bool = True
    sheet: int = 16
    progress: bool = True
    head_name: str | None = None  # how errors name a head given as a DenseHead (e.g. the file it came from)
    tile: int | None = None
    overlap: float = 0.25
    upsample: str = "bilinear"


def write_predictions(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    model: TIPS | LoadedModel | str | os.PathLike,
    options: PredictOptions,
) -> PredictResult:
    """Every readable image of ``sources`` through ``model`` and the options' head into the folder ``output``.

    model: as in :func:`tips.extract`.
    """
    o = options
    if o.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {o.task!r}")
    refs = find_images(sources)
    if not refs:
        raise ValueError(f"no images found in {sources}")
    loaded = as_loaded(model)
    net = loaded.model
    dense = _resolve_head(o.head, o.random_head, o.task, net, o.seed, o.head_name)
    tiling = Tiling(o.tile, o.overlap) if o.tile is not None else None
    if tiling is not None:
        tiling.check(net.patch_size)
    Upsampler(o.upsample)  # a bad name before anything is read
    resolution = o.resolution or net.image_size
    check_resolution(resolution, net.patch_size)
    dev = resolve_device(o.device)
    prepare_for_inference(net, dev, o.quantize, o.dtype)
    dense.to(dev)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = PredictionWriter(net, dense, out_dir, o.logits, o.sheet, o.dtype,
                              random=o.random_head or "random_init" in loaded.record, tiling=tiling,
                              upsample=o.upsample, batch=o.batch_size)
    if tiling is not None and o.resolution is None:
        preprocess = RoundToPatch(net.patch_size)
    else:
        preprocess = Preprocess(resolution, net.patch_size, o.keep_aspect)
    dataset = ImageDataset(refs, preprocess, o.max_pixels)
    images = 1 if tiling is not None else o.batch_size  # tiled: batch_size counts tiles, one image at a time
    loader = torch.utils.data.DataLoader(dataset, batch_size=images, num_workers=o.num_workers,
                                         collate_fn=collate_decoded)
    start = time.perf_counter()
    skipped = run_batches(loader, len(refs), images, writer, o.progress)
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


def _resolve_head(head, random_head: bool, task: str, net: TIPS, seed: int, head_name: str | None = None) -> DenseHead:
    if (head is None) == (not random_head):
        raise ValueError("give exactly one of --head (a head file, folder or official name) and --random-head")
    if random_head:
        torch.manual_seed(seed)
        dense = build_head(task, net.width).eval()
    else:
        dense = head if isinstance(head, DenseHead) else load_head(head)
    name = f"the head {head_name or head}" if head_name or not isinstance(head, DenseHead) else "the head"
    if dense.task != task:
        raise ValueError(f"tips-predict {task}: {name} is a {dense.task} head")
    try:  # the head must read this tower: found now, before any image is decoded
        dense.check_fits(net)
    except ValueError as e:
        raise ValueError(f"tips-predict {task}: {name} does not fit the model: {e}; use a head trained on "
                         "this model's tower, or --random-head") from None
    return dense
