"""Parameter groups (no-WD rules, layer-wise LR decay, prototype-layer freeze) and the optimiser."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

# Names (or name fragments) that never get weight decay, besides every 1-D tensor.
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "reg_token", "mask_token", "logit_scale", "logit_bias", "original0")


@dataclass(frozen=True)
class GroupKey:
    lr_mult: float
    wd_mult: float
    is_last_layer: bool
    is_tower: bool = False


def vision_layer_id(name: str, depth: int) -> int:
    """Layer index of an image-tower parameter for LLRD: embeddings 0, block i → i + 1, final norm depth + 1."""
    if m := re.search(r"blocks\.(\d+)\.", name):
        return int(m.group(1)) + 1
    if any(k in name for k in ("patch_embed", "pos_embed", "cls_token", "reg_token", "mask_token")):
        return 0
    return depth + 1


def text_layer_id(name: str, depth: int) -> int:
    """Layer index of a text-tower parameter for LLRD: token embedding 0, block i → i + 1, final norm depth + 1."""
    if m := re.search(r"resblocks\.(\d+)\.", name):
        return int(m.group(1)) + 1
    if "token_embedding" in name:
        return 0
    return depth + 1


def param_groups(
    model: nn.Module, layerwise_decay: float = 1.0, vision_prefix: str = "model.vision.", vision_depth: int = 0,
    text_layerwise_decay: float = 1.0, text_prefix: str | None = None, text_depth: int = 0,
    tower_prefix: str | None = None,
) -> list[dict]:
    """Trainable parameters of ``model`` grouped by (lr multiplier, wd multiplier, is-last-layer).

    - no weight decay on 1-D tensors (biases, norms, LayerScale γ, logit scales) and on position / token
      embeddings and weight-norm gains;
    - LLRD: image-tower layer l of L gets λ^(L + 1 − l) (DINOv2 rule); with ``text_prefix`` the text tower gets
      the same rule over its blocks with ``text_layerwise_decay``; heads get 1;
    - parameters under ``tower_prefix`` (the pretrained model) are flagged ``is_tower`` so the trainer can hold
      their LR at 0 during a head warm-up while every parameter stays trainable (as for ``freeze_last_layer``);
    - prototype layers (``last_layer``) are flagged so the trainer can zero their LR during the freeze.
    """
    groups: dict[GroupKey, list[nn.Parameter]] = {}
    names: dict[GroupKey, list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd_mult = 0.0 if p.ndim <= 1 or any(k in name for k in NO_WEIGHT_DECAY) else 1.0
        lr_mult = 1.0
        if layerwise_decay != 1.0 and name.startswith(vision_prefix):
            lr_mult = layerwise_decay ** (vision_depth + 1 - vision_layer_id(name, vision_depth))
        if text_prefix and text_layerwise_decay != 1.0 and name.startswith(text_prefix):
            lr_mult = text_layerwise_decay ** (text_depth + 1 - text_layer_id(name, text_depth))
        is_tower = bool(tower_prefix) and name.startswith(tower_prefix)
        key = GroupKey(lr_mult, wd_mult, "last_layer" in name, is_tower)
        groups.setdefault(key, []).append(p)
        names.setdefault(key, []).append(name)
    return [
        {"params": params, "lr_mult": k.lr_mult, "wd_mult": k.wd_mult, "is_last_layer": k.is_last_layer,
         "is_tower": k.is_tower, "param_names": names[k]}
        for k, params in groups.items()
    ]  # fmt: skip


def build_optimizer(groups: list[dict], name: str, betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    """AdamW (default) or big_vision-style Adafactor from timm. LR and WD are set every step by the trainer."""
    clean = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    if name == "adamw":
        # fused: one kernel over every tensor instead of a Python loop per parameter (the default on CPU),
        # about 3x faster on the demo's 2 CPU cores; supported on CPU and CUDA alike.
        return torch.optim.AdamW(clean, lr=0.0, betas=betas, eps=eps, weight_decay=0.0, fused=True)
    if name == "adafactor":
        from timm.optim import AdafactorBigVision

        return AdafactorBigVision(clean, lr=0.0, weight_decay=0.0)
    raise ValueError(f"optim.optimizer must be 'adamw' or 'adafactor', got {name!r}")


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float, freeze_last_layer: bool,
              tower_lr_factor: float = 1.0) -> None:
    """Apply this step's LR and weight decay to every group through its multipliers; ``tower_lr_factor``
    scales the pretrained towers' groups (0 during a head warm-up: AdamW then leaves them bit-identical)."""
    for g in optimizer.param_groups:
        g["lr"] = 0.0 if (freeze_last_layer and g.get("is_last_layer")) else lr * g.get("lr_mult", 1.0)
        if g.get("is_tower"):
            g["lr"] *= tower_lr_factor
        g["weight_decay"] = wd * g.get("wd_mult", 1.0)
