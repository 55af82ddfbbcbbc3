"""What every layout shares: file names, safe reading, architecture from shapes, strict loading, building models."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import torch
from torch import nn

from ..models.tips import TIPS
from ..models.variants import ModelConfig, TextConfig, VisionConfig, heads_for_width
from .headers import header, read_npz, read_tensors  # noqa: F401  (read_npz: the readers' import)


StateDict = dict[str, torch.Tensor]
T = TypeVar("T")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.model"


def read_checked(read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``read(*args, tensors=..., **kwargs)`` twice: first on the files' headers under the ``meta`` device, so
    every comparison of a config or sidecar with the weights happens before anything is allocated (a config
    claiming a 16384-wide tower fails here, naming the file and key), then on the real tensors."""
    with torch.device("meta"):
        read(*args, tensors=header, **kwargs)
    return read(*args, tensors=read_tensors, **kwargs)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``; anything else raises an error naming the file."""
    try:
        obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore the file written with the weights") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 JSON file ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def require_field(cfg: Mapping[str, Any], field: str, source: str | os.PathLike) -> Any:
    if field not in cfg:
        raise ValueError(f"{source}: missing field {field!r} (found {sorted(cfg)[:8]})")
    return cfg[field]


def model_config(d: Any, source: str | os.PathLike, field: str = "model") -> ModelConfig:
    """``ModelConfig.from_dict`` with any refusal (a missing tower, ``heads: 0``, a width that is a string) naming
    the file and field."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: field {field!r} must be an object, got {type(d).__name__}")
    try:
        return ModelConfig.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: field {field!r}: {e}") from None


def scalar(t: torch.Tensor | None) -> float | None:
    """A stored scalar (a temperature) as a float; None on the ``meta`` pass, which has no values."""
    return None if t is None or t.is_meta else float(t.reshape(-1)[0])


def check_text_len(config: ModelConfig, text_sd: Mapping[str, torch.Tensor] | None, source: str) -> None:
    """The text tower's sinusoidal table (``max_len`` × width) is computed, not stored, so a config could make it
    any size: bound it by what the weights hold, one position per row of the token table at most."""
    if config.text is None or text_sd is None or "token_embedding.weight" not in text_sd:
        return
    rows = text_sd["token_embedding.weight"].shape[0]
    if config.text.max_len > rows:
        raise ValueError(f"{source}: text max_len={config.text.max_len} exceeds the {rows} rows of "
                         f"token_embedding.weight in the weights; a TIPS text tower reads at most as many positions")  # fmt: skip


def count_indices(sd: Mapping[str, Any], pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over the keys (e.g. block indices)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def require_key(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{source}: missing key {key!r} (found {len(sd)} keys, e.g. {sorted(sd)[:5]})")
    return sd[key]


def split_text_temperature(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, float | None]:
    """Pop ``temperature`` / ``temperature_contrastive`` (a scalar dividing the cosine) from a text dict."""
    sd = dict(sd)
    tau = None
    for key in ("temperature", "temperature_contrastive", "contrastive_loss_temperature"):
        if key in sd:
            tau = scalar(sd.pop(key))
    return sd, tau


# --------------------------------------------------------------------------- architecture from shapes
def infer_vision_config(sd: Mapping[str, torch.Tensor], heads: int | None = None, source: str = "checkpoint") -> VisionConfig:
    """Image-tower config from tensor shapes: our/timm names, or official names (``register_tokens``,
    ``pos_embed`` with its class row, SwiGLU ``w12``/``w3``). Heads cannot be read from shapes: the
    official table by width unless ``heads`` is given."""
    width = require_key(sd, "cls_token", source).shape[-1]
    patch = require_key(sd, "patch_embed.proj.weight", source).shape[-1]
    depth = count_indices(sd, r"blocks\.(\d+)\.norm1\.weight")
    rows = require_key(sd, "pos_embed", source).shape[1] - (1 if "register_tokens" in sd else 0)
    grid = int(round(rows**0.5))
    if grid * grid != rows:
        raise ValueError(f"{source}: pos_embed has {rows} patch rows, not a square grid")
    first, second = ("w12", "w3") if "blocks.0.mlp.w12.weight" in sd else ("fc1", "fc2")
    fc1 = require_key(sd, f"blocks.0.mlp.{first}.weight", source)
    fc2 = require_key(sd, f"blocks.0.mlp.{second}.weight", source)
    swiglu = fc1.shape[0] == 2 * fc2.shape[1]
    return _config(VisionConfig, source,
        width=width,
        depth=depth,
        heads=heads or heads_for_width(width),
        mlp_hidden=fc2.shape[1],
        ffn="swiglu" if swiglu else "mlp",
        patch_size=patch,
        pos_grid=grid,
    )


def infer_text_config(sd: Mapping[str, torch.Tensor], heads: int | None = None, source: str = "checkpoint") -> TextConfig:
    vocab, width = require_key(sd, "token_embedding.weight", source).shape
    return _config(TextConfig, source,
        width=width,
        depth=count_indices(sd, r"transformer\.resblocks\.(\d+)\.ln_1\.weight"),
        heads=heads or heads_for_width(width),
        mlp_hidden=require_key(sd, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0],
        vocab_size=vocab,
    )


def _config(cls: type[T], source: str, **fields: Any) -> T:
    try:
        return cls(**fields)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


# --------------------------------------------------------------------------- strict loading
def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into ``module``; any missing, unexpected or mis-shaped key raises an error naming it."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{source}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{source}: key {k!r} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)


# --------------------------------------------------------------------------- building models
def load_into(
    model: TIPS,
    vision_sd: Mapping[str, torch.Tensor],
    text_sd: Mapping[str, torch.Tensor] | None,
    temperatures: tuple[float | None, float | None],
    source: str,
) -> TIPS:
    """Our-named state dicts → ``model`` (strictly), temperatures set; returns ``model``."""
    check_text_len(model.cfg, text_sd, source)
    load_strict(model.vision, vision_sd, f"{source} (image tower)")
    if text_sd is not None:
        load_strict(model.text, text_sd, f"{source} (text tower)")
    model.set_temperatures(*temperatures)
    return model


def config_from_state_dicts(
    vision_sd: Mapping[str, torch.Tensor],
    text_sd: Mapping[str, torch.Tensor] | None,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    source: str = "checkpoint",
) -> ModelConfig:
    """The architecture the tensors imply (heads from the official width table unless given)."""
    vcfg = infer_vision_config(vision_sd, vision_heads, source)
    tcfg = infer_text_config(text_sd, text_heads, source) if text_sd is not None else None
    return ModelConfig(vision=vcfg, text=tcfg, variant="custom")


def build_from_state_dicts(
    vision_sd: StateDict,
    text_sd: StateDict | None,
    temperatures: tuple[float | None, float | None] = (None, None),
    vision_heads: int | None = None,
    text_heads: int | None = None,
    config: ModelConfig | None = None,
    source: str = "checkpoint",
) -> TIPS:
    """Our-named state dicts → a :class:`TIPS` model, architecture inferred from shapes unless ``config`` is given."""
    config = config or config_from_state_dicts(vision_sd, text_sd, vision_heads, text_heads, source)
    return load_into(TIPS(config), vision_sd, text_sd, temperatures, source)
