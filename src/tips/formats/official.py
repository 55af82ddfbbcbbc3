"""Official PyTorch ``.npz``: one flat state dict per tower (DINOv2-with-registers names for the image tower),
plus our sidecar JSON for what the layout cannot hold. Read by :func:`load_official_npz` (also Scenic files:
layout detected from keys), written by :func:`export_official` so the official model classes load our models
with strict key matching."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..io.atomic import atomic_file, write_json_atomic
from ..models.tips import TIPS
from ..models.variants import ModelConfig
from .common import (
    StateDict,
    config_from_state_dicts,
    load_into,
    model_config,
    read_checked,
    read_json,
    require_key,
    split_text_temperature,
)
from .detect import detect_format
from .scenic import scenic_text_to_ours, scenic_vision_to_ours


def official_vision_to_ours(sd: Mapping[str, torch.Tensor], tower: nn.Module, source: str = "vision file") -> StateDict:
    """Official PyTorch vision state dict → our (timm) names, by timm's own ``checkpoint_filter_fn``
    (``cls_token`` + ``pos_embed[:, 0]``, ``register_tokens`` → ``reg_token``, ``pos_embed[:, 1:]``, SwiGLU
    ``w12``/``w3`` → ``fc1``/``fc2``), for ``tower`` built at the file's grid. timm drops ``mask_token``; we keep it.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    for key in ("mask_token", "register_tokens", "pos_embed", "cls_token"):
        require_key(sd, key, source)
    mask = sd["mask_token"]
    out = checkpoint_filter_fn(dict(sd), tower, interpolation="bilinear", antialias=True)
    out["mask_token"] = mask
    return out


def ours_to_official_vision(sd: Mapping[str, torch.Tensor], swiglu: bool) -> StateDict:
    """Inverse of :func:`official_vision_to_ours` (row 0 of ``pos_embed`` written as zeros; timm has no inverse)."""
    out: StateDict = {}
    for k, v in sd.items():
        if k == "pos_embed":
            out[k] = torch.cat([torch.zeros_like(v[:, :1]), v], dim=1)
        elif k == "reg_token":
            out["register_tokens"] = v
        elif swiglu and ".mlp.fc" in k:
            out[k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")] = v
        else:
            out[k] = v
    return out


def read_sidecar(vision_path: Path) -> dict[str, Any]:
    """The JSON written beside an exported official ``.npz`` (``<name>.tips.json``), or {}."""
    path = sidecar_path(vision_path)
    return read_json(path) if path.is_file() else {}


def sidecar_path(vision_path: Path) -> Path:
    return Path(vision_path).with_suffix(".tips.json")


def load_official_npz(vision_path: Path, text_path: Path | None, heads: int | None = None) -> TIPS:
    """Official PyTorch or Scenic ``.npz`` files (layout detected from keys); the sidecar, when present, is
    checked against the arrays' headers before the model is built."""
    return read_checked(_read, Path(vision_path), Path(text_path) if text_path is not None else None, heads)


def read(path: Path, text: Path | None = None, heads: int | None = None) -> TIPS:
    """The official layout's reader (``READERS["official"]``)."""
    return load_official_npz(path, text, heads)


def _read(vision_path: Path, text_path: Path | None, heads: int | None, tensors: Callable[[Path], StateDict]) -> TIPS:
    vsd = tensors(vision_path)
    fmt = detect_format(vsd.keys())
    if fmt not in ("official_vision", "scenic_vision"):
        raise ValueError(f"{vision_path}: expected an official vision .npz, found a {fmt!r} layout")
    sidecar = read_sidecar(vision_path)
    side = sidecar_path(vision_path)
    v_heads = heads or sidecar.get("vision_heads")
    # Every official variant uses the same head count in both towers, so `heads` overrides both.
    text, tau, t_heads = None, None, heads or sidecar.get("text_heads")
    if text_path is not None:
        tsd = tensors(text_path)
        tfmt = detect_format(tsd.keys())
        if tfmt == "official_text":
            text, tau = split_text_temperature(tsd)
        elif tfmt == "scenic_text":
            text, scenic_heads, tau = scenic_text_to_ours(tsd, str(text_path))
            t_heads = heads or scenic_heads
        else:
            raise ValueError(f"{text_path}: expected an official text .npz, found a {tfmt!r} layout")
    if fmt == "scenic_vision":
        vsd, scenic_heads = scenic_vision_to_ours(vsd, str(vision_path))
        v_heads = heads or scenic_heads
    source = str(vision_path)
    if "config" in sidecar:
        config = model_config(sidecar["config"], side, "config")
        if text is None:
            config = ModelConfig(vision=config.vision, text=None, variant=config.variant, tokenizer=config.tokenizer)
        source = f"{vision_path} (architecture from {side})"
    else:
        for field, value in (("vision_heads", v_heads), ("text_heads", t_heads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{side}: field {field!r} must be an integer ≥ 1, got {value!r}")
        config = config_from_state_dicts(vsd, text, v_heads, t_heads, str(vision_path))
    model = TIPS(config)
    vision = official_vision_to_ours(vsd, model.vision, source) if fmt == "official_vision" else vsd
    return load_into(model, vision, text, (tau, sidecar.get("temperature_syn")), source)


def export_official(model: TIPS, out_dir: str | os.PathLike, name: str = "tips") -> dict[str, Path]:
    """Write ``{name}_vision.npz`` / ``{name}_text.npz`` with official keys only, plus ``{name}_vision.tips.json``.

    The sidecar holds what the official layout cannot (``temperature_syn``, the full config, head counts);
    :func:`tips.load` reads it when present. Writes are atomic.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    swiglu = model.cfg.vision.ffn == "swiglu"
    vision = ours_to_official_vision({k: v.detach().cpu() for k, v in model.vision.state_dict().items()}, swiglu)
    paths = {"vision": out / f"{name}_vision.npz"}
    _save_npz(paths["vision"], vision)
    if model.text is not None:
        text = {k: v.detach().cpu() for k, v in model.text.state_dict().items()}
        if model.temperature is not None:
            text["temperature"] = torch.tensor(model.temperature, dtype=torch.float32)
        paths["text"] = out / f"{name}_text.npz"
        _save_npz(paths["text"], text)
    sidecar = {
        "format": "tips-official-sidecar",
        "config": model.cfg.to_dict(),
        "temperature_syn": model.temperature_syn,
        "vision_heads": model.cfg.vision.heads,
        "text_heads": model.cfg.text.heads if model.cfg.text else None,
    }
    paths["sidecar"] = sidecar_path(paths["vision"])
    write_json_atomic(paths["sidecar"], sidecar, indent=2)
    return paths


def _save_npz(path: Path, sd: Mapping[str, torch.Tensor]) -> None:
    arrays = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    with atomic_file(path, suffix=".tmp.npz") as f:
        np.savez(f, **arrays)


write = export_official
