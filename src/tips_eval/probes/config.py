"""Typed probe configuration: protocol presets, then a YAML file, then dotted ``key=value`` overrides.

Protocols (named in every result):
- ``fast``: cached frozen features, no augmentation, AdamW, a couple of thousand iterations (the only protocol of
  the surface-normal probe).
- ``dinov2``: features recomputed from augmented crops every step with DINOv2's crop, iteration count and
  schedule (segmentation: crop 512, 40k it, batch 16, 1.5k warm-up, poly, lr 1e-3, wd 1e-4, slide 512/341;
  depth: random crop 416x544 + flip, 38.4k it, lr 1e-4, wd 0.01, 12.8k warm-up, cosine, clip 35, flip TTA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf

from ..options import merge_options

TASKS = ("segmentation", "depth", "normals")
PROTOCOLS = ("fast", "dinov2")


@dataclass
class FeatureSection:
    resolution: str = "448"  # "N" (square) or "HxW"; rounded to multiples of the patch size
    layers: str = "last"  # last | last4 | quarters (DINOv2 lin.4 blocks) | "2,5,8,11"
    norm: bool = True  # final LayerNorm on every extracted block
    cls: bool = False  # concatenate CLS1 to every patch token
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype of the image tower (autocast)


@dataclass
class OptimSection:
    iterations: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    schedule: Literal["poly", "cosine"] = "poly"  # poly (power 1)
    grad_clip: float = 0.0  # 0 = off


@dataclass
class AugmentSection:
    """Only the dinov2 protocol augments (the fast one trains on cached features)."""

    crop: list[int] = field(default_factory=lambda: [512, 512])  # (H, W) of training crops and test windows
    stride: int = 341  # sliding-window stride at test time (segmentation)
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # short side = crop × r
    flip: bool = True
    test_short_side: int = 512  # test images resized to this short side (0 = keep)


@dataclass
class DPTSection:
    """DPT heads (``--head dpt``): trained on four cached blocks of frozen features (fast protocol)."""

    # tips: the official TIPSv2 decoder, final-LN tokens; probe3d: 512 channels, no final LN
    preset: Literal["tips", "probe3d"] = "tips"
    fusion: int | None = None  # decoder width; None = the preset's (256 tips, 512 probe3d)


@dataclass
class SegSection:
    head: Literal["linear", "dpt"] = "linear"  # linear: BatchNorm + 1×1 conv
    object_classes: bool = False  # also report mIoU over the dataset's object classes
    upsample: int = 0  # fast linear head: logits ×u before the loss (0: bilinear straight to the label size)
    upsampler: str = "bilinear"  # bilinear | jbu (joint bilateral, guided by the image): how the ×u is done
    classes: list[str] = field(default_factory=list)  # or over these named classes


@dataclass
class DepthSection:
    head: Literal["lin1", "lin4", "dpt"] = "lin1"  # lin1 (last block) | lin4 (four blocks): DINOv2's linear heads
    bins: int = 256
    spacing: Literal["uniform", "log"] = "uniform"
    depth_min: float | None = None  # default: the dataset's range
    depth_max: float | None = None
    upsample: int = 4
    upsampler: str = "bilinear"  # bilinear | jbu (joint bilateral, guided by the image): how the ×upsample is done
    grad_loss_weight: float = 0.5
    sig_warmup: int = 100  # SigLoss uses only its mean term for this many iterations (DINOv2)
    flip_tta: bool = False
    eigen_crop: Literal["auto", "on", "off"] = "auto"  # auto: on for NYU frames
    mask: Literal["none", "objects"] = "none"  # objects: also report metrics on object pixels (needs seg maps)
    standardize: bool = True  # fast protocol: standardise inputs with train-cache channel statistics


@dataclass
class NormalsSection:
    # lin1 (last block) | lin4 (four blocks): a linear head to 3 (+ κ) channels | dpt
    head: Literal["lin1", "lin4", "dpt"] = "lin1"
    loss: Literal["angular", "uncertainty"] = "angular"  # uncertainty: probe3d's angular vMF NLL (a 4th channel)
    upsample: int = 4  # the linear head's bilinear ×u before the loss, as the linear depth head
    mask: Literal["none", "objects"] = "none"  # objects: also report metrics on object pixels (needs seg maps)
    standardize: bool = True  # standardise inputs with train-cache channel statistics (as depth)


@dataclass
class ProbeConfig:
    task: Literal["segmentation", "depth", "normals"] = "segmentation"
    protocol: Literal["fast", "dinov2"] = "fast"
    seed: int = 0
    features: FeatureSection = field(default_factory=FeatureSection)
    optim: OptimSection = field(default_factory=OptimSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    seg: SegSection = field(default_factory=SegSection)
    depth: DepthSection = field(default_factory=DepthSection)
    normals: NormalsSection = field(default_factory=NormalsSection)
    dpt: DPTSection = field(default_factory=DPTSection)
    extract_batch_size: int = 16
    num_workers: int = 0
    num_vis: int = 4
    progress: bool = True  # progress bars


def dpt_preset(dpt: str) -> dict[str, Any]:
    """A DPT head on cached features: the four DPT blocks with CLS1, final LN as the preset reads them; probe3d's
    optimiser (AdamW, lr 5e-4, wd 0.01, cosine) on a fast-protocol schedule (its 10 epochs at batch 8)."""
    if dpt not in ("tips", "probe3d"):
        raise ValueError(f"dpt.preset={dpt!r}: expected tips or probe3d")
    return {"features": {"layers": "dpt", "norm": dpt == "tips", "cls": True},
            "optim": {"iterations": 1000, "batch_size": 8, "lr": 5e-4, "weight_decay": 1e-2, "warmup": 150,
                      "schedule": "cosine", "grad_clip": 0.0}}


def preset(task: str, protocol: str, head: str = "lin1", dpt: str = "tips") -> dict[str, Any]:
    """Settings of a (task, protocol[, head[, DPT preset]]) before any file or override."""
    if task not in TASKS or protocol not in PROTOCOLS:
        raise ValueError(f"task {task!r} / protocol {protocol!r}: expected one of {TASKS} / {PROTOCOLS}")
    if head == "dpt":
        if protocol != "fast":
            raise ValueError("DPT heads train on cached features only: protocol=fast")
        return dpt_preset(dpt)
    if task == "segmentation":
        if head not in ("linear", "lin1"):
            raise ValueError(f"seg.head={head!r}: expected linear or dpt")
        features = {"layers": "last", "norm": True, "cls": False}
        if protocol == "fast":
            optim = {"iterations": 1000, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4, "warmup": 100,
                     "schedule": "poly"}
            return {"features": features, "optim": optim}
        optim = {"iterations": 40000, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4, "warmup": 1500, "schedule": "poly"}
        augment = {"crop": [512, 512], "stride": 341, "scale_range": [0.5, 2.0], "flip": True, "test_short_side": 512}
        return {"features": features, "optim": optim, "augment": augment}
    if head not in ("lin1", "lin4"):
        raise ValueError(f"{task}.head={head!r}: expected lin1, lin4 or dpt")
    features = {"layers": "last" if head == "lin1" else "quarters", "norm": False, "cls": True}
    if task == "normals":
        if protocol != "fast":
            raise ValueError("the normals probe trains on cached features only: protocol=fast")
        # the fast linear depth probe's schedule (standardised inputs make lr 1e-2 stable for a linear head)
        optim = {"iterations": 1000, "batch_size": 8, "lr": 1e-2, "weight_decay": 1e-2, "warmup": 100,
                 "schedule": "cosine", "grad_clip": 35.0}
        return {"features": features, "optim": optim}
    if protocol == "fast":
        optim = {"iterations": 1000, "batch_size": 8, "lr": 1e-2, "weight_decay": 1e-2, "warmup": 100,
                 "schedule": "cosine", "grad_clip": 35.0}
        return {"features": features, "optim": optim}
    optim = {"iterations": 38400, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-2, "warmup": 12800,
             "schedule": "cosine", "grad_clip": 35.0}
    augment = {"crop": [416, 544], "scale_range": [1.0, 1.0], "flip": True, "test_short_side": 0}
    return {"features": features, "optim": optim, "augment": augment, "depth": {"flip_tta": True}}


def load_probe_config(
    path: str | Path | None = None, overrides: list[str] | None = None, **top: Any
) -> ProbeConfig:
    """Preset of the resulting (task, protocol, head) ← YAML file ← flags ← dotted overrides (later wins), through
    the merge every ``tips-probe`` subcommand uses (:func:`tips_eval.options.merge_options`).

    ``top``: values from command-line flags given as dotted keys, e.g. ``{"optim.iterations": 50}`` (None = not
    given); they sit between the file and the free-form ``key=value`` overrides
    (:func:`tips.io.overrides.parse_override`, as in ``tips-train``). Unknown keys and values outside a field's
    choices raise :class:`tips_eval.options.OptionError` (a ValueError), one line naming them.
    """
    def chosen(cfg: Any) -> dict[str, Any]:
        head = {"segmentation": cfg.seg.head, "depth": cfg.depth.head, "normals": cfg.normals.head}[cfg.task]
        return preset(cfg.task, cfg.protocol, head, cfg.dpt.preset)

    out = merge_options(ProbeConfig, path, top, overrides or [], preset=chosen)
    validate(out)
    return out


def validate(cfg: ProbeConfig) -> None:
    choices = {
        "optim.schedule": (cfg.optim.schedule, ("poly", "cosine")),
        "depth.spacing": (cfg.depth.spacing, ("uniform", "log")),
        "depth.eigen_crop": (cfg.depth.eigen_crop, ("auto", "on", "off")),
        "depth.mask": (cfg.depth.mask, ("none", "objects")),
        "normals.loss": (cfg.normals.loss, ("angular", "uncertainty")),
        "normals.mask": (cfg.normals.mask, ("none", "objects")),
        "seg.upsampler": (cfg.seg.upsampler, ("bilinear", "jbu")),
        "depth.upsampler": (cfg.depth.upsampler, ("bilinear", "jbu")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{key}={value!r}: expected one of {allowed}")
    if cfg.seg.upsample < 0 or cfg.depth.upsample < 1:
        raise ValueError(f"seg.upsample={cfg.seg.upsample} must be >= 0 and depth.upsample={cfg.depth.upsample} >= 1")
    if cfg.task == "segmentation" and cfg.seg.upsampler == "jbu" and cfg.seg.upsample < 1:
        raise ValueError("seg.upsampler=jbu upsamples the logits by seg.upsample: set seg.upsample=4 (or any u >= 1)")
    upsampler = {"segmentation": cfg.seg.upsampler, "depth": cfg.depth.upsampler}.get(cfg.task, "bilinear")
    head = {"segmentation": cfg.seg.head, "depth": cfg.depth.head}.get(cfg.task)
    if upsampler == "jbu" and (cfg.protocol != "fast" or head == "dpt"):
        raise ValueError(f"{cfg.task}: the jbu upsampler is for the linear heads of the fast protocol "
                         f"(got protocol={cfg.protocol}, head={head})")
    if cfg.optim.iterations <= 0 or cfg.optim.batch_size <= 0:
        raise ValueError("optim.iterations and optim.batch_size must be positive")
    if len(cfg.augment.crop) != 2 or len(cfg.augment.scale_range) != 2:
        raise ValueError("augment.crop is [H, W] and augment.scale_range is [min, max]")


def to_dict(cfg: ProbeConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]
