"""DPT decoder heads on the TIPS image tower: segmentation, metric depth and surface normals.

Two presets:

- ``tips``: the official TIPSv2 decoder (``pytorch/decoders.py``). Per level a "project" readout
  (patch ⊕ CLS1 → Linear(2D→D) → tanh-GELU), a 1×1 conv to (D/8, D/4, D/2, D) channels, resize ×4 / ×2 / ×1 / ×½,
  a 3×3 conv (no bias) to 256; four fusion blocks (deepest first; pre-activation residual units, bilinear ×2 with
  ``align_corners=True``, 1×1 conv); a 3×3 project conv; a per-pixel Linear. Output grid: 8× the patch grid.
  Inputs are the final-LN patch tokens and CLS1 of four blocks.
- ``probe3d``: probe3d's DPT probe for training (512 channels, features *without* the final LN with CLS1
  concatenated to each patch token, nearest upsampling, post-activation residual units, ×16 over the patch grid;
  normals get a 4th channel, the concentration κ of the uncertainty-aware loss).

Module names equal the official PyTorch state-dict keys (``dpt.reassemble.readout_projects.0.weight`` …,
``head.weight``), so our files and the official ones differ only in layout (``tips/formats/dpt.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


TASKS = ("segmentation", "depth", "normals")
PRESETS = ("tips", "probe3d")
OFFICIAL_LAYERS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 27: (6, 13, 20, 26), 40: (9, 19, 29, 39)}

Level = tuple[torch.Tensor, torch.Tensor]  # (CLS1 (B, D), patch tokens (B, h, w, D))


def dpt_layers(depth: int) -> tuple[int, int, int, int]:
    """The four 0-based block indices a DPT head reads from a tower of ``depth`` blocks: ⌈k·depth/4⌉ − 1, k = 1..4.

    Reproduces the official table: B [2, 5, 8, 11], L [5, 11, 17, 23], So400m [6, 13, 20, 26], g [9, 19, 29, 39].
    """
    if depth < 4:
        raise ValueError(f"a DPT head needs a tower of at least 4 blocks, got depth {depth}")
    return tuple(math.ceil(k * depth / 4) - 1 for k in range(1, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class DPTConfig:
    """Everything that fixes a DPT head's architecture and output semantics.

    task: "segmentation" (``out_channels`` = classes), "depth" (``out_channels`` = bins, or 1 for direct
        regression as in Scenic's ``pixel_depth_regress``) or "normals" (3; 4 with κ for ``probe3d``).
    width: the tower width D. reassemble: per-level channels (default (D/8, D/4, D/2, D)); ``tips`` only.
    fusion: fusion width (256 official, 512 probe3d). layers: block indices (None: :func:`dpt_layers` of the tower).
    depth_shift: added to ReLU(z) before normalising the bins (official 0.001, probe3d 0.1).
    project_relu: a ReLU after ``project`` (transformers' depth port has one; the official decoder does not).
    head_key: the Scenic name of the task head, kept so an export writes back the name it read.
    """

    task: str
    width: int
    out_channels: int
    preset: str = "tips"
    reassemble: tuple[int, ...] | None = None
    fusion: int | None = None
    layers: tuple[int, ...] | None = None
    min_depth: float = 0.001
    max_depth: float = 10.0
    depth_shift: float | None = None
    project_relu: bool = False
    kernel_size: int = 3
    head_key: str | None = None

    def __post_init__(self) -> None:
        from .variants import check_positive_ints

        check_positive_ints(self, "dpt", ("width", "out_channels", "kernel_size"))
        for name in ("reassemble", "layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and v >= 0 for v in value)):
                raise ValueError(f"dpt.{name} must be a list of non-negative integers, got {value!r}")
        if self.fusion is not None:
            check_positive_ints(self, "dpt", ("fusion",))
        if self.task not in TASKS:
            raise ValueError(f"DPT task must be one of {TASKS}, got {self.task!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"DPT preset must be one of {PRESETS}, got {self.preset!r}")
        if self.reassemble is not None and len(self.reassemble) != 4:
            raise ValueError(f"reassemble needs 4 channel counts, got {self.reassemble}")
        if self.layers is not None and len(self.layers) != 4:
            raise ValueError(f"a DPT head reads exactly 4 layers, got {self.layers}")
        if self.task == "normals" and self.out_channels not in (3, 4):
            raise ValueError(f"a normals head has 3 outputs (4 with κ), got {self.out_channels}")

    @property
    def channels(self) -> tuple[int, ...]:
        d = self.width
        return tuple(self.reassemble) if self.reassemble is not None else (d // 8, d // 4, d // 2, d)

    @property
    def fusion_width(self) -> int:
        return self.fusion if self.fusion is not None else (256 if self.preset == "tips" else 512)

    @property
    def shift(self) -> float:
        return self.depth_shift if self.depth_shift is not None else (0.001 if self.preset == "tips" else 0.1)

    @property
    def norm_tokens(self) -> bool:
        """Whether the head reads tokens after the final LayerNorm (official) or before it (probe3d)."""
        return self.preset == "tips"

    @property
    def upsample_mode(self) -> str:
        return "bilinear" if self.preset == "tips" else "bicubic"

    def layers_for(self, depth: int) -> tuple[int, ...]:
        layers = self.layers if self.layers is not None else dpt_layers(depth)
        if max(layers) >= depth or min(layers) < 0:
            raise ValueError(f"DPT layers {list(layers)} do not exist in a tower of {depth} blocks")
        return tuple(layers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown DPT config fields {sorted(set(d) - known)}; expected {sorted(known)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


def make_config(task: str, width: int, out_channels: int | None = None, preset: str = "tips", **kw: Any) -> DPTConfig:
    """A head config with the task's default output count (150 ADE20K classes, 256 bins, 3 or 4 normals)."""
    if out_channels is None:
        out_channels = {"segmentation": 150, "depth": 256, "normals": 3 if preset == "tips" else 4}[task]
    return DPTConfig(task=task, width=width, out_channels=out_channels, preset=preset, **kw)


# ----------------------------------------------------------------------------------------------- official decoder
def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class PreActResidualUnit(nn.Module):
    """x + conv3×3(ReLU(conv3×3(ReLU(x)))), both convs without bias."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """(residual unit on the shallower level, added) → main unit → bilinear ×2 (align_corners=True) → 1×1 conv."""

    def __init__(self, features: int, has_residual: bool) -> None:
        super().__init__()
        if has_residual:
            self.residual_unit = PreActResidualUnit(features)
        self.main_unit = PreActResidualUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is not None:
            if residual.shape != x.shape:
                residual = F.interpolate(residual, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.residual_unit(residual)
        x = F.interpolate(self.main_unit(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Reassemble(nn.Module):
    """Per level: project readout, 1×1 conv to c_i, resize ×4 / ×2 / ×1 / ×½ (no ``resize_layers.2``)."""

    def __init__(self, width: int, channels: Sequence[int]) -> None:
        super().__init__()
        c = list(channels)
        self.readout_projects = nn.ModuleList(nn.Linear(2 * width, width) for _ in c)
        self.out_projections = nn.ModuleList(nn.Conv2d(width, ch, 1) for ch in c)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c[3], c[3], 3, stride=2, padding=1),
        ])

    def level(self, i: int, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """cls (B, D), patches (B, h, w, D) → (B, c_i, s·h, s·w), channels-last in memory."""
        D = patches.shape[-1]
        readout = self.readout_projects[i]
        # Linear(patch ⊕ cls) = W_p·patch + (W_c·cls + b): the CLS half is computed once per image, not per token.
        w_patch, w_cls = readout.weight[:, :D], readout.weight[:, D:]
        x = F.linear(patches, w_patch) + F.linear(cls, w_cls, readout.bias)[:, None, None]
        x = F.gelu(x, approximate="tanh")  # (B, h, w, D)
        proj = self.out_projections[i]
        x = F.linear(x, proj.weight.flatten(1), proj.bias)  # the 1×1 conv on the channels-last grid
        return self.resize_layers[i](x.permute(0, 3, 1, 2))  # NCHW view with channels-last strides, no copy


class DPTHead(nn.Module):
    """The official DPT trunk: four levels → fused map (B, fusion, 8h, 8w) after ``project``."""

    def __init__(self, width: int, channels: Sequence[int], fusion: int) -> None:
        super().__init__()
        self.reassemble = Reassemble(width, channels)
        self.convs = nn.ModuleList(nn.Conv2d(ch, fusion, 3, padding=1, bias=False) for ch in channels)
        self.fusion_blocks = nn.ModuleList(FusionBlock(fusion, has_residual=i > 0) for i in range(4))
        self.project = nn.Conv2d(fusion, fusion, 3, padding=1)

    def forward(self, levels: Sequence[Level]) -> torch.Tensor:
        maps = [_channels_last(self.convs[i](self.reassemble.level(i, c, p))) for i, (c, p) in enumerate(levels)]
        out = self.fusion_blocks[0](maps[3])
        for i in range(1, 4):
            out = self.fusion_blocks[i](out, maps[3 - i])
        return self.project(out)


# ----------------------------------------------------------------------------------------------- probe3d decoder
class ResidualUnit(nn.Module):
    """probe3d's unit: x + ReLU(conv(ReLU(conv(x)))), convs with bias."""

    def __init__(self, features: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv2d(features, features, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.conv2(F.relu(self.conv1(x))))


class Probe3dFusion(nn.Module):
    def __init__(self, features: int, kernel_size: int, has_skip: bool) -> None:
        super().__init__()
        if has_skip:
            self.skip_unit = ResidualUnit(features, kernel_size)
        self.main_unit = ResidualUnit(features, kernel_size)

    def forward(self, x: torch.Tensor, running: torch.Tensor | None = None) -> torch.Tensor:
        if running is not None:
            x = self.skip_unit(x) + running
        return self.main_unit(x)


class Probe3dDPT(nn.Module):
    """probe3d's DPT probe: levels (patch ⊕ CLS, 2D channels) → (B, out, 16h, 16w)."""

    def __init__(self, width: int, out_channels: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2 * width, hidden, 1) for _ in range(4))
        self.fusion_blocks = nn.ModuleList(Probe3dFusion(hidden, kernel_size, has_skip=i < 3) for i in range(4))
        self.out_conv1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out_conv2 = nn.Conv2d(hidden, out_channels, 3, padding=1)

    def forward(self, levels: Sequence[Level]) -> torch.Tensor:
        maps = []
        for conv, (cls, patches) in zip(self.convs, levels):
            x = torch.cat([patches, cls[:, None, None].expand_as(patches)], dim=-1).permute(0, 3, 1, 2)
            maps.append(F.interpolate(conv(x), scale_factor=2, mode="nearest"))
        out = self.fusion_blocks[3](maps[3])
        for i in (2, 1, 0):
            out = self.fusion_blocks[i](maps[i], out)
        out = F.interpolate(out, scale_factor=4, mode="nearest")
        out = self.out_conv2(F.relu(self.out_conv1(out)))
        return F.interpolate(out, scale_factor=2, mode="nearest")


# ----------------------------------------------------------------------------------------------- the task head
class DenseHead(nn.Module):
    """A DPT decoder with its task head: four levels of tower features → segmentation, depth or normals.

    - :meth:`features` reads the four levels from a TIPS model (or its image tower) for this head's preset;
    - :meth:`decode` gives the raw output at the fused resolution, (B, out_channels, h', w') (h' = 8h official,
      16h probe3d): logits, bin scores (or one regressed depth), raw normals (+ κ as the 4th probe3d channel);
    - :meth:`forward` / :meth:`predict` give the task output at ``size`` / the image size (see :meth:`outputs`).
    """

    def __init__(self, cfg: DPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.preset == "tips":
            self.dpt: nn.Module = DPTHead(cfg.width, cfg.channels, cfg.fusion_width)
            self.head: nn.Module = nn.Linear(cfg.fusion_width, cfg.out_channels)
        else:
            self.dpt = Probe3dDPT(cfg.width, cfg.out_channels, cfg.fusion_width, cfg.kernel_size)
            self.head = nn.Identity()
        bins = cfg.out_channels if cfg.task == "depth" and cfg.out_channels > 1 else 1
        self.register_buffer("bin_centres", torch.linspace(cfg.min_depth, cfg.max_depth, bins), persistent=False)

    @property
    def task(self) -> str:
        return self.cfg.task

    def check_fits(self, model: nn.Module) -> tuple[int, ...]:
        """The blocks this head reads from ``model`` (a TIPS model or its image tower); ValueError, naming both
        sizes, when the tower's width is not the head's or the blocks do not exist. Needs no image."""
        vision = getattr(model, "vision", model)
        if vision.cfg.width != self.cfg.width:
            raise ValueError(
                f"this DPT head was built for a tower of width {self.cfg.width}, the model's is {vision.cfg.width}"
            )
        return self.cfg.layers_for(vision.cfg.depth)

    def features(self, model: nn.Module, images: torch.Tensor) -> list[Level]:
        """The four (CLS1 (B, D), patch tokens (B, h, w, D)) levels of ``model`` (a TIPS model or its image tower)."""
        vision = getattr(model, "vision", model)
        layers = self.check_fits(vision)
        feats = vision.intermediate_layers(images, list(layers), norm=self.cfg.norm_tokens)
        return [(f.cls_alt, f.patch_tokens) for f in feats]

    def decode(self, levels: Sequence[Level]) -> torch.Tensor:
        """Four levels → raw output (B, out_channels, h', w')."""
        if len(levels) != 4:
            raise ValueError(f"a DPT head takes 4 levels of features, got {len(levels)}")
        x = self.dpt(levels)
        if self.cfg.preset == "probe3d":
            return x
        if self.cfg.project_relu:
            x = F.relu(x)
        return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # per-pixel Linear on the channels-last map

    def outputs(self, raw: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Raw decoder output → the task output, resized to ``size`` (H, W) when given.

        segmentation: logits (B, C, H, W); depth: metres (B, 1, H, W), the bin expectation computed at the fused
        resolution and then resized; normals: (B, 3, H, W), the raw output resized, then L2-normalised.
        The resize is bilinear for the ``tips`` preset and bicubic for ``probe3d`` (align_corners=False).
        """
        out = self.task_map(raw)
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode=self.cfg.upsample_mode, align_corners=False)
        return self.finish(out)

    def task_map(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw decoder output (B, out_channels, h', w') → the map that is resized to the image, at (h', w'):
        logits (B, C), depth in metres (B, 1) (the bin expectation) or raw normals (B, 3)."""
        if self.task == "depth":
            if raw.shape[1] == 1:
                return raw
            p = F.relu(raw.permute(0, 2, 3, 1)) + self.cfg.shift  # (B, h', w', bins)
            p = p / p.sum(-1, keepdim=True)
            return (p @ self.bin_centres.to(p.dtype))[:, None]  # (B, 1, h', w')
        if self.task == "normals":
            return raw[:, :3]
        return raw

    def finish(self, resized: torch.Tensor) -> torch.Tensor:
        """The last step after resizing :meth:`task_map`'s output: normals are L2-normalised along channels."""
        return F.normalize(resized, dim=1) if self.task == "normals" else resized

    def forward(self, levels: Sequence[Level], size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.outputs(self.decode(levels), size)

    @torch.inference_mode()
    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], H and W multiples of the patch size → the task output at (H, W).

        segmentation logits (B, C, H, W); depth in metres (B, 1, H, W); unit normals (B, 3, H, W).
        Resizing to a valid size is the caller's (``tips-predict`` does it).
        """
        vision = getattr(model, "vision", model)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        p = vision.cfg.patch_size
        if H % p or W % p:
            raise ValueError(
                f"image size {H}x{W} is not a multiple of the patch size {p}: resize to e.g. "
                f"{max(p, round(H / p) * p)}x{max(p, round(W / p) * p)} first (tips-predict does this)"
            )
        param = next(vision.parameters())
        images = images.to(param.device, param.dtype)
        return self(self.features(model, images), size=(H, W))



def build_head(task: str, width: int, out_channels: int | None = None, preset: str = "tips", **kw: Any) -> DenseHead:
    """A randomly initialised head (PyTorch's default init), e.g. ``build_head("depth", model.width)``."""
    return DenseHead(make_config(task, width, out_channels, preset, **kw))
