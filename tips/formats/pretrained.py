"""Ours: a ``save_pretrained`` folder, ``config.json`` (every architecture field, both temperatures,
the tokenizer back-end) + one ``model.safetensors`` (image tower in timm names plus ``mask_token``, text tower,
both logit scales, optional extra tensors such as heads) [+ ``tokenizer.model``]."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from ..io.atomic import replace_dir
from ..models.tips import TIPS
from ..models.variants import ModelConfig
from ..models.tokenizers import build_tokenizer
from .common import CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME, load_strict

FORMAT_VERSION = 1


def save_pretrained(model: TIPS, directory: str | os.PathLike, extra_tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ the SentencePiece file) atomically into ``directory``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in (extra_tensors or {}).items()})
    save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "tips", "version": str(FORMAT_VERSION)})
    tokenizer = model.tokenizer
    tok_entry = None
    if tokenizer is not None:
        tok_entry = tokenizer.kind
        if tokenizer.kind == "sentencepiece":
            shutil.copyfile(tokenizer.model_file, tmp / TOKENIZER_NAME)
            tok_entry = TOKENIZER_NAME
    config = {
        "format": "tips",
        "version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "temperature": model.temperature,
        "temperature_syn": model.temperature_syn,
        "tokenizer": tok_entry,
        "image_size": model.image_size,
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    replace_dir(tmp, directory)
    return directory


def load_pretrained(directory: Path, tokenizer: Any = None) -> TIPS:
    """Read a ``save_pretrained`` folder. Extra tensors (e.g. ``heads.*``) are ignored here."""
    cfg = json.loads((directory / CONFIG_NAME).read_text())
    if cfg.get("format") != "tips":
        raise ValueError(f"{directory / CONFIG_NAME}: not a tips checkpoint (format={cfg.get('format')!r})")
    config = ModelConfig.from_dict(cfg["model"])
    model = TIPS(config)
    sd = load_file(str(directory / WEIGHTS_NAME))
    own = {k: v for k, v in sd.items() if k.split(".", 1)[0] in ("vision", "text", "logit_scale_alt", "logit_scale_syn")}
    load_strict(model, own, str(directory / WEIGHTS_NAME))
    model.has_temperature = {"alt": cfg.get("temperature") is not None, "syn": cfg.get("temperature_syn") is not None}
    tok = tokenizer if tokenizer is not None else cfg.get("tokenizer")
    if tok == TOKENIZER_NAME:
        tok = directory / TOKENIZER_NAME
    model.tokenizer = build_tokenizer(tok)
    return model




def is_pretrained_folder(directory: Path) -> bool:
    """True when ``directory/config.json`` says ``"format": "tips"``."""
    try:
        return json.loads((Path(directory) / CONFIG_NAME).read_text()).get("format") == "tips"
    except (OSError, ValueError, AttributeError):
        return False
