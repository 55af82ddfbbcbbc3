"""``tips.load``: one entry point for every checkpoint source."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.dtypes import resolve_dtype
from ..models.tips import TIPS
from ..models.tokenizers import Tokenizer, build_tokenizer
from . import hub, pretrained
from .common import CONFIG_NAME, TOKENIZER_NAME
from .detect import detect
from .finite import warn_nonfinite
from .registry import MODEL_READERS as READERS_OF_MODELS


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
        - a ``save_pretrained`` folder of ours (both towers, tokenizer, both temperatures), including a training
          run folder (``runs/X``: its ``final/``) and a training step folder (``runs/X/checkpoints/step-N``: its
          ``export/``),
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


def model_folder(path: str | os.PathLike) -> Path:
    """Where a training output keeps its model: a run folder → its ``final/``, a step folder → its ``export/``;
    any other path is returned as given. A run without ``final/`` (stopped early) raises naming its latest step."""
    path = Path(path)
    if not path.is_dir() or (path / CONFIG_NAME).is_file():
        return path
    for inner in ("final", "export"):
        if (path / inner / CONFIG_NAME).is_file():
            return path / inner
    steps = sorted(p for p in (path / "checkpoints").glob("step-*") if (p / "export" / CONFIG_NAME).is_file())
    if steps:
        raise FileNotFoundError(f"{path}: this run has no final/ yet (it stopped early); load its latest step "
                                f"{steps[-1] / 'export'} or resume training")
    return path


def _load_any(source, text, tokenizer, heads) -> TIPS:
    path = model_folder(source)
    if not path.exists():
        if path.name == "export" and (path.parent / "final" / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: no such folder; a training run writes its model to "
                                    f"{path.parent / 'final'} (and each step to checkpoints/step-N/export)")
        named = hub.resolve_name(str(source))
        if named is None:
            known = ", ".join(sorted(hub.OFFICIAL_MODELS))
            raise FileNotFoundError(f"{source}: no such file or folder, and not an official model name ({known})")
        hub.require_offline_files(named.name, ("tokenizer",) if tokenizer is not None else ())
        vision, text_file = (hub.cached_file(u, name=named.name) for u in (named.vision_url, named.text_url))
        model = READERS_OF_MODELS["official"](vision, text_file, heads)
        model.tokenizer = build_tokenizer(tokenizer if tokenizer is not None
                                          else hub.cached_file(named.tokenizer_url, name=named.name))
        return model
    layout = detect(path)
    if "model" not in layout.holds:
        raise ValueError(f"{path}: a DPT head ({layout.format} layout), not a model; read it with tips.load_head")
    if layout.format == "pretrained":
        folder = path if path.is_dir() else path.parent
        return READERS_OF_MODELS["pretrained"](folder, text, heads) if tokenizer is None else _retokenized(folder, text, heads, tokenizer)
    model = READERS_OF_MODELS[layout.format](path, Path(text) if text is not None else None, heads)
    folder = path if path.is_dir() else path.parent
    if tokenizer is None and layout.format == "transformers" and (folder / TOKENIZER_NAME).is_file():
        tokenizer = folder / TOKENIZER_NAME
    model.tokenizer = build_tokenizer(tokenizer)
    return model


def _retokenized(folder: Path, text, heads, tokenizer) -> TIPS:
    if text is not None or heads:
        raise ValueError(f"{folder}: our folder holds its own architecture; text= and heads= do not apply")
    return pretrained.load_pretrained(folder, tokenizer)
