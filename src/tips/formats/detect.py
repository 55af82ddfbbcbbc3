"""Which layout a checkpoint is: :func:`detect` (a path → a :class:`Layout`, the key of ``READERS``) and
:func:`detect_format` (a set of keys → which tower of which layout)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


def detect_format(keys: set[str] | list[str]) -> str:
    """'official_vision', 'official_text', 'scenic_vision', 'scenic_text', 'hf', 'ours' or 'timm_vision'."""
    keys = set(keys)
    if any(k.startswith("vision_encoder.") for k in keys):
        return "hf"
    if any(k.startswith("encoder/") for k in keys):
        return "scenic_vision"
    if "token_emb/emb_var" in keys:
        return "scenic_text"
    if "register_tokens" in keys:
        return "official_vision"
    if "token_embedding.weight" in keys:
        return "official_text"
    if any(k.startswith("vision.") for k in keys):
        return "ours"
    if "reg_token" in keys:
        return "timm_vision"
    raise ValueError(f"unrecognised checkpoint layout; first keys: {sorted(keys)[:8]}")



class Layout(NamedTuple):
    """What a path holds: ``format`` (a key of ``READERS`` / ``WRITERS``: ``"pretrained"``, ``"official"``,
    ``"transformers"``, ``"timm"``, ``"sentence-transformers"``) and ``holds`` (``"model"``, ``"head"`` or both: a ``tipsv2_dpt`` folder)."""

    format: str
    holds: frozenset[str]


MODEL, HEAD, BOTH = frozenset({"model"}), frozenset({"head"}), frozenset({"model", "head"})


def detect(path: str | os.PathLike) -> Layout:
    """The layout of a checkpoint path: by file kind (folder, suffix), then by its config's ``format`` /
    ``model_type`` field or the keys in its header, never by reading the weights."""
    from .common import CONFIG_NAME, WEIGHTS_NAME, read_json
    from .headers import header_keys

    path = Path(path)
    if path.is_dir() or (path.suffix == ".safetensors" and (path.parent / CONFIG_NAME).is_file()):
        folder = path if path.is_dir() else path.parent
        cfg = read_json(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else {}
        if cfg.get("format") == "tips":
            return Layout("pretrained", MODEL)
        if cfg.get("format") == "tips-dpt-head":
            return Layout("pretrained", HEAD)
        if cfg.get("model_type") == "tipsv2_dpt":
            return Layout("transformers", BOTH)
        if (folder / "modules.json").is_file() and (folder / "sentence_bert_config.json").is_file():
            return Layout("sentence-transformers", MODEL)  # a transformers folder inside (formats.sentence_transformers)
        if (folder / WEIGHTS_NAME).is_file() and (path.is_dir() or path.name == WEIGHTS_NAME):
            return Layout("transformers", MODEL)
        if path.is_dir():
            raise FileNotFoundError(f"{path}: folder holds neither a tips checkpoint ({CONFIG_NAME} with \"format\": "
                                    f"\"tips\") nor a transformers {WEIGHTS_NAME}")  # fmt: skip
    if path.suffix == ".safetensors":
        keys = set(header_keys(path))
        return Layout("timm", MODEL) if {"cls_token", "reg_token", "pos_embed"} <= keys else Layout("transformers", MODEL)
    if path.suffix in (".pth", ".pt", ".bin"):
        return Layout("timm", MODEL)
    if path.suffix in (".npz", ".zip"):
        keys = set(header_keys(path))
        try:
            fmt = detect_format(keys)
        except ValueError:
            fmt = None
        if fmt in ("official_vision", "scenic_vision"):
            return Layout("official", MODEL)
        if fmt in ("official_text", "scenic_text"):
            raise ValueError(f"{path}: a text-tower file; load the vision .npz and pass this one as text=")
        if any(k.startswith(("dpt/", "decoder/", "reassemble.", "convs.", "fusion_blocks.", "project.")) for k in keys):
            return Layout("official", HEAD)
        raise ValueError(f"{path}: neither an official model nor a DPT head; first keys {sorted(keys)[:6]}")
    raise ValueError(f"{path}: unsupported checkpoint file type {path.suffix!r} (expected .npz, .zip, .safetensors, "
                     ".pth/.bin (timm state dict) or a folder)")
