"""Ours: a ``save_pretrained`` folder, ``config.json`` (every architecture field, both temperatures,
the tokenizer back-end) + one ``model.safetensors`` (image tower in timm names plus ``mask_token``, text tower,
both logit scales, optional extra tensors such as heads) [+ ``tokenizer.model``]."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save_file

from ..io.atomic import replace_dir
from ..models.tips import TIPS
from ..models.tokenizers import build_tokenizer
from .common import (
    CONFIG_NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    StateDict,
    check_text_len,
    load_strict,
    model_config,
    read_checked,
    read_json,
    require_field,
)

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
    """Read a ``save_pretrained`` folder, its config checked against the weights' header before anything is built.
    Extra tensors (e.g. ``heads.*``) are ignored here."""
    return read_checked(_read, Path(directory), tokenizer)


read = load_pretrained


def _read(directory: Path, tokenizer: Any, tensors: Callable[[Path], StateDict]) -> TIPS:
    cfg_path = directory / CONFIG_NAME
    cfg = read_json(cfg_path)
    if cfg.get("format") != "tips":
        raise ValueError(f"{cfg_path}: not a tips checkpoint (format={cfg.get('format')!r})")
    config = model_config(require_field(cfg, "model", cfg_path), cfg_path)
    weights = directory / WEIGHTS_NAME
    sd = tensors(weights)
    own = {k: v for k, v in sd.items() if k.split(".", 1)[0] in ("vision", "text", "logit_scale_alt", "logit_scale_syn")}
    source = f"{weights} (architecture from {cfg_path})"
    check_text_len(config, {k.removeprefix("text."): v for k, v in own.items() if k.startswith("text.")}, source)
    model = TIPS(config)
    load_strict(model, own, source)
    model.has_temperature = {"alt": cfg.get("temperature") is not None, "syn": cfg.get("temperature_syn") is not None}
    tok = tokenizer if tokenizer is not None else cfg.get("tokenizer")
    if tokenizer is None and tok is not None:
        tok = confined_tokenizer(tok, directory, cfg_path)
    model.tokenizer = None if torch.get_default_device().type == "meta" else build_tokenizer(tok)
    return model


def confined_tokenizer(entry: Any, directory: Path, cfg_path: Path) -> str | Path:
    """A config's ``tokenizer``: ``"bpe"``, or a file inside ``directory``; a path leading outside is refused."""
    if not isinstance(entry, str):
        raise ValueError(f"{cfg_path}: field 'tokenizer' must be a string, got {type(entry).__name__}")
    if entry.lower() == "bpe":
        return entry
    root = directory.resolve()
    path = (root / entry).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{cfg_path}: field 'tokenizer' = {entry!r} points outside the checkpoint folder {root}; "
                         f"place the tokenizer in the folder (as {TOKENIZER_NAME}) or pass tokenizer= explicitly")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"{cfg_path}: field 'tokenizer' = {entry!r}, but {path} does not exist")
    return path


def is_pretrained_folder(directory: Path) -> bool:
    """True when ``directory/config.json`` says ``"format": "tips"``."""
    try:
        return json.loads((Path(directory) / CONFIG_NAME).read_text()).get("format") == "tips"
    except (OSError, ValueError, AttributeError):
        return False
