"""Hugging Face transformers ``tipsv2`` folders (spec §4.5), as transformers 5 really writes and reads them.

``Tipsv2Model.save_pretrained`` writes ``config.json`` (``model_type: tipsv2``, nested ``vision_config`` /
``text_config``) and one ``model.safetensors`` in the hub key layout: the official PyTorch keys prefixed
``vision_encoder.`` / ``text_encoder.``, plus a scalar ``temperature`` (τ, dividing the cosine). transformers
writes the vision MLP as ``mlp.c_fc`` / ``mlp.c_proj`` (the hub files use ``fc1`` / ``fc2``; it reads both),
SwiGLU as ``mlp.w12`` (SiLU branch first) / ``mlp.w3``. ``Tipsv2VisionModel`` / ``Tipsv2TextModel`` write the
same keys without a prefix. Older configs without sub-configs (flat keys) are read from the shapes alone.

Our extras (``temperature_syn``, our full config) go in config.json's ``"tips"`` field, which transformers keeps.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file

from ..models.tips import TIPS
from ..models.variants import ModelConfig, TextConfig, VisionConfig
from .common import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    StateDict,
    build_from_state_dicts,
    infer_text_config,
    infer_vision_config,
    split_text_temperature,
)
from .official import official_vision_to_ours

VISION_PREFIX, TEXT_PREFIX = "vision_encoder.", "text_encoder."
EXTRA_FIELD = "tips"  # our fields inside config.json
_GELU = {"gelu": "erf", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}


# --------------------------------------------------------------------------- config.json → our configs
def _square(value: Any, field: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{source}: {field}={list(value)} is not square; TIPS position grids are square")
        value = value[0]
    return int(value)


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
    """transformers' SwiGLU width: 2/3 of ``int(width * mlp_ratio)``, rounded up to a multiple of 8."""
    return (int(int(width * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def vision_config_from_hf(c: Mapping[str, Any], source: str) -> VisionConfig:
    """A transformers ``Tipsv2VisionConfig`` dict → our :class:`VisionConfig`; refuses what TIPS cannot represent."""
    for field, want in (("num_register_tokens", 1), ("qkv_bias", True), ("num_channels", 3)):
        if c.get(field, want) != want:
            raise ValueError(f"{source}: vision_config.{field}={c[field]!r}; a TIPS image tower needs {want!r}")
    width, ratio = int(c.get("hidden_size", 768)), float(c.get("mlp_ratio", 4))
    swiglu = bool(c.get("use_swiglu_ffn", False))
    act = c.get("hidden_act", "gelu")
    if not swiglu and act not in _GELU:
        raise ValueError(f"{source}: vision_config.hidden_act={act!r}; supported: {sorted(_GELU)}")
    patch = _square(c.get("patch_size", 14), "vision_config.patch_size", source)
    image = _square(c.get("image_size", 448), "vision_config.image_size", source)
    return VisionConfig(
        width=width,
        depth=int(c.get("num_hidden_layers", 12)),
        heads=int(c.get("num_attention_heads", 12)),
        mlp_hidden=swiglu_hidden(width, ratio) if swiglu else int(width * ratio),
        ffn="swiglu" if swiglu else "mlp",
        patch_size=patch,
        pos_grid=image // patch,
        ln_eps=float(c.get("layer_norm_eps", 1e-6)),
        gelu=_GELU.get(act, "erf"),
    )


def text_config_from_hf(c: Mapping[str, Any], source: str) -> TextConfig:
    """A transformers ``Tipsv2TextConfig`` dict → our :class:`TextConfig`."""
    if c.get("hidden_act", "relu") != "relu" or not c.get("scale_sqrt_depth", True):
        raise ValueError(f"{source}: text_config needs hidden_act='relu' and scale_sqrt_depth=true for a TIPS text tower "
                         f"(got {c.get('hidden_act')!r}, {c.get('scale_sqrt_depth')!r})")  # fmt: skip
    return TextConfig(
        width=int(c.get("hidden_size", 768)),
        depth=int(c.get("num_hidden_layers", 12)),
        heads=int(c.get("num_attention_heads", 12)),
        mlp_hidden=int(c.get("intermediate_size", 3072)),
        vocab_size=int(c.get("vocab_size", 32000)),
        max_len=int(c.get("max_position_embeddings", 64)),
        ln_eps=float(c.get("layer_norm_eps", 1e-5)),
    )


_CHECKED = {  # our field → (transformers field, tensor it is read from)
    "vision": {"width": ("hidden_size", "cls_token"), "depth": ("num_hidden_layers", "blocks.*"),
               "mlp_hidden": ("mlp_ratio / use_swiglu_ffn", "blocks.0.mlp.fc2.weight"),
               "ffn": ("use_swiglu_ffn", "blocks.0.mlp.fc1.weight"), "patch_size": ("patch_size", "patch_embed.proj.weight"),
               "pos_grid": ("image_size / patch_size", "pos_embed")},
    "text": {"width": ("hidden_size", "token_embedding.weight"), "depth": ("num_hidden_layers", "transformer.resblocks.*"),
             "mlp_hidden": ("intermediate_size", "transformer.resblocks.0.mlp.c_fc.weight"),
             "vocab_size": ("vocab_size", "token_embedding.weight")},
}  # fmt: skip


def check_against_shapes(cfg: VisionConfig | TextConfig, sd: Mapping[str, torch.Tensor], tower: str, prefix: str, source: str) -> None:
    """Every dimension config.json states must match the tensors; the error names the field, the key and the shapes."""
    inferred = (infer_vision_config if tower == "vision" else infer_text_config)(sd, cfg.heads, source)
    for field, (hf_field, key) in _CHECKED[tower].items():
        have, want = getattr(inferred, field), getattr(cfg, field)
        if have != want:
            key = key.replace(".fc2.", ".w3.").replace(".fc1.", ".w12.") if key not in sd and "blocks.0.mlp.w3.weight" in sd else key
            shape = tuple(sd[key].shape) if key in sd else f"{have} blocks"
            raise ValueError(
                f"{source}: config.json {tower}_config.{hf_field} gives {field}={want!r}, but {prefix}{key} has shape "
                f"{shape} ({field}={have!r}); fix config.json or the weights"
            )


# --------------------------------------------------------------------------- reading
def _vision_official_names(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """transformers' vision MLP names (``c_fc``/``c_proj``) → official ``fc1``/``fc2``; SwiGLU names stay."""
    return {k.replace(".mlp.c_fc.", ".mlp.fc1.").replace(".mlp.c_proj.", ".mlp.fc2."): v for k, v in sd.items()}


def _split(sd: Mapping[str, torch.Tensor], model_type: str | None, source: str) -> tuple[StateDict | None, StateDict | None, float | None]:
    """→ (official-named vision dict or None, text dict or None, the stored ``temperature`` or None)."""
    sd = dict(sd)
    tau_t = sd.pop("temperature", None)
    if any(k.startswith((VISION_PREFIX, TEXT_PREFIX)) for k in sd):
        vision = {k[len(VISION_PREFIX):]: v for k, v in sd.items() if k.startswith(VISION_PREFIX)}
        text = {k[len(TEXT_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_PREFIX)}
        other = sorted(k for k in sd if not k.startswith((VISION_PREFIX, TEXT_PREFIX)))
        if other:
            raise KeyError(f"{source}: unexpected keys outside {VISION_PREFIX}/{TEXT_PREFIX}/temperature: {other[:10]}")
        text, tau_in_text = split_text_temperature(text) if text else (None, None)
        tau = float(tau_t) if tau_t is not None else tau_in_text
        return _vision_official_names(vision) if vision else None, text, tau
    tau = float(tau_t) if tau_t is not None else None
    if model_type == "tipsv2_text_model" or ("token_embedding.weight" in sd and "cls_token" not in sd):
        text, tau_in_text = split_text_temperature(sd)
        return None, text, tau if tau is not None else tau_in_text
    if model_type == "tipsv2_vision_model" or "register_tokens" in sd:
        return _vision_official_names(sd), None, tau
    raise KeyError(f"{source}: not a transformers TIPSv2 layout (no {VISION_PREFIX}/{TEXT_PREFIX} keys, no register_tokens); "
                   f"first keys {sorted(sd)[:6]}")  # fmt: skip


def read_hf_folder(path: Path) -> tuple[dict[str, Any], StateDict | None, StateDict | None, float | None, str]:
    """A folder (or its ``model.safetensors``) → (config.json dict or {}, vision dict, text dict, τ, source name)."""
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file (a transformers folder holds {WEIGHTS_NAME} + {CONFIG_NAME})")
    cfg_path = weights.parent / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    vision, text, tau = _split(load_file(str(weights)), cfg.get("model_type"), str(weights))
    return cfg, vision, text, tau, str(weights)


def _sub_configs(cfg: Mapping[str, Any]) -> tuple[dict | None, dict | None]:
    """(vision, text) transformers sub-config dicts, or None where config.json has none (flat/older configs)."""
    model_type = cfg.get("model_type")
    if model_type == "tipsv2_vision_model":
        return dict(cfg), None
    if model_type == "tipsv2_text_model":
        return None, dict(cfg)
    return cfg.get("vision_config"), cfg.get("text_config")


def _config_temperature(cfg: Mapping[str, Any]) -> float | None:
    for key in ("temperature", "temperature_init_value", "temperature_contrastive"):
        if isinstance(cfg.get(key), (int, float)):
            return float(cfg[key])
    return None


def load_hf(path: Path, heads: int | None = None, text: Path | None = None) -> TIPS:
    """A transformers ``tipsv2`` folder (``Tipsv2Model``, or a ``Tipsv2VisionModel`` with ``text=`` a
    ``Tipsv2TextModel`` folder) or its ``model.safetensors`` → :class:`TIPS`, architecture from config.json when
    it has sub-configs (checked against the shapes), from the shapes otherwise."""
    cfg, vision, text_sd, tau, source = read_hf_folder(Path(path))
    text_cfg_dict = _sub_configs(cfg)[1]
    if text is not None:
        if text_sd is not None:
            raise ValueError(f"{source} already holds a text tower; drop text={text}")
        t_cfg, _, text_sd, t_tau, t_source = read_hf_folder(Path(text))
        text_cfg_dict, tau = _sub_configs(t_cfg)[1], t_tau if t_tau is not None else _config_temperature(t_cfg)
    if vision is None:
        raise ValueError(f"{source} holds only a text tower (Tipsv2TextModel): load the image-tower folder and pass "
                         f"this one as text=, e.g. tips.load(vision_dir, text={str(Path(path))!r})")  # fmt: skip
    vision_cfg_dict = _sub_configs(cfg)[0]
    extra = cfg.get(EXTRA_FIELD) or {}
    if extra.get("model"):
        config = ModelConfig.from_dict(extra["model"])
        if text_sd is None:
            config = ModelConfig(vision=config.vision, text=None, variant=config.variant, tokenizer=config.tokenizer)
    else:
        vcfg = vision_config_from_hf(vision_cfg_dict, source) if vision_cfg_dict else None
        tcfg = text_config_from_hf(text_cfg_dict, source) if (text_cfg_dict and text_sd is not None) else None
        if heads:
            vcfg = vcfg and dataclasses.replace(vcfg, heads=heads)
            tcfg = tcfg and dataclasses.replace(tcfg, heads=heads)
        vcfg = vcfg or infer_vision_config(vision, heads, source)
        tcfg = tcfg or (infer_text_config(text_sd, heads, source) if text_sd is not None else None)
        config = ModelConfig(vision=vcfg, text=tcfg, variant="custom")
    check_against_shapes(config.vision, vision, "vision", VISION_PREFIX, source)
    if text_sd is not None:
        check_against_shapes(config.text, text_sd, "text", TEXT_PREFIX, source)
    tau = tau if tau is not None else _config_temperature(cfg)
    ours = official_vision_to_ours(vision, source)
    return build_from_state_dicts(ours, text_sd, (tau, extra.get("temperature_syn")), config=config, source=source)
