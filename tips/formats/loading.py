"""``tips.load``: one entry point for every checkpoint source."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open

from ..models.dtypes import resolve_dtype
from ..models.tips import TIPS
from ..models.tokenizers import Tokenizer, build_tokenizer
from . import hf, hub, official, pretrained, timm
from .common import CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME
from .finite import warn_nonfinite


def load(
    source: str | os.PathLike,
    text: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    heads: int | None = None,
) -> TIPS:
    """Load a TIPS model in eval mode.

    source:
        - an official PyTorch or Scenic vision ``.npz`` (``text=`` the matching text ``.npz``),
        - a transformers ``tipsv2`` folder (``Tipsv2Model.save_pretrained``, ``google/tipsv2-*``) or its
          ``model.safetensors``; a ``Tipsv2VisionModel`` folder with ``text=`` a ``Tipsv2TextModel`` folder,
        - a timm ``vit_*_patch14_reg1_tipsv2`` state dict (``.safetensors``, ``.pth``, ``.bin``; image tower only),
        - a ``save_pretrained`` folder of ours (both towers, tokenizer, both temperatures),
        - an official model name, e.g. ``"tips-v2-b14"`` (fetched into the cache on request; see ``tips.formats.hub``).
    tokenizer: ``"bpe"``, a SentencePiece ``.model`` path, or a tokenizer object; defaults to what the
        checkpoint carries (ours), the official tokenizer (names), or none.
    heads: override the head count inferred from the width (official widths use the official table).
    dtype: cast every weight (``torch.bfloat16`` or ``"bfloat16"``: half the memory, all compute in bf16). For
        mixed precision (fp32 weights, bf16 matmuls) keep fp32 and run under ``with tips.autocast(model, "bfloat16"):``;
        for int8 see :func:`tips.quantize`.
    """
    dtype = resolve_dtype(dtype)
    model = _load_any(source, text, tokenizer, heads)
    warn_nonfinite(model, source)
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _load_any(source, text, tokenizer, heads) -> TIPS:
    path = Path(source)
    if not path.exists():
        named = hub.resolve_name(str(source))
        if named is None:
            known = ", ".join(sorted(hub.OFFICIAL_MODELS))
            raise FileNotFoundError(f"{source}: no such file or folder, and not an official model name ({known})")
        vision_file = hub.cached_file(named.vision_url)
        text_file = hub.cached_file(named.text_url)
        tok = tokenizer if tokenizer is not None else hub.cached_file(named.tokenizer_url)
        model = official.load_official_npz(vision_file, text_file, heads)
        model.tokenizer = build_tokenizer(tok)
        return model
    if path.is_dir():
        if (path / CONFIG_NAME).is_file() and pretrained.is_pretrained_folder(path):
            return pretrained.load_pretrained(path, tokenizer)
        if (path / WEIGHTS_NAME).is_file():
            model = hf.load_hf(path, heads, Path(text) if text is not None else None)
            if tokenizer is None and (path / TOKENIZER_NAME).is_file():
                tokenizer = path / TOKENIZER_NAME
            model.tokenizer = build_tokenizer(tokenizer)
            return model
        raise FileNotFoundError(f"{path}: folder holds neither a tips checkpoint nor a Hugging Face model.safetensors")
    if path.suffix == ".npz":
        model = official.load_official_npz(path, Path(text) if text is not None else None, heads)
    elif path.suffix == ".safetensors":
        if path.parent.joinpath(CONFIG_NAME).is_file() and pretrained.is_pretrained_folder(path.parent):
            return pretrained.load_pretrained(path.parent, tokenizer)
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
        if timm.is_timm_state_dict(keys):
            model = timm.load_timm(path, heads)
        else:
            model = hf.load_hf(path, heads, Path(text) if text is not None else None)
    elif path.suffix in (".pth", ".pt", ".bin"):
        model = timm.load_timm(path, heads)
    else:
        raise ValueError(f"{path}: unsupported checkpoint file type {path.suffix!r} (expected .npz, .safetensors, "
                         ".pth/.bin (timm state dict) or a folder)")
    model.tokenizer = build_tokenizer(tokenizer)
    return model
