"""Hugging Face transformers ``tipsv2`` folders (spec §4.5): ``config.json`` + ``model.safetensors`` whose keys
are the official PyTorch keys prefixed ``vision_encoder.`` / ``text_encoder.``."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from ..models.tips import TIPS
from .common import CONFIG_NAME, WEIGHTS_NAME, build_from_state_dicts, split_text_temperature
from .official import official_vision_to_ours


def load_hf(path: Path, heads: int | None = None) -> TIPS:
    """Hugging Face ``google/tipsv2-*`` layout: a folder (or its ``model.safetensors``) + ``config.json``."""
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    cfg_path = weights.parent / CONFIG_NAME
    hf_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    sd = load_file(str(weights))
    vision_raw = {k[len("vision_encoder."):]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    text_raw = {k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")}
    other = sorted(k for k in sd if not k.startswith(("vision_encoder.", "text_encoder.")))
    if other:
        raise KeyError(f"{weights}: unexpected keys outside vision_encoder./text_encoder.: {other[:10]}")
    text_sd, tau = split_text_temperature(text_raw) if text_raw else (None, None)
    taus = [v for k, v in hf_cfg.items() if "temperature" in k and isinstance(v, (int, float))]
    tau = tau if tau is not None else (float(taus[0]) if taus else None)
    vision = official_vision_to_ours(vision_raw, str(weights))
    return build_from_state_dicts(vision, text_sd, (tau, None), heads, heads, None, str(weights))


