"""Zero-shot segmentation from patch–text similarity with the MaskCLIP / TIPS value-embedding readout.

In the last block the attention output is replaced by each token's own projected value vector (no mixing
between tokens), then that block's MLP and the final LayerNorm run as usual. The resulting patch features,
L2-normalised, are compared by cosine with class text embeddings (mean of the 9 TCL templates).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

import tips
from tips.io import decode_image
from tips.models import to_rgb

from . import common
from .options import examples, parse_task_args
from .global_data import read_seg_folder
from .templates import TCL_TEMPLATES, get_templates


def value_readout(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] → value-readout patch features (B, h, w, D), after the final LN, not normalised."""
    vit = model.vision
    x = vit.blocks[:-1](vit.embed(images))  # (B, 2 + N, D) input of the last block
    blk = vit.blocks[-1]
    attn = blk.attn
    h = blk.norm1(x)
    dim = getattr(attn, "attn_dim", x.shape[-1])
    v = attn.qkv(h)[..., 2 * dim: 3 * dim]  # (B, 2 + N, D): per-token values, heads side by side
    v = attn.norm(v)
    if getattr(attn, "gate", None) is not None:
        v = v * attn.gate(h).sigmoid()
    x = x + blk.ls1(attn.proj(v))
    x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    tokens = vit.norm(x)[:, 2:]  # drop CLS1, CLS2
    p = vit.patch_size
    return tokens.reshape(images.shape[0], images.shape[-2] // p, images.shape[-1] // p, -1)


def text_classes(model: nn.Module, class_names: Sequence[str], templates: Sequence[str] = TCL_TEMPLATES,
                 progress: bool = False) -> torch.Tensor:
    """(C, D) normalised class embeddings: mean over templates of normalised prompt embeddings, re-normalised."""
    return common.class_embeddings(model, class_names, templates, progress=progress)


@torch.no_grad()
def zero_shot_segment(model: nn.Module, images: torch.Tensor, class_names: Sequence[str] | None = None,
                      templates: Sequence[str] = TCL_TEMPLATES, text_embeddings: torch.Tensor | None = None,
                      output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """images (B, 3, H, W) → cosine scores (B, C, H', W') bilinearly upsampled to ``output_size`` (default (H, W)).

    Pass ``text_embeddings`` (C, D) normalised to skip encoding ``class_names`` again.
    """
    if text_embeddings is None:
        if class_names is None:
            raise ValueError("zero_shot_segment needs class_names or text_embeddings")
        text_embeddings = text_classes(model, class_names, templates)
    feats = tips.l2_normalize(value_readout(model, images).float())  # (B, h, w, D)
    scores = torch.einsum("bhwd,cd->bchw", feats, text_embeddings.to(feats.device, feats.dtype))
    size = output_size or tuple(images.shape[-2:])
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def sliding_zero_shot_segment(model: nn.Module, image: torch.Tensor, text_embeddings: torch.Tensor,
                              window: int = 448, stride: int = 336) -> torch.Tensor:
    """The official notebook's protocol: image (3, H, W), both ≥ window → (C, H, W) class probabilities,
    a softmax over classes (no temperature) per window, averaged where windows overlap."""
    _, H, W = image.shape
    C = text_embeddings.shape[0]
    probs = torch.zeros(C, H, W, device=image.device)
    count = torch.zeros(1, H, W, device=image.device)
    for y in _starts(H, window, stride):
        for x in _starts(W, window, stride):
            crop = image[None, :, y:y + window, x:x + window]
            probs[:, y:y + window, x:x + window] += zero_shot_segment(model, crop, text_embeddings=text_embeddings)[0].softmax(0)
            count[:, y:y + window, x:x + window] += 1
    return probs / count


def _starts(size: int, window: int, stride: int) -> list[int]:
    if size < window:
        raise ValueError(f"image side {size} is smaller than the window {window}")
    n = (size - window + stride - 1) // stride + 1
    return [min(i * stride, size - window) for i in range(n)]


# ----------------------------------------------------------------------------- metrics
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """pred, target (...) class ids → (C, C) counts, rows = target, columns = prediction; ignored pixels left out."""
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_metrics(confusion: torch.Tensor, class_names: Sequence[str], subsets: dict[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """mIoU (%) over classes with a non-zero union (the notebook's rule), per-class IoU, pixel accuracy; plus the
    mIoU of each named subset of class ids (e.g. objects without ground and sky). None where no class counts."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
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


def evaluate_zero_shot_seg(model: nn.Module, samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
                           class_names: Sequence[str], ignore_index: int = 255, templates: Sequence[str] = TCL_TEMPLATES,
                           resolution: int | None = None, mode: str = "resize", stride: int | None = None,
                           subsets: dict[str, Sequence[int]] | None = None, progress: bool = True) -> dict[str, Any]:
    """samples: (image (3, H, W) in [0, 1], seg (H, W) class ids). mode "resize": square resize to ``resolution``,
    scores upsampled to the label size; "slide": short side to ``resolution``, windows of that size, stride
    ``stride`` (default 3/4 of it), per-window softmax averaged (the official notebook)."""
    device = common.model_device(model)
    res = resolution or model.preprocess.size
    text = text_classes(model, class_names, templates).to(device)
    C = len(class_names)
    conf = torch.zeros(C, C, dtype=torch.long)
    for image, seg in tqdm(samples, desc="zero-shot seg", disable=not progress, leave=False):
        x = image.to(device)[None].float()
        if mode == "resize":
            x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
            scores = zero_shot_segment(model, x, text_embeddings=text, output_size=tuple(seg.shape))[0]
        elif mode == "slide":
            H, W = x.shape[-2:]
            scale = res / min(H, W)
            size = (max(res, round(H * scale)), max(res, round(W * scale)))
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
            probs = sliding_zero_shot_segment(model, x[0], text, res, stride or res * 3 // 4)
            scores = F.interpolate(probs[None], size=tuple(seg.shape), mode="bilinear", align_corners=False)[0]
        else:
            raise ValueError(f"mode must be 'resize' or 'slide', got {mode!r}")
        conf += confusion_matrix(scores.argmax(0).cpu(), seg, C, ignore_index)
    metrics = iou_metrics(conf, class_names, subsets)
    metrics["resolution"] = res
    return metrics


# ----------------------------------------------------------------------------- command
def _load_sample(image: Path, seg: Path) -> tuple[torch.Tensor, torch.Tensor]:
    rgb = np.array(to_rgb(decode_image(image.read_bytes(), max_pixels=None), in_place=True))  # (H, W, 3) uint8
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    with Image.open(seg) as s:
        y = torch.from_numpy(np.asarray(s, dtype=np.uint8).astype(np.int64))
    return x, y


EXAMPLES = examples(
    "tips-probe zero-shot-seg --random-init tiny_p8 --data data/scenes/probe --resolution 64 -o results",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tips-probe zero-shot-seg", description="Zero-shot segmentation with the value-embedding readout of the last block (mIoU on a probe split).",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="probe folder: ROOT/classes.json, ROOT/{split}/{key}.png + .seg.png")
    p.add_argument("--split", default="val")
    p.add_argument("--templates", default="tcl", help="tcl (9, default), openai, simple, or a file of templates")
    p.add_argument("--mode", choices=("resize", "slide"), default="resize")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default 3/4 of the resolution)")
    common.add_global_task_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_task_args(build_parser(), argv)
    data = read_seg_folder(args.data, args.split)
    templates = get_templates(args.templates)
    model, checkpoint = common.load_model(args)
    objects = [c for c, is_obj in enumerate(data.is_object) if is_obj]
    subsets = {"objects": objects} if 0 < len(objects) < len(data.class_names) else None
    metrics = evaluate_zero_shot_seg(model, (_load_sample(i, s) for i, s in data.samples), data.class_names,
                                     data.ignore_index, templates, args.resolution, args.mode, args.stride,
                                     subsets, not args.no_progress)
    protocol = common.base_protocol("zero-shot-seg", args, checkpoint, metrics.pop("resolution"))
    protocol.update({"dataset": str(args.data.resolve()), "split": args.split, "templates": args.templates,
                     "mode": args.mode, "readout": "value embedding, last block",
                     "stride": (args.stride or protocol["resolution"] * 3 // 4) if args.mode == "slide" else None,
                     "ignore_index": data.ignore_index, "num_images": len(data.samples),
                     "object_classes": [data.class_names[c] for c in objects] if subsets else None})
    header = ["dataset", "split", "mode", "resolution", "mIoU", "pixel acc"] + (["mIoU objects"] if subsets else [])
    row = [data.root.name, args.split, args.mode, protocol["resolution"], metrics["mIoU"], metrics["pixel_accuracy"]]
    table = common.markdown_table(header, [row + ([metrics["mIoU_objects"]] if subsets else [])])
    common.write_results(args.out, "zero-shot-seg", {"protocol": protocol, "metrics": metrics}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
